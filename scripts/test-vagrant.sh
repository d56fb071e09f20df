#!/usr/bin/env bash
# shellcheck disable=SC2317  # cleanup and stop_daemon run from the EXIT trap
# make test-vagrant: the Vagrant lab for real, end to end (as root; not part of `make test`).
#
#   1. installs what it needs from Debian (vagrant, vagrant-libvirt, libvirt, qemu,
#      dnsmasq-base, rsync), starting nothing (a policy-rc.d guard during the install);
#   2. starts virtlogd and libvirtd when they are not running (no systemd needed), and
#      only those: the ones it started are stopped at the end;
#   3. builds the box debian-12-dynscreen (scripts/vagrant-box.sh) when Vagrant lacks it,
#      and the project's Debian package (make deb) when build/ lacks the current
#      version's, so that the VMs need nothing but this host: vagrant-libvirt's management
#      network is isolated (host <-> VMs only);
#   4. `vagrant up` (gateway and attacker; domain type kvm, or qemu = TCG emulation where
#      /dev/kvm cannot run a stock kernel: see vagrant/Vagrantfile), which provisions them:
#      the gateway installs the package with apt and runs it with the package's unit;
#   5. vagrant/e2e.sh: SMTP AUTH brute force, connection flood, IMAP brute force;
#   6. always (also after a failure or Ctrl-C): `vagrant destroy -f`, the lab's domains
#      and libvirt networks gone, the daemons it started stopped, ip_forward as it was.
#
# Usage: scripts/test-vagrant.sh [SCENARIO...]     (passed to e2e.sh; default: all)
# Environment:
#   TEST_VAGRANT_CACHE=/var/cache/dynscreen/vagrant   run logs (VM consoles)
#   DYNSCREEN_DEB=PATH      the package the gateway installs (default: build/'s, made if missing)
#   TEST_VAGRANT_KEEP=1     leave the VMs (and libvirt) running after the run, to look around
#   E2E_BLOCK_WAIT=SECONDS  how long e2e.sh waits for a block (default 60, 240 emulated)
#   DYNSCREEN_LIBVIRT_DRIVER=kvm|qemu   and the other DYNSCREEN_* of vagrant/Vagrantfile
# Exit status: 0 every scenario passed; 1 a scenario failed; 2 the lab could not be set up.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VDIR=$REPO/vagrant

CACHE=${TEST_VAGRANT_CACHE:-/var/cache/dynscreen/vagrant}
BOX_NAME=debian-12-dynscreen
URI=qemu:///system
LAB_DOMAINS=(vagrant_gateway vagrant_attacker)   # vagrant-libvirt: <folder>_<machine>
LAB_NETWORKS=(dynscreen-lab vagrant-libvirt)

VM_NAME=test-vagrant   # say and die come from the VM scripts' library
# shellcheck source=scripts/vm-lib.sh
. scripts/vm-lib.sh
virsh_() { virsh -q -c "$URI" "$@"; }

[ "$(id -u)" = 0 ] || die "needs root (packages, libvirt): run 'sudo make test-vagrant'"
[ "$(uname -m)" = x86_64 ] || die "the lab is for x86_64 hosts"
T0=$SECONDS

# ---- 1. packages ---------------------------------------------------------------------------
PKGS=(vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
      dnsmasq-base rsync iptables python3-pip)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  rc_guard=
  if [ ! -e /usr/sbin/policy-rc.d ]; then   # the packages' scripts must start no service
    rc_guard=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$rc_guard"; chmod 755 "$rc_guard"
  fi
  rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } || rc=$?
  [ -z "$rc_guard" ] || rm -f "$rc_guard"
  [ $rc = 0 ] || die "installing ${missing[*]} failed"
fi

# ---- 2. libvirt ----------------------------------------------------------------------------
STARTED_DAEMONS=()         # pid files of the daemons this run started
NETS_BEFORE=" "
IP_FORWARD=$(cat /proc/sys/net/ipv4/ip_forward)
UP_DONE=0
KVM_RESTORE=0
# libvirt's firewall chains (LIBVIRT_INP, ... in iptables and ip6tables): made when it
# first starts a network, and kept, empty, after the network is gone.
CHAINS_BEFORE=0
iptables -w -S LIBVIRT_INP >/dev/null 2>&1 && CHAINS_BEFORE=1

