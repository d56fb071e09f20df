# shellcheck shell=bash
# What the VM scripts share (sourced by scripts/test-vm.sh, scripts/test-deb.sh,
# scripts/test-exim.sh, scripts/vagrant-box.sh and scripts/test-vagrant.sh): messages, the
# package list of scripts/setup*.sh, the Python wheelhouse, the host tools, the accelerator,
# the Debian mirror, a debootstrapped Debian 12 root file system with the stock kernel, the
# guest's boot-time runner, one qemu boot whose guest reports through a 9p share, and the
# frame of a test whose guest reports in steps (test-deb, test-exim: the guest's side is
# scripts/vm-guest-steps.sh). Each script keeps its own image, cache and runner.
#
# The accelerator: KVM when /dev/kvm can run a stock kernel, else TCG (emulation: same
# kernel, same verifier, several times slower). A KVM that is PVM (kvm_pvm module:
# nested without hardware virtualisation) runs only PVM-enabled guest kernels, so
# Debian's kernel hangs at boot there: auto mode goes straight to TCG on such hosts,
# and falls back to TCG whenever a KVM boot shows no kernel output within a minute.
#
# The caller sets VM_NAME (the prefix of messages) before sourcing.

VM_NAME=${VM_NAME:-vm}
SUITE=bookworm
KVM_BOOT_WAIT=60  # seconds for a KVM guest to print its banner (loglevel 6 shows it)

say() { echo "$VM_NAME: $*"; }
die() { echo "$VM_NAME: $*" >&2; exit 2; }
truthy() { case "${1:-}" in 1|true|yes|TRUE|True) return 0;; *) return 1;; esac; }

vm_require_host() {  # root, x86_64, qemu + debootstrap + mkfs.ext4 (installed when missing)
  [ "$(id -u)" = 0 ] || die "needs root (debootstrap, image build)"
  [ "$(uname -m)" = x86_64 ] || die "the VM recipe is for x86_64 hosts"
  local need=()
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
  if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

# ---- the accelerator: sets ACCEL (kvm|tcg) and AUTO_FALLBACK (1: retry a silent KVM boot) --
kvm_usable() {
  [ -c /dev/kvm ] && /usr/bin/python3 -c 'import os; os.close(os.open("/dev/kvm", os.O_RDWR))' 2>/dev/null
}
vm_pick_accel() {  # $1: auto | kvm | tcg
  ACCEL=$1
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
    kvm) kvm_usable || die "accelerator kvm asked for, but /dev/kvm does not open" ;;
    tcg) ;;
    *) die "the accelerator must be auto, kvm or tcg (got $ACCEL)" ;;
  esac
  AUTO_FALLBACK=0
  [ "$1" = auto ] && [ "$ACCEL" = kvm ] && AUTO_FALLBACK=1
  return 0
}

vm_mirror() {
  # The Debian mirror apt uses here (deb822 or one-line sources), else deb.debian.org.
  local m
  m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        2>/dev/null | grep -v '^\s*#' \
      | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v -- '-security' | head -n1 | tr -d ' ')
  m=${m:-http://deb.debian.org/debian}
  echo "${m%/}"
}

