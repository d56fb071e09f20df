#!/bin/bash
# test-exim, the guest side (scripts/test-exim.sh copies it into the VM as run.sh; the
# guest's dynscreen-vmtest.service runs it at boot). A fresh Debian 12 with Exim running,
# nothing of dynscreen. Each step prints "ok|FAIL <step> (<seconds>s)" into steps;
# everything lands in /mnt/ctl.
#
#   exim         the host as found: Exim installed, active, answering on :25; no Postfix
#   make setup   succeeds; Exim installed, active and answering; no package removed
#   make run     the daemon starts and its control socket answers `dynscreen status`;
#                stopped again; Exim as before, no package removed
#   make setup-dev  exits non-zero naming the conflict (postfix would remove exim4...);
#                the package list is exactly as before it; Exim as before
# The output, the kernel, ACCEL and begin/ok/bad/finish: scripts/vm-guest-steps.sh.
# shellcheck source=scripts/vm-guest-steps.sh
. /mnt/ctl/vm-guest-steps.sh
RUN_WAIT=1500   # seconds for the daemon to answer (the emulated CPU compiles BPF slowly)

# The SMTP greeting on 127.0.0.1:25 (Exim's Debian default listens on the loopback).
banner() {
  # shellcheck disable=SC2016  # expanded by the inner bash
  timeout 20 bash -c 'exec 3<>/dev/tcp/127.0.0.1/25 || exit 1
    IFS= read -r line <&3; printf "%s" "$line"; printf "QUIT\r\n" >&3' 2>/dev/null | tr -d '\r'
}
# exim_state: "" when Exim is installed, active and greeting as Exim; else what is wrong.
exim_state() {
  local why='' b p
  for p in exim4 exim4-base exim4-daemon-light; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] \
      || why="$why $p is not installed ($(dpkg-query -W -f='${Status}' "$p" 2>&1));"
  done
  systemctl is-active -q exim4 || why="$why exim4 is $(systemctl is-active exim4);"
  b=$(banner)
  [[ $b == 220\ *Exim* ]] || why="$why :25 greets '${b:-nothing}', not Exim;"
  echo "$why"
}
exim_summary() {
  echo "exim4 $(dpkg-query -W -f='${Version}' exim4-daemon-light) $(systemctl is-active exim4), :25 '$(banner)'"
}
# daemon_says daemon.running|logs: from `dynscreen status --json` on stdin.
daemon_says() {
  .venv/bin/python -c '
import json, sys
st = json.load(sys.stdin)
if sys.argv[1] == "logs":
    print(", ".join("%s %s" % (s.get("source"), s.get("state")) for s in st.get("logs") or []))
else:
    print((st.get("daemon") or {}).get("running"))
' "$1" 2>/dev/null
}
packages() { dpkg-query -W -f='${Package} ${Version} ${Status}\n' | sort; }
# installed LIST: the names of the packages LIST says are installed.
installed() { awk '/ install ok installed$/ {print $1}' "$1"; }
# removed BEFORE AFTER: the packages installed in BEFORE and no longer (fully) in AFTER.
removed() { comm -23 <(installed "$1") <(installed "$2") | paste -sd ' ' -; }

# ---- the host as found ----------------------------------------------------------------
begin "exim: the gateway as found"
# (This runner starts with the other boot jobs: give Exim time to come up.)
for _ in $(seq 90); do
  systemctl is-active -q exim4 && [ -n "$(banner)" ] && break
  sleep 2
done
why=$(exim_state)
[ "$(dpkg-query -W -f='${Status}' postfix 2>/dev/null)" != "install ok installed" ] \
  || why="$why postfix is installed already;"
if [ -z "$why" ]; then ok "$(exim_summary)"; else bad "$why"; finish; fi
packages > "$OUT/packages.0"

# ---- the repository, copied --------------------------------------------------------------
begin "copy the repository"
mkdir -p /mnt/repo /mnt/wheels
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro repo /mnt/repo \
   && mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro wheels /mnt/wheels; then
  # A private copy: the guest's .venv must not land in the host's working tree.
  rm -rf /opt/dynscreen; mkdir -p /opt/dynscreen
  tar -C /mnt/repo --exclude=./.venv --exclude=./.git --exclude=./.pytest_cache \
      --exclude=./.ruff_cache --exclude='*.egg-info' --exclude=__pycache__ \
      --exclude=./vagrant/.vagrant --exclude=./build --exclude='*.so' -cf - . \
    | tar -C /opt/dynscreen -xf -
  ok "$(find /opt/dynscreen -type f | wc -l) files in /opt/dynscreen"
