#!/usr/bin/env bash
# make vagrant-box: the Vagrant box `debian-12-dynscreen` (libvirt provider), built here
# from Debian packages only, and added to Vagrant from the local file. vagrant/Vagrantfile
# uses it unless DYNSCREEN_BOX names another box.
#
# What it does, as root:
#   1. a Debian 12 root file system with debootstrap (cached in $CACHE/rootfs.tar, rebuilt
#      when the package list changes; the downloaded .debs are kept in $CACHE/apt-archives):
#      Debian's stock kernel and its headers, GRUB's BIOS images, openssh-server, sudo,
#      rsync, and every package the lab's two VMs install (what scripts/setup.sh installs,
#      read from it; the mail servers; swaks): the VMs' provisioning then needs no network
#      beyond the host, and the guest's `make setup` finds all its packages installed;
#   2. the Vagrant conventions: user `vagrant` (password `vagrant`) with Vagrant's insecure
#      public key (from the host's vagrant package; Vagrant swaps it for a key of its own
#      on first `vagrant up`), passwordless sudo; DHCP on the first NIC (systemd-networkd;
#      Vagrant configures the others); fresh SSH host keys and machine-id on first boot;
#   3. a disk: one ext4 partition (label dsbox) in an MBR table, GRUB for BIOS written
#      into the MBR and the gap after it (grub-mkimage + dd: no loop device, no mount),
#      the kernel booted with the serial console on; converted to qcow2;
#   4. the box: box.img + metadata.json + Vagrantfile in a tar (sorted, fixed owner and
#      time), then `vagrant box add --force` and removal of the previous box's volumes
#      from libvirt's default storage pool (vagrant-libvirt would otherwise keep them).
#
# Usage: scripts/vagrant-box.sh
# Environment:
#   VAGRANT_BOX_CACHE=/var/cache/dynscreen/vagrant-box   everything it makes and keeps
#   VAGRANT_BOX_MIRROR=URL    Debian mirror (default: the one apt uses on this host)
#   VAGRANT_BOX_REBUILD=1     rebuild the root file system even if the cached one is current
#   VAGRANT_BOX_NAME=debian-12-dynscreen   VAGRANT_BOX_DISK_GB=12
# Exit status: 0 box built and added, 2 it could not be built.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${VAGRANT_BOX_CACHE:-/var/cache/dynscreen/vagrant-box}
NAME=${VAGRANT_BOX_NAME:-debian-12-dynscreen}
DISK_GB=${VAGRANT_BOX_DISK_GB:-12}
SUITE=bookworm
RECIPE_VERSION=1   # bump when the root file system recipe below changes: forces a rebuild
LABEL=dsbox
# Fixed identifiers: the same recipe gives the same file system identity.
FS_UUID=5d1f6b4e-0c1a-4d6e-9a57-64796e736372
FS_HASH_SEED=6c9a2f1e-3b7d-4e0a-8c5b-64796e736372
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}

VM_NAME=vagrant-box   # say, die, vm_mirror and vm_setup_pkgs: the VM scripts' library
# shellcheck source=scripts/vm-lib.sh
. scripts/vm-lib.sh

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot): run 'sudo make vagrant-box'"
[ "$(uname -m)" = x86_64 ] || die "the box recipe is for x86_64 hosts"

# ---- host tools ----------------------------------------------------------------------------
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v sfdisk >/dev/null || need+=(fdisk)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v vagrant >/dev/null || need+=(vagrant)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
INSECURE_KEY=$(dpkg -L vagrant 2>/dev/null | grep -m1 '/keys/vagrant\.pub$' || true)
if [ -z "$INSECURE_KEY" ] || [ ! -s "$INSECURE_KEY" ]; then
  die "Vagrant's insecure public key (keys/vagrant.pub) is not in the vagrant package"
fi

MIRROR=${VAGRANT_BOX_MIRROR:-$(vm_mirror)}
MIRROR=${MIRROR%/}
SECURITY=${MIRROR%/debian}/debian-security

