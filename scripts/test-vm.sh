#!/usr/bin/env bash
# make test-vm: the data-plane tests inside a Debian 12 VM on Debian's own kernel (6.1),
# so the BPF program meets an older verifier than the host's. Not part of `make test`.
#
# What it does, as root:
#   1. builds (once; cached in $TEST_VM_CACHE) a Debian 12 root file system with
#      debootstrap: the stock kernel (linux-image-amd64) and its headers, a C compiler,
#      and every package scripts/setup.sh and scripts/setup-dev.sh install (bcc, iproute2,
#      python3-venv, the mail servers, ...: read from the scripts, so the guest's
#      `make setup-dev` finds them all
#      and BCC finds the running kernel's headers the normal way); packed into an ext4
#      image, with the kernels and initrds kept next to it;
#   2. downloads the project's Python dependencies into a wheelhouse (cached; refreshed
#      when pyproject.toml changes), so the guest's `make setup-dev` needs no index;
#   3. boots each kernel of the image with qemu (-snapshot: the image never changes),
#      the repository shared read-only over 9p and copied inside the guest (the host's
#      .venv is never touched); in the guest: `make setup-dev`, then the data-plane tests
#      with CI=true; results come back through a second 9p share, the serial console
#      is logged; the guest powers itself off; qemu is killed at the time limit;
#   4. prints one verdict line per kernel: "6.1.0-xx-amd64: N passed, M failed".
#
# The accelerator: KVM when /dev/kvm can run a stock kernel, else TCG (emulation: same
# kernel, same verifier, several times slower). A KVM that is PVM (kvm_pvm module:
# nested without hardware virtualisation) runs only PVM-enabled guest kernels, so
# Debian's kernel hangs at boot there: auto mode goes straight to TCG on such hosts,
# and falls back to TCG whenever a KVM boot shows no kernel output within a minute.
#
# Usage: scripts/test-vm.sh [PYTEST ARGS...]      (default: the data-plane test files)
# Environment:
#   TEST_VM_CACHE=/var/cache/dynscreen/vm   image, kernels, wheelhouse, apt cache, runs
#   TEST_VM_MIRROR=URL        Debian mirror (default: the one apt uses on this host)
#   TEST_VM_ACCEL=auto        auto | kvm | tcg
#   TEST_VM_BACKPORTS=1       also install bookworm-backports' kernel and test it too
#   TEST_VM_KERNELS="6.1"     test only kernels whose release contains one of the words
#   TEST_VM_TIMEOUT=SECONDS   per kernel: boot, setup, tests (default 1500 KVM, 5400 TCG)
#   TEST_VM_MEM=2G TEST_VM_SMP=2
#   TEST_VM_REBUILD=1         rebuild the image even if the cached one is current
#   TEST_VM_VERBOSE=1         stream the guest's serial console while it runs
# Exit status: 0 all kernels passed, 1 a kernel failed or gave no result, 2 the VM could
# not be built or started.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

CACHE=${TEST_VM_CACHE:-/var/cache/dynscreen/vm}
MEM=${TEST_VM_MEM:-2G}
SMP=${TEST_VM_SMP:-2}
SUITE=bookworm
IMAGE_VERSION=4   # bump when the image recipe below changes: forces a rebuild
KVM_BOOT_WAIT=60  # seconds for a KVM guest to print its banner (loglevel 6 shows it)
DEFAULT_TESTS=(tests/test_xdp.py tests/test_abi.py tests/test_loader.py
               tests/test_netns_dataplane.py tests/test_smoke_xdp.py)

say() { echo "test-vm: $*"; }
die() { echo "test-vm: $*" >&2; exit 2; }
truthy() { case "${1:-}" in 1|true|yes|TRUE|True) return 0;; *) return 1;; esac; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, image build): run 'sudo make test-vm'"
[ "$(uname -m)" = x86_64 ] || die "the VM recipe is for x86_64 hosts"