else
  bad "cannot mount the repo or wheel share"; finish
fi
cd /opt/dynscreen || finish
export PIP_NO_INDEX=1 PIP_FIND_LINKS=/mnt/wheels PIP_DISABLE_PIP_VERSION_CHECK=1
compiled="compiled pipeline"
if [ ! -e "$OUT/compile" ]; then export DYNSCREEN_PURE=1; compiled="DYNSCREEN_PURE=1"; fi

# ---- make setup --------------------------------------------------------------------------
begin "make setup ($compiled)"
if make setup > "$OUT/setup.log" 2>&1; then
  packages > "$OUT/packages.1"
  why=$(exim_state)
  gone=$(removed "$OUT/packages.0" "$OUT/packages.1")
  [ -z "$gone" ] || why="$why removed: $gone;"
  [ -x .venv/bin/dynscreen ] || why="$why no .venv/bin/dynscreen;"
  new=$(comm -13 <(installed "$OUT/packages.0") <(installed "$OUT/packages.1") | wc -l)
  if [ -z "$why" ]; then ok "$new packages added, none removed; $(exim_summary)"; else bad "$why"; fi
else
  tail -20 "$OUT/setup.log"; bad "make setup failed (setup.log)"; finish
fi

# ---- make run ----------------------------------------------------------------------------
begin "make run (until the control socket answers, then stopped)"
# Its own session: the whole group (timeout, make, the daemon) is stopped with one signal.
setsid timeout -k 30 $((RUN_WAIT + 120)) make run > "$OUT/run.log" 2>&1 &
run_pgid=$!
answer='' deadline=$((SECONDS + RUN_WAIT))
while [ $SECONDS -lt $deadline ] && kill -0 "$run_pgid" 2>/dev/null; do
  # The daemon's own answer (with none running, `status` reads the pins instead).
  if .venv/bin/dynscreen status --json > "$OUT/status.json" 2>/dev/null \
     && [ "$(daemon_says daemon.running < "$OUT/status.json")" = True ]; then
    answer=$(.venv/bin/dynscreen status 2>&1); break
  fi
  sleep 5
done
echo "$answer"
up=$((SECONDS - T))
kill -TERM -- "-$run_pgid" 2>/dev/null
for _ in $(seq 60); do kill -0 "$run_pgid" 2>/dev/null || break; sleep 1; done
stopped=yes; kill -0 "$run_pgid" 2>/dev/null && { stopped=no; kill -KILL -- "-$run_pgid" 2>/dev/null; }
packages > "$OUT/packages.2"
why=$(exim_state)
gone=$(removed "$OUT/packages.1" "$OUT/packages.2")
[ -z "$gone" ] || why="$why removed: $gone;"
[ $stopped = yes ] || why="$why the daemon did not stop on SIGTERM;"
if [ -z "$answer" ]; then
  tail -20 "$OUT/run.log"
  bad "no answer from the control socket within ${RUN_WAIT}s (run.log);$why"
elif [ -n "$why" ]; then
  bad "$why"
else
  logs=$(daemon_says logs < "$OUT/status.json")
  ok "answered after ${up}s (log sources found: ${logs:-none}), stopped; $(exim_summary)"
fi

# ---- make setup-dev ----------------------------------------------------------------------
begin "make setup-dev (must refuse: its Postfix would remove Exim)"
make setup-dev > "$OUT/setup-dev.log" 2>&1
rc=$?
cat "$OUT/setup-dev.log"
packages > "$OUT/packages.3"
why=$(exim_state)
[ $rc != 0 ] || why="$why it exited 0;"
msg=$(grep -m1 -o 'refusing to install: [^;]*;' "$OUT/setup-dev.log")
grep -qE 'postfix would remove [^;]*exim4' "$OUT/setup-dev.log" \
  || why="$why no 'postfix would remove ... exim4' in its message;"
diff -q "$OUT/packages.2" "$OUT/packages.3" >/dev/null \
  || why="$why the package list changed: $(diff "$OUT/packages.2" "$OUT/packages.3" | grep '^[<>]' | head -5 | tr '\n' ' ');"
[ ! -e /usr/sbin/policy-rc.d ] || why="$why /usr/sbin/policy-rc.d left behind;"
if [ -z "$why" ]; then ok "exit $rc, '$msg'; package list unchanged; $(exim_summary)"; else bad "$why"; fi

finish
