# shellcheck shell=bash
# The guest side of a VM test, sourced by its run.sh (scripts/test-deb-guest.sh,
# scripts/test-exim-guest.sh): the host (vm_test_run_dir in scripts/vm-lib.sh) puts both
# in the run folder, which the guest mounts as /mnt/ctl. It sends the guest's output to
# guest.log and records the kernel; ACCEL is the accelerator the host chose (kvm | tcg).
#
# The steps: `begin STEP`, then `ok [NOTE]` or `bad WHY`, each adding a line
# "ok|FAIL <step> (<seconds>s)" to steps; `finish` writes rc (0: every step passed) and
# error, then powers the guest off.
set -u
OUT=/mnt/ctl
exec > >(tee -a "$OUT/guest.log") 2>&1
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
echo "DSVM: kernel $(uname -r)"
uname -r > "$OUT/kernel"
ACCEL=$(cat "$OUT/accel" 2>/dev/null || echo kvm)
failed=0
T0=$SECONDS

begin() { STEP=$1; T=$SECONDS; echo "DSVM: --- $STEP"; }
ok() { echo "ok   $STEP ($((SECONDS - T))s)${1:+: $1}" | tee -a "$OUT/steps"; }
bad() { echo "FAIL $STEP ($((SECONDS - T))s): $1" | tee -a "$OUT/steps"; failed=1; }
finish() {
  echo "total $((SECONDS - T0))s on $(uname -r) [$ACCEL]" | tee -a "$OUT/steps"
  [ $failed = 0 ] || echo "a step failed (see steps)" > "$OUT/error"
  echo "$failed" > "$OUT/rc"
  echo "DSVM: done rc=$failed"
  echo o > /proc/sysrq-trigger
  exit 0
}