stop_daemon() {  # $1 pid file: the daemon it names, stopped and waited for
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 0
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? d n
  trap '' INT TERM   # a second Ctrl-C must not leave half a cleanup
  if [ "${TEST_VAGRANT_KEEP:-}" = 1 ] && [ "$UP_DONE" = 1 ]; then
    say "TEST_VAGRANT_KEEP=1: the VMs are left running (cd vagrant; vagrant destroy -f)"
    exit "$rc"
  fi
  say "cleaning up: vagrant destroy -f"
  (cd "$VDIR" && timeout 600 vagrant destroy -f >/dev/null 2>&1) || say "vagrant destroy failed: removing the domains with virsh"
  if virsh_ uri >/dev/null 2>&1; then
    for d in "${LAB_DOMAINS[@]}"; do
      if virsh_ dominfo "$d" >/dev/null 2>&1; then
        virsh_ destroy "$d" >/dev/null 2>&1 || true
        virsh_ undefine "$d" --remove-all-storage >/dev/null 2>&1 || virsh_ undefine "$d" >/dev/null 2>&1 || true
        say "removed domain $d"
      fi
    done
    # The lab's networks and any other network this run brought up (a network autostarted
    # by a libvirtd started here).
    # (networks that were up before this run are left alone).
    for n in $(virsh_ net-list --all --name 2>/dev/null); do
      [[ $NETS_BEFORE == *" $n "* ]] && continue
      if [ "$(virsh_ net-info "$n" 2>/dev/null | awk '/^Active:/{print $2}')" = yes ]; then
        virsh_ net-destroy "$n" >/dev/null 2>&1 && say "stopped network $n"
      fi
      case " ${LAB_NETWORKS[*]} " in
        *" $n "*) virsh_ net-undefine "$n" >/dev/null 2>&1 && say "removed network $n" ;;
      esac
    done
  fi
  local pidfile
  for pidfile in "${STARTED_DAEMONS[@]}"; do
    stop_daemon "$pidfile" && say "stopped $(basename "$pidfile" .pid)"
  done
  if [ "$CHAINS_BEFORE" = 0 ] && ! pgrep -x libvirtd >/dev/null; then
    drop_libvirt_chains && say "removed libvirt's (empty) firewall chains"
  fi
  echo "$IP_FORWARD" > /proc/sys/net/ipv4/ip_forward 2>/dev/null || true
  if [ "$KVM_RESTORE" = 1 ]; then chgrp root /dev/kvm; chmod 0600 /dev/kvm; fi
  # Nothing of the lab may survive: no qemu of its domains.
  if pgrep -f "guest=(vagrant_gateway|vagrant_attacker)" >/dev/null; then
    say "WARNING: qemu of a lab domain still runs: $(pgrep -af 'guest=vagrant_' | cut -c1-120)"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# libvirt runs qemu as libvirt-qemu:kvm. Where /dev/kvm is root's alone (no udev to apply
# Debian's root:kvm 0660 rule), libvirt's capability probe finds KVM, its check right after
# finds it "not available now" for that user, and it probes again, forever: every domain
# start hangs. For the run /dev/kvm gets Debian's usual group and mode, restored at the end
# (the domain type stays qemu where KVM cannot run a stock kernel).
if [ -c /dev/kvm ] && getent group kvm >/dev/null \
   && [ "$(stat -c '%U:%G %a' /dev/kvm)" = "root:root 600" ]; then
  say "/dev/kvm is root:root 0600: root:kvm 0660 (Debian's udev rule) for this run"
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm && KVM_RESTORE=1
fi

drop_libvirt_chains() {  # the empty LIBVIRT_* chains and the jumps to them, all tables
  local cmd table chain rule
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null || continue
    for table in filter nat mangle; do
      for chain in $("$cmd" -w -t "$table" -S 2>/dev/null | awk '/^-N LIBVIRT_/{print $2}'); do
        # Only when empty: a rule in it is not ours to remove.
        [ "$("$cmd" -w -t "$table" -S "$chain" | grep -c '^-A')" = 0 ] || continue
        "$cmd" -w -t "$table" -S | grep -- "-j $chain\$" | sed 's/^-A /-D /' \
          | while read -r rule; do
              # shellcheck disable=SC2086  # the rule's words, as iptables -S printed them
              "$cmd" -w -t "$table" $rule
            done
        "$cmd" -w -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

start_daemon() {  # $1 daemon, $2 pid file
  if pgrep -x "$1" >/dev/null; then return 0; fi
  say "starting $1 (stopped again at the end)"
  "$1" -d || die "$1 -d failed"
  STARTED_DAEMONS+=("$2")
}
if pgrep -x libvirtd >/dev/null; then
  NETS_BEFORE=" $(virsh_ net-list --name 2>/dev/null | tr '\n' ' ') "
fi
start_daemon virtlogd /run/virtlogd.pid
start_daemon libvirtd /run/libvirtd.pid
for _ in $(seq 1 60); do virsh_ uri >/dev/null 2>&1 && break; sleep 1; done
virsh_ uri >/dev/null 2>&1 || die "libvirtd does not answer on $URI"
# A libvirtd started here autostarts the networks marked so (Debian's "default" NAT,
# when enabled): the lab uses none of them; stopped at once, not left to forward.
for n in $(virsh_ net-list --name 2>/dev/null); do
  case " ${LAB_NETWORKS[*]} " in *" $n "*) continue ;; esac
  [[ $NETS_BEFORE == *" $n "* ]] && continue
  virsh_ net-destroy "$n" >/dev/null 2>&1 && say "stopped network $n (autostarted by the libvirtd started here)"