# vm_setup_pkgs SCRIPT...: what the SCRIPTs (scripts/setup*.sh) install, one package a line:
# the words of their apt_install lines and of their *PKGS=( ... ) arrays (anything with a $
# is resolved at run time and left out).
vm_setup_pkgs() {
  /usr/bin/python3 - "$@" <<'EOF'
import re, sys
text = "\n".join(open(f).read() for f in sys.argv[1:]).replace("\\\n", " ")
words = []
for m in re.finditer(r"^\s*apt_install\s+([^\n;&|]*)", text, re.M):
    words += m.group(1).split()
for m in re.finditer(r"^\s*\w*PKGS=\(([^)]*)\)", text, re.M):
    words += m.group(1).split()
print("\n".join(sorted({w for w in words if re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", w)})))
EOF
}

# vm_wheelhouse DIR: the Python dependencies (runtime, every extra, the build backend and
# wheel, read from pyproject.toml) downloaded into DIR, again only when pyproject.toml is
# newer than the last download: the guests install from it without network.
vm_wheelhouse() {
  local wheels=$1
  if [ -e "$wheels/.stamp" ] && [ ! pyproject.toml -nt "$wheels/.stamp" ]; then return 0; fi
  say "downloading the Python dependencies into $wheels"
  rm -rf "$wheels"; mkdir -p "$wheels"
  /usr/bin/python3 - > "$wheels/requirements.txt" <<'EOF'
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))
reqs = p["build-system"]["requires"] + p["project"]["dependencies"]
for extra in p["project"].get("optional-dependencies", {}).values():
    reqs += extra
print("\n".join(reqs + ["wheel"]))
EOF
  local pip=(/usr/bin/python3 -m pip)
  [ -x .venv/bin/pip ] && pip=(.venv/bin/pip)
  "${pip[@]}" download -q --disable-pip-version-check -d "$wheels" -r "$wheels/requirements.txt" \
    2> >(grep -v 'is ignored: it is neither' >&2) || die "pip download failed"
  touch "$wheels/.stamp"
}

# ---- the root file system ------------------------------------------------------------------
# vm_chroot_mounts ROOT APT_CACHE / vm_chroot_umounts ROOT: what apt needs inside the chroot;
# downloaded .debs go to APT_CACHE (kept: a rebuild downloads nothing new).
vm_chroot_mounts() {
  local root=$1 cache=$2
  mkdir -p "$cache/partial"
  mount -t proc proc "$root/proc"; mount -t sysfs sys "$root/sys"; mount --bind /dev "$root/dev"
  mount --bind /dev/pts "$root/dev/pts"; mount --bind "$cache" "$root/var/cache/apt/archives"
  # shellcheck disable=SC2064
  trap "vm_chroot_umounts '$root'" EXIT
}
vm_chroot_umounts() {
  local root=$1
  umount -l "$root/var/cache/apt/archives" "$root/dev/pts" "$root/dev" "$root/sys" "$root/proc" \
    2>/dev/null || true
  trap - EXIT
}

# vm_bootstrap ROOT APT_CACHE LOG PKG...: Debian 12 (minbase + systemd) with PKG installed,
# no recommends; VM_DEBCONF (lines for debconf-set-selections) is applied first and
# VM_BACKPORTS_KERNEL=1 adds bookworm-backports' kernel. Nothing is started in the chroot.
vm_bootstrap() {
  local root=$1 cache=$2 log=$3; shift 3
  local mirror security
  mirror=$(vm_mirror); mirror=${VM_MIRROR:-$mirror}; mirror=${mirror%/}
  security=${mirror%/debian}/debian-security
  rm -rf "$root"; mkdir -p "$root" "$cache/partial"
  debootstrap --variant=minbase --include=systemd-sysv,udev,kmod,ca-certificates \
    --cache-dir="$cache" "$SUITE" "$root" "$mirror" > "$log.debootstrap" 2>&1 \
    || { tail -20 "$log.debootstrap" >&2; die "debootstrap failed (log: $log.debootstrap)"; }
  cat > "$root/etc/apt/sources.list" <<EOF
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb $security $SUITE-security main
EOF
  if truthy "${VM_BACKPORTS_KERNEL:-}"; then
    echo "deb $mirror $SUITE-backports main" >> "$root/etc/apt/sources.list"
  fi
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod +x "$root/usr/sbin/policy-rc.d"
  vm_chroot_mounts "$root" "$cache"
  local inchroot=(chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8)
  {
    if [ -n "${VM_DEBCONF:-}" ]; then echo "$VM_DEBCONF" | "${inchroot[@]}" debconf-set-selections; fi
    "${inchroot[@]}" apt-get update -qq
    "${inchroot[@]}" apt-get install -y -qq --no-install-recommends "$@"
    if truthy "${VM_BACKPORTS_KERNEL:-}"; then
      "${inchroot[@]}" apt-get install -y -qq --no-install-recommends -t "$SUITE-backports" \
        linux-image-amd64 linux-headers-amd64
    fi
  } > "$log" 2>&1 || { tail -30 "$log" >&2; die "package install failed (log: $log)"; }
  vm_chroot_umounts "$root"
  rm -f "$root/usr/sbin/policy-rc.d"
}

# vm_guest_setup ROOT UNIT...: root on /dev/vda, DHCP on the user-mode NIC, the UNITs
# masked, and the runner: at each boot the guest mounts the "ctl" share and runs the
# run.sh the host put there, then powers off whatever happened.
vm_guest_setup() {
  local root=$1; shift
  echo dsvm > "$root/etc/hostname"
  echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" > "$root/etc/fstab"
  echo "nameserver 10.0.2.3" > "$root/etc/resolv.conf"
  mkdir -p "$root/etc/systemd/network"
  printf '[Match]\nName=eth* en*\n\n[Network]\nDHCP=yes\n' > "$root/etc/systemd/network/50-dhcp.network"
  chroot "$root" systemctl enable systemd-networkd >/dev/null 2>&1
  local unit
  for unit in "$@"; do
    chroot "$root" systemctl mask "$unit" >/dev/null 2>&1 || true
  done
  cat > "$root/etc/systemd/system/dynscreen-vmtest.service" <<'EOF'
[Unit]
Description=dynscreen VM test runner
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
}

# vm_pack ROOT BOOT IMG SIZE: the kernels and initrds to BOOT, the tree into an ext4 image.
vm_pack() {
  local root=$1 boot=$2 img=$3 size=$4 v
  rm -rf "$boot"; mkdir -p "$boot"
  for v in "$root"/boot/vmlinuz-*; do
    cp "$v" "$boot/"
    cp "$root/boot/initrd.img-${v##*/vmlinuz-}" "$boot/"
  done
  ls "$boot"/vmlinuz-* >/dev/null 2>&1 || die "no kernel in the image"
  rm -f "$img"
  mkfs.ext4 -q -F -L dsvm -d "$root" "$img" "$size" >/dev/null || die "mkfs.ext4 -d failed"
}

# ---- one boot ------------------------------------------------------------------------------
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

# vm_boot RUN KREL ACCEL LIMIT IMG BOOT [QEMU ARGS...]: one VM run with RUN shared as "ctl"
# (run.sh in, results out) and the extra qemu arguments (more shares); returns qemu's
# status (124: timed out, 125: no boot under KVM). VM_MEM, VM_SMP, VM_VERBOSE apply.
vm_boot() {
  local run=$1 krel=$2 accel=$3 limit=$4 img=$5 boot=$6; shift 6
  local acc cpu
  if [ "$accel" = kvm ]; then acc=kvm; cpu=(); else acc=tcg,thread=multi; cpu=(-cpu max); fi
  rm -f "$run"/{console.log,qemu.log,guest.log,rc,error,kernel}
  : > "$run/console.log"
  say "booting $krel with $accel (up to ${limit}s; console: $run/console.log)"
  if truthy "${VM_VERBOSE:-}"; then tail -f "$run/console.log" & TAIL_PID=$!; fi
  timeout -k 10 "$limit" qemu-system-x86_64 \
    -accel "$acc" "${cpu[@]}" -m "${VM_MEM:-2G}" -smp "${VM_SMP:-2}" -nographic -monitor none -no-reboot \
    -serial "file:$run/console.log" \
    -kernel "$boot/vmlinuz-$krel" -initrd "$boot/initrd.img-$krel" \
    -append "root=/dev/vda rw console=ttyS0,115200 panic=10 net.ifnames=0 systemd.show_status=0 loglevel=6" \
    -drive "file=$img,format=raw,if=virtio,snapshot=on" \
    -nic user,model=virtio-net-pci \
    -virtfs "local,path=$run,mount_tag=ctl,security_model=none" \
    "$@" < /dev/null > "$run/qemu.log" 2>&1 &
  QEMU_PID=$!
  if [ "$accel" = kvm ] && [ "${AUTO_FALLBACK:-0}" = 1 ]; then
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

# vm_keep_runs DIR N: only the newest N run folders are kept.
vm_keep_runs() {
  find "$1" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn | tail -n +"$(($2 + 1))" \
    | cut -d' ' -f2- | while read -r old; do rm -rf "$old"; done
}

# ---- a test whose guest reports in steps (test-deb, test-exim) -----------------------------
# vm_test_begin PREFIX: root and the host tools; the accelerator from ${PREFIX}_ACCEL
# (default auto); LIMIT, the guest's whole run, from ${PREFIX}_TIMEOUT (default 1500 s
# under KVM, 5400 s under TCG; TCG_LIMIT for a retry under TCG); VM_VERBOSE from
# ${PREFIX}_VERBOSE.
vm_test_begin() {
  local accel=${1}_ACCEL timeout=${1}_TIMEOUT verbose=${1}_VERBOSE
  VM_VERBOSE=${!verbose:-}
  TCG_LIMIT=${!timeout:-5400}
  vm_require_host
  vm_pick_accel "${!accel:-auto}"
  if [ "$ACCEL" = kvm ]; then LIMIT=${!timeout:-1500}; else LIMIT=$TCG_LIMIT; fi
}

# vm_test_run_dir RUNS GUEST: RUN, a new run folder in RUNS (the newest four kept), holding
# GUEST as run.sh beside scripts/vm-guest-steps.sh and the accelerator; from here on qemu
# is stopped whenever the script exits.
vm_test_run_dir() {
  trap stop_qemu EXIT
  trap 'exit 130' INT TERM
  mkdir -p "$1"
  vm_keep_runs "$1" 4
  RUN=$1/$(date +%Y%m%d-%H%M%S)
  mkdir -p "$RUN"
  cp "$2" "$RUN/run.sh"
  cp scripts/vm-guest-steps.sh "$RUN/vm-guest-steps.sh"
  echo "$ACCEL" > "$RUN/accel"
}

# vm_newest_kernel BOOT: the release of the newest kernel in BOOT.
vm_newest_kernel() {
  find "$1" -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -n1
}

# vm_test_boot BOOT_FN: the run, as `BOOT_FN ACCEL LIMIT` (which calls vm_boot); a KVM boot
# that showed no kernel output is retried under TCG, with TCG_LIMIT.
vm_test_boot() {
  local brc=0
  "$1" "$ACCEL" "$LIMIT" || brc=$?
  if [ $brc = 125 ]; then
    say "no kernel output under KVM after ${KVM_BOOT_WAIT}s: retrying with TCG emulation (slow)"
    ACCEL=tcg; echo tcg > "$RUN/accel"
    "$1" tcg "$TCG_LIMIT" || true
  fi
}

# vm_test_verdict KREL START: the guest's steps and the verdict (KREL: the kernel booted,
# START: $SECONDS before the boot); status 0 when the guest says every step passed.
vm_test_verdict() {
  local krel=$1 start=$2 why status=0
  echo
  cat "$RUN/steps" 2>/dev/null || true
  if [ "$(cat "$RUN/rc" 2>/dev/null)" != 0 ]; then
    status=1
    why=$(cat "$RUN/error" 2>/dev/null || echo "a step failed")
    say "FAILED on $(cat "$RUN/kernel" 2>/dev/null || echo "$krel") [$ACCEL]: $why ($((SECONDS - start))s)"
  else
    say "passed on $(cat "$RUN/kernel") [$ACCEL] in $((SECONDS - start))s"
  fi
  echo "(logs: $RUN)"
  return $status
}