# ---- 1. the root file system ---------------------------------------------------------------
# What the gateway's `make setup` installs, read from scripts/setup.sh: the words of its
# apt_install lines and of its *PKGS=( ... ) arrays (words with a $ are resolved at run
# time: the kernel headers come with linux-headers-amd64 below).
mapfile -t SETUP_PKGS < <(vm_setup_pkgs scripts/setup.sh)
[ ${#SETUP_PKGS[@]} -gt 0 ] || die "found no package list in scripts/setup.sh"
# The box itself, then what vagrant/provision/{gateway,attacker}.sh install.
BASE_PKGS=(systemd-sysv udev kmod initramfs-tools linux-image-amd64 linux-headers-amd64
           grub-pc-bin grub-common openssh-server sudo rsync ca-certificates iproute2
           dbus libpam-systemd procps iputils-ping less)
LAB_PKGS=(make gcc libc6-dev python3 postfix dovecot-imapd dovecot-pop3d swaks netcat-openbsd)
mapfile -t PKGS < <(printf '%s\n' "${BASE_PKGS[@]}" "${LAB_PKGS[@]}" "${SETUP_PKGS[@]}" | sort -u)
recipe="v$RECIPE_VERSION $SUITE ${PKGS[*]}"
ROOTFS_TAR=$CACHE/rootfs.tar
APT_CACHE=$CACHE/apt-archives   # downloaded .debs, kept: a rebuild downloads nothing new
BUILD=$CACHE/build

build_rootfs() {
  local root=$BUILD/rootfs
  say "building the Debian 12 root file system (mirror $MIRROR; several minutes)"
  mkdir -p "$CACHE" "$APT_CACHE/partial"
  vm_chroot_umounts "$root"  # left by a run that was killed
  rm -rf "$BUILD" "$ROOTFS_TAR" "$CACHE/recipe"
  mkdir -p "$root"
  debootstrap --variant=minbase --include=systemd-sysv,udev,kmod,ca-certificates \
    --cache-dir="$APT_CACHE" "$SUITE" "$root" "$MIRROR" > "$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
  cat > "$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
EOF
  # No service starts inside the chroot; Postfix is installed unconfigured (the gateway's
  # provisioning configures it).
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod +x "$root/usr/sbin/policy-rc.d"
  vm_chroot_mounts "$root" "$APT_CACHE"
  local inchroot=(chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8)
  {
    echo "postfix postfix/main_mailer_type select No configuration" | "${inchroot[@]}" debconf-set-selections
    "${inchroot[@]}" apt-get update -qq
    "${inchroot[@]}" apt-get install -y -qq --no-install-recommends "${PKGS[@]}"
    "${inchroot[@]}" apt-get clean
  } > "$CACHE/packages.log" 2>&1 \
    || { tail -30 "$CACHE/packages.log" >&2; die "package install failed (log: $CACHE/packages.log)"; }
  vm_chroot_umounts "$root"
  rm -f "$root/usr/sbin/policy-rc.d"
  # shellcheck disable=SC2016  # dpkg-query's own ${fields}
  chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' > "$CACHE/packages.lst"
  tar -C "$root" --numeric-owner --xattrs -cf "$ROOTFS_TAR.new" .
  mv "$ROOTFS_TAR.new" "$ROOTFS_TAR"
  rm -rf "$BUILD"
  echo "$recipe" > "$CACHE/recipe"
}

if [ "${VAGRANT_BOX_REBUILD:-}" = 1 ] || [ ! -s "$ROOTFS_TAR" ] \
   || [ "$(cat "$CACHE/recipe" 2>/dev/null)" != "$recipe" ]; then
  build_rootfs
else
  say "using the cached root file system $ROOTFS_TAR (VAGRANT_BOX_REBUILD=1 rebuilds it)"
fi

# ---- 2. the Vagrant conventions ------------------------------------------------------------
root=$BUILD/rootfs
rm -rf "$BUILD"; mkdir -p "$root"
tar -C "$root" --numeric-owner --xattrs -xf "$ROOTFS_TAR"

echo "$NAME" > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$NAME" \
  > "$root/etc/hosts"
echo "LABEL=$LABEL / ext4 rw,errors=remount-ro 0 1" > "$root/etc/fstab"
# Each VM made from the box gets its own machine-id (and so its own DHCP identity).
: > "$root/etc/machine-id"; rm -f "$root/var/lib/dbus/machine-id"

# Network: DHCP on eth0 (the management network Vagrant reaches the VM through);
# Vagrant writes its own files for the other NICs (50-vagrant-*.network).
mkdir -p "$root/etc/systemd/network"
printf '[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n' > "$root/etc/systemd/network/99-box-eth0.network"
chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1
# Boot does not wait for "network online" (the second NIC has no address until Vagrant
# configures it).
chroot "$root" systemctl disable systemd-networkd-wait-online.service >/dev/null 2>&1 || true

# The vagrant user, Vagrant's insecure key, passwordless sudo.
chroot "$root" id vagrant >/dev/null 2>&1 || chroot "$root" useradd --create-home --shell /bin/bash --user-group vagrant
echo "vagrant:vagrant" | chroot "$root" chpasswd
install -d -m 0700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
install -m 0600 -o 1000 -g 1000 "$INSECURE_KEY" "$root/home/vagrant/.ssh/authorized_keys"
[ "$(chroot "$root" id -u vagrant)" = 1000 ] || die "the vagrant user is not uid 1000"
printf 'vagrant ALL=(ALL) NOPASSWD: ALL\nDefaults:vagrant !requiretty\n' > "$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"
mkdir -p "$root/etc/ssh/sshd_config.d"
printf 'UseDNS no\nPasswordAuthentication no\n' > "$root/etc/ssh/sshd_config.d/vagrant.conf"
# SSH host keys: none in the box; every VM makes its own on first boot.
rm -f "$root"/etc/ssh/ssh_host_*
cat > "$root/etc/systemd/system/ssh-hostkeys.service" <<'EOF'
[Unit]
Description=SSH host keys of this VM (made on first boot)
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=ssh.service
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
[Install]
WantedBy=multi-user.target
EOF
chroot "$root" systemctl enable ssh-hostkeys.service ssh.service >/dev/null 2>&1

# Nothing else at boot: the mail servers are started by the gateway's provisioning only,
# fail2ban is not used in the lab, no periodic apt or scrub jobs.
for unit in postfix.service dovecot.service fail2ban.service; do
  chroot "$root" systemctl disable "$unit" >/dev/null 2>&1 || true
done
for unit in systemd-journal-remote.socket apt-daily.timer apt-daily-upgrade.timer \
            e2scrub_reap.service e2scrub_all.timer man-db.timer fstrim.timer; do
  chroot "$root" systemctl mask "$unit" >/dev/null 2>&1 || true
done

# ---- 3. the disk ---------------------------------------------------------------------------
KREL=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -n1)
[ -n "$KREL" ] || die "no kernel in the image"
[ -e "$root/boot/initrd.img-$KREL" ] || die "no initrd for kernel $KREL in the image"
CMDLINE="root=LABEL=$LABEL ro net.ifnames=0 biosdevname=0 console=tty0 console=ttyS0,115200"
mkdir -p "$root/boot/grub/i386-pc"
cp "$root"/usr/lib/grub/i386-pc/*.mod "$root"/usr/lib/grub/i386-pc/*.lst "$root/boot/grub/i386-pc/"
# /vmlinuz and /initrd.img: Debian's links to the newest kernel (kept by its postinst).
cat > "$root/boot/grub/grub.cfg" <<EOF
# $NAME (scripts/vagrant-box.sh): Debian's kernel, serial console on ttyS0.
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set default=0
set timeout=1
menuentry 'Debian GNU/Linux 12 ($NAME)' {
  insmod part_msdos
  insmod ext2
  search --no-floppy --label --set=root $LABEL
  linux /vmlinuz $CMDLINE
  initrd /initrd.img
}
EOF
if [ ! -e "$root/vmlinuz" ] || [ ! -e "$root/initrd.img" ]; then
  die "no /vmlinuz, /initrd.img links in the image"
fi
chroot "$root" grub-mkimage -O i386-pc -o /tmp/core.img -p "(hd0,msdos1)/boot/grub" \
  biosdisk part_msdos ext2 search search_label serial
mv "$root/tmp/core.img" "$BUILD/core.img"
cp "$root/usr/lib/grub/i386-pc/boot.img" "$BUILD/boot.img"

say "making the disk (${DISK_GB} GB, sparse)"
RAW=$BUILD/disk.raw
PART=$BUILD/part.ext4
part_mb=$((DISK_GB * 1024 - 1))
truncate -s "${DISK_GB}G" "$RAW"
printf 'label: dos\nlabel-id: 0x64796e73\nstart=2048, type=83, bootable\n' | sfdisk -q "$RAW"
mkfs.ext4 -q -F -L "$LABEL" -U "$FS_UUID" -E "hash_seed=$FS_HASH_SEED,root_owner=0:0" \
  -d "$root" "$PART" "${part_mb}M" >/dev/null || die "mkfs.ext4 -d failed"
dd if="$PART" of="$RAW" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$PART"
# GRUB for BIOS: boot.img's code in the MBR (the partition table after byte 440 stays),
# core.img from sector 1 (boot.img loads sector 1; grub-mkimage wrote core.img's own
# block list for the sectors that follow it).
[ "$(stat -c %s "$BUILD/core.img")" -lt $((2047 * 512)) ] || die "core.img does not fit before the partition"
dd if="$BUILD/boot.img" of="$RAW" bs=440 count=1 conv=notrunc status=none
dd if="$BUILD/core.img" of="$RAW" bs=512 seek=1 conv=notrunc status=none
rm -rf "$root"

OUT=$CACHE/box
rm -rf "$OUT"; mkdir -p "$OUT"
qemu-img convert -f raw -O qcow2 "$RAW" "$OUT/box.img"
rm -f "$RAW"
cat > "$OUT/metadata.json" <<EOF
{"provider": "libvirt", "format": "qcow2", "virtual_size": $DISK_GB}
EOF
cat > "$OUT/Vagrantfile" <<'EOF'
# debian-12-dynscreen (scripts/vagrant-box.sh): defaults for machines made from this box.
Vagrant.configure("2") do |config|
  config.ssh.username = "vagrant"
  config.vm.provider :libvirt do |lv|
    lv.disk_bus = "virtio"
    lv.nic_model_type = "virtio"
    lv.graphics_type = "none"
    lv.video_type = "none"
  end
end
EOF
BOX=$CACHE/$NAME.box
find "$OUT" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
tar -C "$OUT" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
  -cf "$BOX.new" metadata.json Vagrantfile box.img
mv "$BOX.new" "$BOX"
rm -rf "$OUT" "$BUILD"
say "box $BOX ($(du -h --apparent-size "$BOX" | cut -f1); kernel $KREL)"

# ---- 4. into Vagrant -----------------------------------------------------------------------
VAGRANT_CHECKPOINT_DISABLE=1 vagrant box add --force --name "$NAME" --provider libvirt "$BOX" \
  || die "vagrant box add failed"
# vagrant-libvirt copies a box into libvirt's default pool once, under a name holding the
# box file's time: the previous build's copy is dropped here (VMs made from it keep theirs
# only while they exist).
pool_dir=/var/lib/libvirt/images
if command -v virsh >/dev/null && virsh -c qemu:///system pool-info default >/dev/null 2>&1; then
  virsh -c qemu:///system pool-refresh default >/dev/null 2>&1 || true
  virsh -c qemu:///system vol-list default 2>/dev/null | awk '{print $1}' \
    | grep "^${NAME}_vagrant_box_image_" | while read -r vol; do
        virsh -c qemu:///system vol-delete --pool default "$vol" >/dev/null 2>&1 \
          && say "removed the previous box volume $vol from the default pool"
      done
elif [ -d "$pool_dir" ]; then
  rm -f "$pool_dir/${NAME}_vagrant_box_image_"*
fi
say "added box $NAME (libvirt)"