done
echo "$IP_FORWARD" > /proc/sys/net/ipv4/ip_forward

# ---- 3. box and package --------------------------------------------------------------------
export VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_DEFAULT_PROVIDER=libvirt
box_s=0
if ! vagrant box list --machine-readable 2>/dev/null | grep -q ",box-name,$BOX_NAME\$"; then
  say "the box $BOX_NAME is missing: make vagrant-box"
  t=$SECONDS
  nice -n 10 bash scripts/vagrant-box.sh || die "the box could not be built"
  box_s=$((SECONDS - t))
else
  say "using the box $BOX_NAME (make vagrant-box rebuilds it)"
fi

# The package of the version debian/changelog names (make deb builds it; a stale one of
# the same version is rebuilt by running make deb by hand).
deb_s=0
if [ -z "${DYNSCREEN_DEB:-}" ]; then
  version=$(sed -n '1s/^dynscreen (\([^)]*\)).*/\1/p' debian/changelog)
  DYNSCREEN_DEB=$REPO/build/dynscreen_${version}_$(dpkg --print-architecture).deb
  if [ ! -f "$DYNSCREEN_DEB" ]; then
    say "no package $DYNSCREEN_DEB: make deb"
    t=$SECONDS
    bash scripts/build-deb.sh || die "the package could not be built"
    deb_s=$((SECONDS - t))
  fi
fi
[ -f "$DYNSCREEN_DEB" ] || die "no package $DYNSCREEN_DEB"
DYNSCREEN_DEB=$(readlink -f "$DYNSCREEN_DEB")
export DYNSCREEN_DEB
say "the gateway installs $DYNSCREEN_DEB"

# ---- 4. up ---------------------------------------------------------------------------------
RUN=$CACHE/runs/$(date +%Y%m%d-%H%M%S)
mkdir -p "$RUN"
find "$CACHE/runs" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' | sort -rn | tail -n +6 \
  | cut -d' ' -f2- | while read -r old; do rm -rf "$old"; done
export DYNSCREEN_LIBVIRT_MGMT_MODE=none DYNSCREEN_CONSOLE_DIR=$RUN
export DYNSCREEN_BOX=${DYNSCREEN_BOX:-$BOX_NAME}
cd "$VDIR"
# The Vagrantfile's own guess, for the timeouts here (KVM-PVM runs no stock kernel).
driver=${DYNSCREEN_LIBVIRT_DRIVER:-}
if [ -z "$driver" ]; then
  if [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]; then driver=kvm; else driver=qemu; fi
fi
if [ "$driver" = qemu ]; then
  say "domain type qemu: software emulation (TCG), slow (this host's /dev/kvm cannot run a stock kernel)"
  export E2E_BLOCK_WAIT=${E2E_BLOCK_WAIT:-240}
fi
# Leftovers of an interrupted earlier run would make `up` reuse half-made machines.
timeout 600 vagrant destroy -f >/dev/null 2>&1 || true
say "vagrant up (box $DYNSCREEN_BOX; logs and VM consoles: $RUN)"
t=$SECONDS
UP_DONE=1
if ! vagrant up --provider=libvirt 2>&1 | tee "$RUN/up.log"; then
  die "vagrant up failed after $((SECONDS - t))s (log: $RUN/up.log, consoles: $RUN/*.log)"
fi
up_s=$((SECONDS - t))
say "vagrant up took ${up_s}s"

# ---- 5. the scenarios ----------------------------------------------------------------------
t=$SECONDS
e2e_rc=0
./e2e.sh "$@" 2>&1 | tee "$RUN/e2e.log" || e2e_rc=${PIPESTATUS[0]}
e2e_s=$((SECONDS - t))
echo
say "box build ${box_s}s, package build ${deb_s}s (0: already built), vagrant up ${up_s}s, e2e ${e2e_s}s," \
    "total $((SECONDS - T0))s before cleanup (domain type $driver)"
[ "$e2e_rc" = 0 ] || say "e2e.sh failed (exit $e2e_rc): $RUN/e2e.log"
exit "$e2e_rc"