# ---- host tools ----------------------------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# ---- the accelerator -----------------------------------------------------------------------
kvm_usable() {
  [ -c /dev/kvm ] && /usr/bin/python3 -c 'import os; os.close(os.open("/dev/kvm", os.O_RDWR))' 2>/dev/null
}
ACCEL=${TEST_VM_ACCEL:-auto}
case $ACCEL in
  auto)
    if ! kvm_usable; then
      say "no usable /dev/kvm: using TCG emulation (slow)"; ACCEL=tcg
    elif [ -d /sys/module/kvm_pvm ]; then
      say "this host's KVM is PVM (runs only PVM-enabled guest kernels; a stock kernel" \
          "hangs at boot): using TCG emulation (slow)"
      ACCEL=tcg
    else
      ACCEL=kvm
    fi ;;
  kvm) kvm_usable || die "TEST_VM_ACCEL=kvm but /dev/kvm does not open" ;;
  tcg) ;;
  *) die "TEST_VM_ACCEL must be auto, kvm or tcg (got $ACCEL)" ;;
esac
AUTO_FALLBACK=0
[ "${TEST_VM_ACCEL:-auto}" = auto ] && [ "$ACCEL" = kvm ] && AUTO_FALLBACK=1
timeout_for() { if [ "$1" = kvm ]; then echo "${TEST_VM_TIMEOUT:-1500}"; else echo "${TEST_VM_TIMEOUT:-5400}"; fi; }

mirror() {
  # The Debian mirror apt uses here (deb822 or one-line sources), else deb.debian.org.
  local m
  m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        2>/dev/null | grep -v '^\s*#' \
      | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v -- '-security' | head -n1 | tr -d ' ')
  echo "${m:-http://deb.debian.org/debian}"
}
MIRROR=${TEST_VM_MIRROR:-$(mirror)}
MIRROR=${MIRROR%/}
SECURITY=${MIRROR%/debian}/debian-security

