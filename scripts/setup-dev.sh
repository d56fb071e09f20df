#!/usr/bin/env bash
# make setup-dev: what the tests, the lab (make demo) and the benchmarks add to `make setup`,
# as root. Idempotent and quiet when already done.
#
# The host is someone's mail gateway: this never removes or replaces an installed package
# and never leaves a service enabled or running.
#  - apt's plan is simulated first (apt-get -s); when it would remove a package (Postfix
#    displaces an installed Exim, say) the setup stops, naming the package that asks for
#    it and the one it would remove, and installs nothing.
#  - Nothing starts during the install (a temporary policy-rc.d denies every start).
#  - Afterwards the services of the packages installed here (Postfix, Dovecot, fail2ban,
#    journal-remote sockets, ...) are disabled, and stopped where they run: the lab runs
#    its own instances in a network namespace, the benchmark runs fail2ban-regex only.
#    A package that was installed before is left exactly as it was.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "setup-dev: $*"; }
die() { echo "setup-dev: $*" >&2; exit 1; }

# postfix, dovecot-*: the lab's mail servers (make demo, tests/test_e2e_*);
# fail2ban: its annotated sample logs (tests/test_logs_conformance.py, test_logs_bulk.py),
#   fail2ban-regex (bench/replay_bench.py) and fail2ban-server side by side with dynscreen
#   (bench/reaction_bench.py), with nftables (its banaction's `nft`) and python3-pyinotify
#   (the log backend fail2ban prefers; without it fail2ban polls once a second);
# systemd-journal-remote: journal files for tests/test_journal.py;
# vagrant, shellcheck: tests/test_vagrant.py;
# groff-base, man-db: the man pages rendered by tests/test_packaging.py;
# redis-server: the fleet's tests, lab and benchmark start their own (tests/test_fleet*.py,
#   bench/fleet_bench.py); Debian's redis-server.service is left disabled and stopped.
DEV_PKGS=(postfix dovecot-core dovecot-imapd dovecot-pop3d fail2ban nftables python3-pyinotify
          systemd-journal-remote vagrant shellcheck groff-base man-db prometheus redis-server)
# Tests only: the guard's path, and the directory that says systemd is running.
POLICY_RC_D=${SETUP_DEV_POLICY_RC_D:-/usr/sbin/policy-rc.d}
SYSTEMD_RUN=${SETUP_DEV_SYSTEMD_RUN:-/run/systemd/system}

installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

# apt's plan for installing "$@": its "Inst"/"Remv" lines (nothing is changed).
plan() { LC_ALL=C apt-get -s install --no-install-recommends "$@" 2>&1; }
removals() { awk '/^Remv /{print $2}' <<<"$1" | sort -u | paste -sd ' ' -; }

# Disable (and stop) every service a newly installed package brought: systemd units, and
# SysV init scripts for hosts without systemd.
quiet_services() {
  local pkg path unit name
  for pkg in "$@"; do
    while IFS= read -r path; do
      case "$path" in
        */lib/systemd/system/*@.*) ;;  # templates: their instances hang off the plain unit
        */lib/systemd/system/*.service|*/lib/systemd/system/*.socket|\
        */lib/systemd/system/*.timer|*/lib/systemd/system/*.path)
          unit=${path##*/}
          if [ -d "$SYSTEMD_RUN" ]; then
            systemctl disable --now "$unit" >/dev/null 2>&1 || true
          elif command -v systemctl >/dev/null; then
            systemctl disable "$unit" >/dev/null 2>&1 || true  # offline: the symlinks only
          fi
          ;;
        */etc/init.d/*)
          name=${path##*/}
          [ -d "$SYSTEMD_RUN" ] || "$path" stop >/dev/null 2>&1 || true
          update-rc.d "$name" disable >/dev/null 2>&1 || true
          ;;
      esac
    done < <(dpkg -L "$pkg" 2>/dev/null)
  done
}

missing=()
for p in "${DEV_PKGS[@]}"; do installed "$p" || missing+=("$p"); done

if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "installing ${missing[*]} needs root: run 'sudo make setup-dev'"
  apt-get update -qq
  sim=$(plan "${missing[@]}") || die "apt cannot install ${missing[*]}: $(tail -3 <<<"$sim")"
  if [ -n "$(removals "$sim")" ]; then
    culprits=()
    for p in "${missing[@]}"; do
      gone=$(removals "$(plan "$p" || true)")
      [ -z "$gone" ] || culprits+=("$p would remove $gone;")
    done
    [ ${#culprits[@]} -gt 0 ] || culprits=("${missing[*]} together would remove $(removals "$sim");")
    die "refusing to install: ${culprits[*]} setup-dev never removes or replaces an installed
package (a mail gateway's MTA above all): run the tests, the lab and the benchmarks on a
host without it (e.g. in a VM)"
  fi
  # The packages new to this host (dependencies included): their services get disabled.
  mapfile -t new < <(awk '/^Inst / && $3 !~ /^\[/ {print $2}' <<<"$sim")

  guard=
  if [ ! -e "$POLICY_RC_D" ]; then
    guard=$POLICY_RC_D
    printf '#!/bin/sh\n# dynscreen setup-dev: no service starts during the install.\nexit 101\n' > "$guard"
    chmod 755 "$guard"
  fi
  # Also when the install fails half-way: what it put in place is quieted, the guard goes.
  trap 'quiet_services "${new[@]}"; [ -z "$guard" ] || rm -f "$guard"' EXIT
  # The lab writes its own Postfix config: Debian's is not asked for.
  if [[ " ${missing[*]} " == *" postfix "* ]]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  fi
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  quiet_services "${new[@]}"
  [ -z "$guard" ] || rm -f "$guard"
  trap - EXIT
  [ ${#new[@]} -eq 0 ] || say "services of ${new[*]} left disabled and stopped"
fi

# The Python tools of the tests (pyproject's [dev] extra) into the .venv `make setup` made,
# without reinstalling (and recompiling) the project itself.
[ -x .venv/bin/python ] || die ".venv is missing: run 'make setup' first"
stamp=.venv/.installed-dev
if [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing the test tools into .venv"
  .venv/bin/python - <<'EOF' > .venv/dev-requirements.txt
try:
    import tomllib
except ImportError:  # Python 3.10: tomli, a dependency of dynscreen there
    import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["dev"]))
EOF
  .venv/bin/pip install -q --disable-pip-version-check -r .venv/dev-requirements.txt \
    2> >(grep -v 'is ignored: it is neither' >&2)
  touch "$stamp"
fi
