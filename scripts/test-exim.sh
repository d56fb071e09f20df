#!/usr/bin/env bash
# make test-exim: the development setup on an Exim mail gateway, in a fresh Debian 12 VM
# on Debian's stock kernel. Not part of `make test`.
#
# The promise it checks (README, "Install"): `make setup` and `make run` install only the
# daemon's runtime and leave the host's mail system alone; `make setup-dev`, whose lab
# Postfix would displace the installed Exim, refuses with a message naming the conflict
# and changes nothing.
#
# What it does, as root (the VM machinery is scripts/vm-lib.sh, shared with test-vm and
# test-deb):
#   1. builds (once; cached in $TEST_EXIM_CACHE) a Debian 12 root file system with
#      debootstrap: the stock kernel, systemd, make, and Exim (exim4 with
#      exim4-daemon-light, Debian's default "local delivery only" configuration, enabled);
#      nothing of dynscreen. What `make setup` will install (scripts/setup.sh's packages
#      and the kernel's headers) is downloaded into the image's apt cache, so the guest's
#      apt unpacks rather than downloads (it still runs `apt-get update`: the guest needs
#      the Debian mirror);
#   2. downloads the project's Python dependencies into a wheelhouse (cached; refreshed
#      when pyproject.toml changes), so the guest's pip needs no index;
#   3. boots it with qemu (-snapshot: the image never changes) with the repository shared
#      read-only over 9p; the guest (scripts/test-exim-guest.sh) copies it, runs
#      `make setup`, `make run` (until its control socket answers, then stops it) and
#      `make setup-dev`, checking Exim after each (dpkg, systemd, its SMTP banner) and
#      that no package was removed;
#   4. prints the guest's steps, each "ok" or "FAIL" with its time, and a verdict.
#
# The guest runs `make` with DYNSCREEN_PURE=1 unless TEST_EXIM_COMPILE=1: mypyc's build of
# the log pipeline takes most of an hour under TCG emulation and has nothing to do with
# the mail system (the packages and the daemon are the same either way).
#
# Usage: scripts/test-exim.sh
# Environment:
#   TEST_EXIM_CACHE=/var/cache/dynscreen/exim-vm   root file system, image, wheels, runs
#   TEST_EXIM_ACCEL=auto        auto | kvm | tcg
#   TEST_EXIM_TIMEOUT=SECONDS   the whole guest run (default 1500 KVM, 5400 TCG)
#   TEST_EXIM_COMPILE=1         let `make setup` compile the log pipeline (mypyc)
#   TEST_EXIM_REBUILD=1         rebuild the image even if the cached one is current
#   TEST_EXIM_VERBOSE=1         stream the guest's serial console while it runs
# Exit status: 0 every step passed, 1 a step failed or the guest gave no result, 2 the VM
# could not be built or started.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

VM_NAME=test-exim
# shellcheck source=scripts/vm-lib.sh
. scripts/vm-lib.sh

CACHE=${TEST_EXIM_CACHE:-/var/cache/dynscreen/exim-vm}
VM_MEM=2G
VM_SMP=2
IMAGE_VERSION=1   # bump when the recipe below changes: forces a rebuild

vm_test_begin TEST_EXIM

# ---- 1. the image: an Exim gateway without dynscreen ---------------------------------------
# What `make setup` installs, read from scripts/setup.sh (anything with a $ is resolved at
# run time; the kernel's headers are added below).
mapfile -t SETUP_PKGS < <(vm_setup_pkgs scripts/setup.sh)
[ ${#SETUP_PKGS[@]} -gt 0 ] || die "found no package list in scripts/setup.sh"
PKGS=(systemd-sysv udev kmod initramfs-tools linux-image-amd64 procps make
      exim4 exim4-daemon-light)
recipe="v$IMAGE_VERSION $SUITE ${PKGS[*]} | ${SETUP_PKGS[*]}"
IMG=$CACHE/image.ext4
BOOT=$CACHE/boot

build_image() {
  local root=$CACHE/rootfs.build krel
  say "building the Debian 12 image in $CACHE (a few minutes)"
  mkdir -p "$CACHE"
  rm -rf "$IMG" "$BOOT" "$CACHE/recipe"
  # Exim as Debian installs it: the debconf defaults ("local delivery only", listening on
  # the loopback addresses), started at boot.
  vm_bootstrap "$root" "$CACHE/apt-archives" "$CACHE/packages.log" "${PKGS[@]}"
  krel=$(vm_newest_kernel "$root/boot")
  # The .debs of `make setup`, in the image's own apt cache (nothing installed).
  vm_chroot_mounts "$root" "$root/var/cache/apt/archives"
  chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --download-only \
    --no-install-recommends "${SETUP_PKGS[@]}" "linux-headers-$krel" > "$CACHE/download.log" 2>&1 \
    || { vm_chroot_umounts "$root"; tail -20 "$CACHE/download.log" >&2; die "download failed (log: $CACHE/download.log)"; }
  vm_chroot_umounts "$root"
  # Nothing else competes with the test at boot; Exim starts as it would on the gateway.
  vm_guest_setup "$root" apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service
  vm_pack "$root" "$BOOT" "$IMG" 6G
  rm -rf "$root"
  echo "$recipe" > "$CACHE/recipe"
}

if truthy "${TEST_EXIM_REBUILD:-}" || [ ! -s "$IMG" ] || [ "$(cat "$CACHE/recipe" 2>/dev/null)" != "$recipe" ]; then
  build_image
else
  say "using the cached image $IMG (TEST_EXIM_REBUILD=1 rebuilds it)"
fi

# ---- 2. the wheelhouse: the build backend, the runtime and the extras (vm-lib.sh) -----------
WHEELS=$CACHE/wheels
vm_wheelhouse "$WHEELS"

# ---- 3. the run ----------------------------------------------------------------------------
vm_test_run_dir "$CACHE/runs" scripts/test-exim-guest.sh
truthy "${TEST_EXIM_COMPILE:-}" && touch "$RUN/compile"
krel=$(vm_newest_kernel "$BOOT")
boot() {
  vm_boot "$RUN" "$krel" "$1" "$2" "$IMG" "$BOOT" \
    -virtfs "local,path=$REPO,mount_tag=repo,security_model=none,readonly=on" \
    -virtfs "local,path=$WHEELS,mount_tag=wheels,security_model=none,readonly=on"
}
start=$SECONDS
vm_test_boot boot
vm_test_verdict "$krel" "$start"