# ---- 1. the image --------------------------------------------------------------------------
# What `make setup-dev` installs, read from scripts/setup.sh and scripts/setup-dev.sh: the
# words of their apt_install lines and of their *PKGS=( ... ) arrays (anything with a $ is
# resolved at run time and left out: the kernel headers are below).
mapfile -t SETUP_PKGS < <(/usr/bin/python3 - scripts/setup.sh scripts/setup-dev.sh <<'EOF'
import re, sys
text = "\n".join(open(f).read() for f in sys.argv[1:]).replace("\\\n", " ")
words = []
for m in re.finditer(r"^\s*apt_install\s+([^\n;&|]*)", text, re.M):
    words += m.group(1).split()
for m in re.finditer(r"^\s*\w*PKGS=\(([^)]*)\)", text, re.M):
    words += m.group(1).split()
print("\n".join(sorted({w for w in words if re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", w)})))
EOF
)
[ ${#SETUP_PKGS[@]} -gt 0 ] || die "found no package list in scripts/setup*.sh"
PKGS=(systemd-sysv udev kmod initramfs-tools linux-image-amd64 linux-headers-amd64
      procps iputils-ping make gcc libc6-dev tar "${SETUP_PKGS[@]}")
recipe="v$IMAGE_VERSION $SUITE ${PKGS[*]} backports=${TEST_VM_BACKPORTS:-0}"
IMG=$CACHE/rootfs.ext4
BOOT=$CACHE/boot
APT_CACHE=$CACHE/apt-archives   # downloaded .debs, kept: a rebuild downloads nothing new

build_image() {
  local root=$CACHE/rootfs.build
  say "building the Debian 12 image in $CACHE (mirror $MIRROR; a few minutes)"
  mkdir -p "$CACHE" "$APT_CACHE/partial"
  rm -rf "$root" "$IMG" "$BOOT" "$CACHE/recipe"
  mkdir -p "$root"
  debootstrap --variant=minbase --include=systemd-sysv,udev,kmod,ca-certificates \
    --cache-dir="$APT_CACHE" "$SUITE" "$root" "$MIRROR" > "$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }

  cat > "$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
EOF
  if truthy "${TEST_VM_BACKPORTS:-}"; then
    echo "deb $MIRROR $SUITE-backports main" >> "$root/etc/apt/sources.list"
  fi
  # No service starts inside the chroot; Postfix is installed unconfigured, as setup-dev.sh does.
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod +x "$root/usr/sbin/policy-rc.d"
  mount -t proc proc "$root/proc"; mount -t sysfs sys "$root/sys"; mount --bind /dev "$root/dev"
  mount --bind /dev/pts "$root/dev/pts"; mount --bind "$APT_CACHE" "$root/var/cache/apt/archives"
  # shellcheck disable=SC2064
  trap "umount -l '$root/var/cache/apt/archives' '$root/dev/pts' '$root/dev' '$root/sys' '$root/proc' 2>/dev/null || true" EXIT
  local inchroot=(chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8)
  {
    echo "postfix postfix/main_mailer_type select No configuration" | "${inchroot[@]}" debconf-set-selections
    "${inchroot[@]}" apt-get update -qq
    "${inchroot[@]}" apt-get install -y -qq --no-install-recommends "${PKGS[@]}"
    if truthy "${TEST_VM_BACKPORTS:-}"; then
      "${inchroot[@]}" apt-get install -y -qq --no-install-recommends -t "$SUITE-backports" \
        linux-image-amd64 linux-headers-amd64
    fi
  } > "$CACHE/packages.log" 2>&1 \
    || { tail -30 "$CACHE/packages.log" >&2; die "package install failed (log: $CACHE/packages.log)"; }
  umount -l "$root/var/cache/apt/archives" "$root/dev/pts" "$root/dev" "$root/sys" "$root/proc"
  trap - EXIT
  rm -f "$root/usr/sbin/policy-rc.d"

  # The guest: root on /dev/vda, DHCP on the user-mode NIC (only `make setup-dev` would
  # use it, for a package the image lacks), nothing else started at boot.
  echo dsvm > "$root/etc/hostname"
  echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" > "$root/etc/fstab"
  echo "nameserver 10.0.2.3" > "$root/etc/resolv.conf"
  mkdir -p "$root/etc/systemd/network"
  printf '[Match]\nName=eth* en*\n\n[Network]\nDHCP=yes\n' > "$root/etc/systemd/network/50-dhcp.network"
  chroot "$root" systemctl enable systemd-networkd >/dev/null 2>&1
  local unit
  for unit in fail2ban.service postfix.service dovecot.service systemd-journal-remote.socket \
              apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service; do
    chroot "$root" systemctl mask "$unit" >/dev/null 2>&1 || true
  done
  # The runner: the host writes run.sh into the "ctl" share for each boot; the guest
  # powers off when it ends, whatever happened.
  cat > "$root/etc/systemd/system/dynscreen-vmtest.service" <<'EOF'
[Unit]
Description=dynscreen test-vm runner
After=local-fs.target network.target systemd-networkd.service
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'mkdir -p /mnt/ctl && mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 ctl /mnt/ctl && exec /bin/bash /mnt/ctl/run.sh'
StandardOutput=journal+console
StandardError=journal+console
SuccessAction=poweroff-force
FailureAction=poweroff-force
[Install]
WantedBy=multi-user.target
EOF
  chroot "$root" systemctl enable dynscreen-vmtest.service >/dev/null 2>&1

  mkdir -p "$BOOT"
  local v
  for v in "$root"/boot/vmlinuz-*; do
    cp "$v" "$BOOT/"
    cp "$root/boot/initrd.img-${v##*/vmlinuz-}" "$BOOT/"
  done
  ls "$BOOT"/vmlinuz-* >/dev/null 2>&1 || die "no kernel in the image"
  mkfs.ext4 -q -F -L dsvm -d "$root" "$IMG" 8G >/dev/null || die "mkfs.ext4 -d failed"
  rm -rf "$root"
  echo "$recipe" > "$CACHE/recipe"
}

if truthy "${TEST_VM_REBUILD:-}" || [ ! -s "$IMG" ] || [ "$(cat "$CACHE/recipe" 2>/dev/null)" != "$recipe" ]; then
  build_image
else
  say "using the cached image $IMG (TEST_VM_REBUILD=1 rebuilds it)"
fi

# ---- 2. the wheelhouse ---------------------------------------------------------------------
WHEELS=$CACHE/wheels
if [ ! -e "$WHEELS/.stamp" ] || [ pyproject.toml -nt "$WHEELS/.stamp" ]; then
  say "downloading the Python dependencies into $WHEELS"
  rm -rf "$WHEELS"; mkdir -p "$WHEELS"
  # Runtime + dev dependencies and the build backend, read from pyproject.toml.
  /usr/bin/python3 - > "$WHEELS/requirements.txt" <<'EOF'
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))
reqs = p["build-system"]["requires"] + p["project"]["dependencies"]
for extra in p["project"].get("optional-dependencies", {}).values():
    reqs += extra
print("\n".join(reqs + ["wheel"]))
EOF
  pip=(/usr/bin/python3 -m pip)
  [ -x .venv/bin/pip ] && pip=(.venv/bin/pip)
  "${pip[@]}" download -q --disable-pip-version-check -d "$WHEELS" -r "$WHEELS/requirements.txt" \
    2> >(grep -v 'is ignored: it is neither' >&2) || die "pip download failed"
  touch "$WHEELS/.stamp"
fi

# ---- 3. boot each kernel -------------------------------------------------------------------
if [ $# -gt 0 ]; then TESTS=("$@"); else TESTS=("${DEFAULT_TESTS[@]}"); fi
printf -v TESTS_Q '%q ' "${TESTS[@]}"

QEMU_PID=
TAIL_PID=
# shellcheck disable=SC2317  # called by the EXIT trap
stop_qemu() {
  if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
    kill "$QEMU_PID" 2>/dev/null || true
    local _
    for _ in 1 2 3 4 5; do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 1; done
    kill -9 "$QEMU_PID" 2>/dev/null || true
  fi
  QEMU_PID=
  if [ -n "$TAIL_PID" ]; then kill "$TAIL_PID" 2>/dev/null || true; TAIL_PID=; fi
}
trap stop_qemu EXIT
trap 'exit 130' INT TERM

write_runner() {  # the guest side, one per boot
  cat > "$1/run.sh" <<EOF
#!/bin/bash
# Runs in the guest as root (dynscreen-vmtest.service); everything lands in /mnt/ctl.
set -u
OUT=/mnt/ctl
exec > >(tee -a "\$OUT/guest.log") 2>&1
KREL=\$(uname -r)
echo "DSVM: kernel \$KREL"
echo "\$KREL" > "\$OUT/kernel"
fail() { echo "DSVM: \$*"; echo "\$*" > "\$OUT/error"; echo o > /proc/sysrq-trigger; exit 1; }
mkdir -p /mnt/repo /mnt/wheels
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro repo /mnt/repo || fail "cannot mount the repo share"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro wheels /mnt/wheels || fail "cannot mount the wheel share"
# A private copy: the guest's .venv must not land in the host's working tree.
rm -rf /opt/dynscreen; mkdir -p /opt/dynscreen
tar -C /mnt/repo --exclude=./.venv --exclude=./.git --exclude=./.pytest_cache \\
    --exclude=./.ruff_cache --exclude='*.egg-info' --exclude=__pycache__ --exclude=./vagrant/.vagrant \\
    --exclude=./build --exclude='*.so' \\
    -cf - . | tar -C /opt/dynscreen -xf - || fail "cannot copy the repo"
cd /opt/dynscreen
export PIP_NO_INDEX=1 PIP_FIND_LINKS=/mnt/wheels PIP_DISABLE_PIP_VERSION_CHECK=1
echo "DSVM: make setup-dev"
start=\$SECONDS
make setup-dev > "\$OUT/setup.log" 2>&1 || { tail -30 "\$OUT/setup.log"; fail "make setup-dev failed"; }
echo "DSVM: make setup-dev took \$((SECONDS - start))s; pytest ${TESTS_Q}"
CI=true .venv/bin/python -m pytest -q -rfE -p no:cacheprovider \\
  --junitxml="\$OUT/junit.xml" ${TESTS_Q} > "\$OUT/pytest.log" 2>&1
rc=\$?
tail -n 5 "\$OUT/pytest.log"
echo "\$rc" > "\$OUT/rc"
echo "DSVM: done rc=\$rc"
# Off at once: the results are on the host already (9p writes through), and a global
# sync or a clean shutdown can hang on what the tests left behind.
echo o > /proc/sysrq-trigger
EOF
}

verdict() {  # $1 run dir, $2 kernel release, $3 accel -> one line; status 0 only when all passed
  /usr/bin/python3 - "$@" <<'EOF'
import sys, pathlib, xml.etree.ElementTree as ET
run, krel, accel = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
junit = run / "junit.xml"
if not junit.exists():
    why = (run / "error").read_text().strip() if (run / "error").exists() else \
          "no result (the guest did not boot or did not finish)"
    print(f"{krel}: {why} [{accel}]; see {run}/console.log"); sys.exit(1)
root = ET.parse(junit).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
tot = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
failed = tot["failures"] + tot["errors"]
passed = tot["tests"] - failed - tot["skipped"]
line = f"{krel}: {passed} passed, {failed} failed"
if tot["skipped"]:
    line += f", {tot['skipped']} skipped"
print(f"{line} [{accel}]")
rc = (run / "rc").read_text().strip() if (run / "rc").exists() else "?"
sys.exit(0 if failed == 0 and tot["tests"] > 0 and rc == "0" else 1)
EOF
}

# boot RUN KREL ACCEL: one VM run; returns qemu's status (124: timed out, 125: no boot).
boot() {
  local run=$1 krel=$2 accel=$3 limit acc cpu
  limit=$(timeout_for "$accel")
  if [ "$accel" = kvm ]; then acc=kvm; cpu=(); else acc=tcg,thread=multi; cpu=(-cpu max); fi
  rm -f "$run"/{console.log,qemu.log,guest.log,junit.xml,pytest.log,setup.log,rc,error,kernel}
  : > "$run/console.log"
  say "booting $krel with $accel (up to ${limit}s; console: $run/console.log)"
  if truthy "${TEST_VM_VERBOSE:-}"; then tail -f "$run/console.log" & TAIL_PID=$!; fi
  timeout -k 10 "$limit" qemu-system-x86_64 \
    -accel "$acc" "${cpu[@]}" -m "$MEM" -smp "$SMP" -nographic -monitor none -no-reboot \
    -serial "file:$run/console.log" \
    -kernel "$BOOT/vmlinuz-$krel" -initrd "$BOOT/initrd.img-$krel" \
    -append "root=/dev/vda rw console=ttyS0,115200 panic=10 net.ifnames=0 systemd.show_status=0 loglevel=6" \
    -drive "file=$IMG,format=raw,if=virtio,snapshot=on" \
    -nic user,model=virtio-net-pci \
    -virtfs "local,path=$REPO,mount_tag=repo,security_model=none,readonly=on" \
    -virtfs "local,path=$WHEELS,mount_tag=wheels,security_model=none,readonly=on" \
    -virtfs "local,path=$run,mount_tag=ctl,security_model=none" \
    < /dev/null > "$run/qemu.log" 2>&1 &
  QEMU_PID=$!
  if [ "$accel" = kvm ] && [ "$AUTO_FALLBACK" = 1 ]; then
    local t=0
    while [ $t -lt $KVM_BOOT_WAIT ] && kill -0 "$QEMU_PID" 2>/dev/null; do
      grep -aq 'Linux version\|DSVM:' "$run/console.log" && break
      sleep 2; t=$((t + 2))
    done
    if kill -0 "$QEMU_PID" 2>/dev/null && ! grep -aq 'Linux version\|DSVM:' "$run/console.log"; then
      stop_qemu
      return 125
    fi
  fi
  # The guest powers itself off after writing rc; should it hang on the way, a minute
  # after rc appears qemu is stopped (the result is in already).
  local grace=0
  while kill -0 "$QEMU_PID" 2>/dev/null; do
    if [ -e "$run/rc" ] || [ -e "$run/error" ]; then
      grace=$((grace + 1))
      [ $grace -le 60 ] || { say "the guest did not power off: stopping qemu"; stop_qemu; break; }
    fi
    sleep 1
  done
  local qrc=0
  if [ -n "$QEMU_PID" ]; then wait "$QEMU_PID" || qrc=$?; fi
  QEMU_PID=
  if [ -n "$TAIL_PID" ]; then kill "$TAIL_PID" 2>/dev/null || true; TAIL_PID=; fi
  if [ $qrc = 124 ] || [ $qrc = 137 ]; then
    echo "timeout after ${limit}s" > "$run/error"
  elif [ $qrc != 0 ] && [ ! -e "$run/rc" ] && [ ! -e "$run/error" ]; then
    echo "qemu exited with $qrc: $(tail -n 3 "$run/qemu.log" | tr '\n' ' ')" > "$run/error"
  fi
  return $qrc
}

RUNS=$CACHE/runs/$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUNS"
# Logs of the last 5 runs are kept.
find "$CACHE/runs" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn | tail -n +6 \
  | cut -d' ' -f2- | while read -r old; do rm -rf "$old"; done
kernels=()
for v in "$BOOT"/vmlinuz-*; do
  krel=${v##*/vmlinuz-}
  if [ -n "${TEST_VM_KERNELS:-}" ]; then
    keep=0
    for w in $TEST_VM_KERNELS; do [[ $krel == *"$w"* ]] && keep=1; done
    [ $keep = 1 ] || continue
  fi
  kernels+=("$krel")
done
[ ${#kernels[@]} -gt 0 ] || die "no kernel in $BOOT matches TEST_VM_KERNELS='${TEST_VM_KERNELS:-}'"

verdicts=(); status=0
for krel in "${kernels[@]}"; do
  run=$RUNS/$krel
  mkdir -p "$run"
  write_runner "$run"
  start=$SECONDS
  accel=$ACCEL
  brc=0; boot "$run" "$krel" "$accel" || brc=$?
  if [ $brc = 125 ]; then
    say "no kernel output under KVM after ${KVM_BOOT_WAIT}s: retrying with TCG emulation (slow)"
    accel=tcg
    boot "$run" "$krel" "$accel" || true
  fi
  krel_seen=$krel
  if [ -s "$run/kernel" ]; then krel_seen=$(cat "$run/kernel"); fi
  ok=0; line=$(verdict "$run" "$krel_seen" "$accel") || { ok=1; status=1; }
  verdicts+=("$line ($((SECONDS - start))s)")
  if [ $ok != 0 ] && [ -e "$run/pytest.log" ]; then
    # The failures as pytest summarised them (a verifier log is in pytest.log in full).
    sed -n '/short test summary info/,$p' "$run/pytest.log" | head -40 >&2 || true
  fi
done

echo
for l in "${verdicts[@]}"; do echo "$l"; done
echo "(logs: $RUNS)"
exit $status
