#!/usr/bin/env bash
# make test-deb: the Debian package installed and screening in a fresh Debian 12 VM on
# Debian's stock kernel. Not part of `make test`.
#
# What it does, as root (the VM machinery is scripts/vm-lib.sh, shared with test-vm):
#   1. builds (once; cached in $TEST_DEB_CACHE) a Debian 12 root file system with
#      debootstrap: the stock kernel, systemd and journald (no rsyslog), Postfix
#      ("Internet Site") and Dovecot IMAP/POP3 from Debian, Postfix's SMTP AUTH through
#      Dovecot, plain-text logins allowed (the attackers have no TLS: the settings of
#      vagrant/provision/mail-auth.sh, shared with the Vagrant gateway); nothing of
#      dynscreen. The dependencies the package will ask for (its Depends and Recommends)
#      are downloaded into the image's apt cache, so the guest's apt needs no network;
#   2. boots it with qemu (-snapshot: the image never changes) with the .deb, the guest
#      script (scripts/test-deb-guest.sh) and the attacker (vagrant/attack.py) in a 9p
#      share; the guest installs the package with `apt-get install ./dynscreen_*.deb`,
#      configures it, starts the service, attacks itself from network namespaces, then
#      removes and purges the package, checking each step (see the guest script);
#   3. prints the guest's steps, each "ok" or "FAIL" with its time, and a verdict.
#
# Usage: scripts/test-deb.sh [DEB]          (default: the newest build/dynscreen_*.deb)
# Environment:
#   TEST_DEB_CACHE=/var/cache/dynscreen/deb-vm   root file system, image, runs
#   TEST_DEB_ACCEL=auto        auto | kvm | tcg
#   TEST_DEB_TIMEOUT=SECONDS   the whole guest run (default 1500 KVM, 5400 TCG)
#   TEST_DEB_REBUILD=1         rebuild the root file system even if the cached one is current
#   TEST_DEB_VERBOSE=1         stream the guest's serial console while it runs
# Exit status: 0 every step passed, 1 a step failed or the guest gave no result, 2 the VM
# could not be built or started.
set -euo pipefail
cd "$(dirname "$0")/.."

VM_NAME=test-deb
# shellcheck source=scripts/vm-lib.sh
. scripts/vm-lib.sh

CACHE=${TEST_DEB_CACHE:-/var/cache/dynscreen/deb-vm}
VM_MEM=2G
VM_SMP=2
ROOTFS_VERSION=1   # bump when the recipe below changes: forces a rebuild

vm_test_begin TEST_DEB

# ---- 1. the root file system: a mail server without dynscreen ------------------------------
PKGS=(systemd-sysv udev kmod initramfs-tools linux-image-amd64 procps
      postfix dovecot-core dovecot-imapd dovecot-pop3d)
ROOT=$CACHE/rootfs
# (An edit of the shared mail setup rebuilds it too.)
recipe="v$ROOTFS_VERSION $SUITE ${PKGS[*]} mail-auth:$(sha256sum < vagrant/provision/mail-auth.sh | cut -c1-16)"
if truthy "${TEST_DEB_REBUILD:-}" || [ ! -d "$ROOT/etc" ] \
   || [ "$(cat "$CACHE/rootfs.recipe" 2>/dev/null)" != "$recipe" ]; then
  say "building the Debian 12 root file system in $ROOT (a few minutes)"
  mkdir -p "$CACHE"; rm -f "$CACHE/rootfs.recipe" "$CACHE/image.recipe"
  VM_DEBCONF="postfix postfix/main_mailer_type select Internet Site
postfix postfix/mailname string dsvm" \
    vm_bootstrap "$ROOT" "$CACHE/apt-archives" "$CACHE/packages.log" "${PKGS[@]}"
  # The mail servers as an administrator would run them, logging to journald (Debian's
  # default without rsyslog): SMTP AUTH through Dovecot, plain-text logins allowed (the
  # Vagrant gateway's setting too).
  bash vagrant/provision/mail-auth.sh "$ROOT"
  vm_guest_setup "$ROOT" apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service
  echo "$recipe" > "$CACHE/rootfs.recipe"
else
  say "using the cached root file system $ROOT (TEST_DEB_REBUILD=1 rebuilds it)"
fi

# ---- 2. the image: the package's dependencies in its apt cache -----------------------------
DEB=${1:-$(find build -maxdepth 1 -name 'dynscreen_*.deb' -printf '%T@ %p\n' 2>/dev/null | sort -rn | head -n1 | cut -d' ' -f2-)}
if [ -z "$DEB" ] || [ ! -f "$DEB" ]; then die "no package: run 'make deb' first (or pass the .deb)"; fi
DEB=$(readlink -f "$DEB")
# apt in the guest resolves the package from the image's lists and finds every .deb it
# needs here: the install is apt's own, without the network.
IMG=$CACHE/image.ext4
BOOT=$CACHE/boot
want="$recipe | $(dpkg-deb -f "$DEB" Depends Recommends | tr '\n' ' ')"
if [ ! -s "$IMG" ] || [ "$(cat "$CACHE/image.recipe" 2>/dev/null)" != "$want" ]; then
  say "downloading the package's dependencies into the image and packing it"
  cp "$DEB" "$ROOT/tmp/dynscreen.deb"
  archives=$ROOT/var/cache/apt/archives
  vm_chroot_mounts "$ROOT" "$archives"
  chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --download-only \
    /tmp/dynscreen.deb > "$CACHE/download.log" 2>&1 \
    || { vm_chroot_umounts "$ROOT"; tail -20 "$CACHE/download.log" >&2; die "download failed (log: $CACHE/download.log)"; }
  vm_chroot_umounts "$ROOT"
  rm -f "$ROOT/tmp/dynscreen.deb"
  vm_pack "$ROOT" "$BOOT" "$IMG" 6G
  echo "$want" > "$CACHE/image.recipe"
else
  say "using the cached image $IMG"
fi

# ---- 3. the run ----------------------------------------------------------------------------
vm_test_run_dir "$CACHE/runs" scripts/test-deb-guest.sh
cp "$DEB" "$RUN/"
cp vagrant/attack.py "$RUN/attack.py"
krel=$(vm_newest_kernel "$BOOT")
boot() { vm_boot "$RUN" "$krel" "$1" "$2" "$IMG" "$BOOT"; }
start=$SECONDS
vm_test_boot boot
vm_test_verdict "$krel" "$start"
