#!/usr/bin/env bash
# make setup: what the dynscreen daemon needs on Debian 12 / Ubuntu 22.04+, as root (the
# runtime only: `make setup-dev` adds the tools of the tests, the lab and the benchmarks).
# Idempotent and quiet when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

HEADERS_ROOT=/var/lib/dynscreen/kernel-headers
KREL=$(uname -r)
say() { echo "setup: $*"; }
need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "setup: $1 needs root: run 'sudo make setup'" >&2
    exit 1
  fi
}

apt_updated=0
apt_install() {
  local missing=()
  for p in "$@"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  need_root "installing ${missing[*]}"
  if [ $apt_updated = 0 ]; then apt-get update -qq; apt_updated=1; fi
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# 1. OS packages the daemon needs, and nothing else: bcc, iproute2 (ss -K), python venv,
#    a C compiler and Python's headers (mypyc compiles the log pipeline: setup.py).
#    Never a mail server, fail2ban, vagrant or a test tool: those are `make setup-dev`'s
#    (scripts/setup-dev.sh), which `make test`, `make demo` and `make bench` run.
apt_install python3-bpfcc libbpfcc iproute2 python3-venv ca-certificates gcc python3-dev

# 2. Kernel headers for BCC: the running kernel's own package, else Debian's
#    generic headers merged into one tree that the loader finds by itself.
if [ ! -e "/lib/modules/$KREL/build/include" ] && [ ! -e "$HEADERS_ROOT/current/include" ]; then
  if apt-cache show "linux-headers-$KREL" >/dev/null 2>&1 \
     || { [ $apt_updated = 0 ] && apt-get update -qq && apt_updated=1 && apt-cache show "linux-headers-$KREL" >/dev/null 2>&1; }; then
    apt_install "linux-headers-$KREL"
  else
    need_root "fetching kernel headers"
    [ $apt_updated = 0 ] && { apt-get update -qq; apt_updated=1; }
    meta=linux-headers-amd64
    [ "$(dpkg --print-architecture)" = arm64 ] && meta=linux-headers-arm64
    arch_pkg=$(apt-cache depends "$meta" | awk '/Depends: linux-headers-/{print $2; exit}')
    common_pkg=$(apt-cache depends "$arch_pkg" | awk '/Depends: linux-headers-.*-common/{print $2; exit}')
    if [ -z "$arch_pkg" ] || [ -z "$common_pkg" ]; then
      echo "setup: cannot find generic kernel headers ($meta)" >&2; exit 1
    fi
    say "no headers for kernel $KREL; using $arch_pkg + $common_pkg for BCC"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$arch_pkg" "$common_pkg" >/dev/null)
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/x"; done
    ver=${arch_pkg#linux-headers-}
    dest="$HEADERS_ROOT/$ver"
    rm -rf "$dest"; mkdir -p "$dest"
    # -common holds the source tree, -ARCH the generated files: merge into ONE folder.
    cp -a "$tmp/x/usr/src/linux-headers-${ver%-*}-common/." "$dest/"
    cp -a "$tmp/x/usr/src/$arch_pkg/." "$dest/"
    ln -sfn "$dest" "$HEADERS_ROOT/current"
    rm -rf "$tmp"
  fi
fi

# 3. tracefs (BCC reads tracepoint formats when compiling) and bpffs (pins).
if [ "$(id -u)" = 0 ]; then
  mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
  mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
fi

# 4. The virtualenv with the project editable; bcc reached through a .pth
#    pointing at a folder that holds only a link to the OS bcc package.
PY=/usr/bin/python3
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
bccdir="$PWD/.venv/bcc-link"
if [ ! -e "$bccdir/bcc" ]; then
  mkdir -p "$bccdir"
  ln -sfn /usr/lib/python3/dist-packages/bcc "$bccdir/bcc"
fi
echo "$bccdir" > "$site/dynscreen-bcc.pth"
stamp=.venv/.installed
if [ ! -e .venv/bin/dynscreen ] || [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
   || [ setup.py -nt "$stamp" ]; then
  say "installing dynscreen into .venv (editable)"
  # [compile]: mypy, whose mypyc rebuilds the log pipeline below when its source changes.
  .venv/bin/pip install -q --disable-pip-version-check -e '.[compile]' 2> >(grep -v 'is ignored: it is neither' >&2)
  touch "$stamp"
fi
# The compiled modules (control/native.py) shadow their .py: rebuilt when a source
# changed; DYNSCREEN_PURE=1 removes them (the source then runs as it is).
if [ "${DYNSCREEN_PURE:-}" = 1 ]; then
  find control -name '*.so' -delete
elif ! .venv/bin/python -m dynscreen.control.native --fresh >/dev/null; then
  say "compiling the log pipeline (mypyc)"
  mkdir -p build
  if ! .venv/bin/python setup.py -q build_ext --inplace --force > build/mypyc.log 2>&1 \
     || ! .venv/bin/python -m dynscreen.control.native --fresh; then
    grep -iE 'error' build/mypyc.log | head -20 >&2 || true
    echo "setup: mypyc build failed (log: build/mypyc.log; DYNSCREEN_PURE=1 runs uncompiled)" >&2
    exit 1
  fi
fi
