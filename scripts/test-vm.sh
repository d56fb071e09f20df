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
# The machinery (accelerator choice, debootstrap, the guest's runner, one qemu boot) is in
# scripts/vm-lib.sh, shared with scripts/test-deb.sh.
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

VM_NAME=test-vm
# shellcheck source=scripts/vm-lib.sh
. scripts/vm-lib.sh

CACHE=${TEST_VM_CACHE:-/var/cache/dynscreen/vm}
VM_MEM=${TEST_VM_MEM:-2G}
VM_SMP=${TEST_VM_SMP:-2}
VM_VERBOSE=${TEST_VM_VERBOSE:-}
VM_MIRROR=${TEST_VM_MIRROR:-}
IMAGE_VERSION=4   # bump when the image recipe below changes: forces a rebuild
DEFAULT_TESTS=(tests/test_xdp.py tests/test_abi.py tests/test_loader.py
               tests/test_netns_dataplane.py tests/test_smoke_xdp.py)

vm_require_host
vm_pick_accel "${TEST_VM_ACCEL:-auto}"
timeout_for() { if [ "$1" = kvm ]; then echo "${TEST_VM_TIMEOUT:-1500}"; else echo "${TEST_VM_TIMEOUT:-5400}"; fi; }

# ---- 1. the image --------------------------------------------------------------------------
# What `make setup-dev` installs, read from scripts/setup.sh and scripts/setup-dev.sh: the
# words of their apt_install lines and of their *PKGS=( ... ) arrays (anything with a $ is
# resolved at run time and left out: the kernel headers are below).
mapfile -t SETUP_PKGS < <(vm_setup_pkgs scripts/setup.sh scripts/setup-dev.sh)
[ ${#SETUP_PKGS[@]} -gt 0 ] || die "found no package list in scripts/setup*.sh"
PKGS=(systemd-sysv udev kmod initramfs-tools linux-image-amd64 linux-headers-amd64
      procps iputils-ping make gcc libc6-dev tar "${SETUP_PKGS[@]}")
recipe="v$IMAGE_VERSION $SUITE ${PKGS[*]} backports=${TEST_VM_BACKPORTS:-0}"
IMG=$CACHE/rootfs.ext4
BOOT=$CACHE/boot
APT_CACHE=$CACHE/apt-archives   # downloaded .debs, kept: a rebuild downloads nothing new

build_image() {
  local root=$CACHE/rootfs.build
  say "building the Debian 12 image in $CACHE (mirror ${VM_MIRROR:-$(vm_mirror)}; a few minutes)"
  mkdir -p "$CACHE"
  rm -rf "$IMG" "$BOOT" "$CACHE/recipe"
  # Postfix is installed unconfigured, as setup-dev.sh does.
  VM_DEBCONF="postfix postfix/main_mailer_type select No configuration" \
  VM_BACKPORTS_KERNEL=${TEST_VM_BACKPORTS:-} \
    vm_bootstrap "$root" "$APT_CACHE" "$CACHE/packages.log" "${PKGS[@]}"
  # Nothing but the runner starts at boot.
  vm_guest_setup "$root" fail2ban.service postfix.service dovecot.service \
    systemd-journal-remote.socket apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service
  vm_pack "$root" "$BOOT" "$IMG" 8G
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
vm_wheelhouse "$WHEELS"

# ---- 3. boot each kernel -------------------------------------------------------------------
if [ $# -gt 0 ]; then TESTS=("$@"); else TESTS=("${DEFAULT_TESTS[@]}"); fi
printf -v TESTS_Q '%q ' "${TESTS[@]}"

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

# boot RUN KREL ACCEL: one VM run (vm_boot) with the repository and the wheelhouse shared.
boot() {
  rm -f "$1"/{junit.xml,pytest.log,setup.log}
  vm_boot "$1" "$2" "$3" "$(timeout_for "$3")" "$IMG" "$BOOT" \
    -virtfs "local,path=$REPO,mount_tag=repo,security_model=none,readonly=on" \
    -virtfs "local,path=$WHEELS,mount_tag=wheels,security_model=none,readonly=on"
}

RUNS=$CACHE/runs/$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUNS"
vm_keep_runs "$CACHE/runs" 5  # logs of the last 5 runs
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
