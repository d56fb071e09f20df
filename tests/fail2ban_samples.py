"""fail2ban's annotated mail-log samples, read where Debian's ``fail2ban`` package puts them.

fail2ban ships its test suite inside its Python package; its ``tests/files/logs/``
holds real-world log lines collected by its maintainers and users over many years
(many from bug reports), each preceded by a ``# failJSON:`` annotation. The project
reads them in place (GPL-2.0-or-later, as fail2ban; never copied into the
repository) and keeps its own expectations in tests/test_logs_conformance.py.
``make setup-dev`` installs the package.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import require

# Debian and Ubuntu: python3 packages live in /usr/lib/python3/dist-packages.
DEBIAN_DIR = Path("/usr/lib/python3/dist-packages/fail2ban/tests/files/logs")
MAIL_FILES = ("postfix", "dovecot", "exim")


def _from_dpkg() -> Path | None:
    """Where the installed package put them, as dpkg lists its files."""
    try:
        out = subprocess.run(["dpkg-query", "-L", "fail2ban"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        if line.endswith("/tests/files/logs/postfix"):
            return Path(line).parent
    return None


def samples_dir() -> Path | None:
    """The folder holding the postfix, dovecot and exim samples, or None."""
    def complete(d: Path | None) -> bool:
        return d is not None and all((d / name).is_file() for name in MAIL_FILES)

    if complete(DEBIAN_DIR):
        return DEBIAN_DIR
    found = _from_dpkg()
    return found if complete(found) else None


SAMPLES = samples_dir()


def require_samples() -> Path:
    """The samples folder; without it a failure under CI=true, a skip elsewhere."""
    require(SAMPLES is not None,
            f"fail2ban's sample logs not found (Debian package fail2ban, {DEBIAN_DIR}; "
            "make setup-dev installs it)")
    assert SAMPLES is not None
    return SAMPLES
