#!/bin/bash
# test-deb, the guest side (scripts/test-deb.sh copies it into the VM as run.sh; the
# guest's dynscreen-vmtest.service runs it at boot). A fresh Debian 12 with Postfix and
# Dovecot logging to journald, nothing of dynscreen. Each step prints
# "ok|FAIL <step> (<seconds>s)" into steps; everything lands in /mnt/ctl.
#
#   install    apt-get install ./dynscreen_*.deb: the dependencies come from apt, the
#              service is installed but neither enabled nor started, no XDP anywhere
#   configure  the admin's edit of /etc/dynscreen/dynscreen.toml: three veth links to
#              attacker namespaces screened beside eth0, low limits, the two journals
#   start      systemctl start dynscreen: XDP on every screened link, pins in bpffs
#   flood      connections from 10.99.3.2: the (X+1)th is dropped (reason connections)
#   postfix    unknown recipients from 10.99.1.2, read from postfix@-.service's journal
#   dovecot    IMAP login failures from 10.99.2.2, read from dovecot.service's journal
#   remove (stopped)  systemctl stop leaves XDP enforcing; apt-get remove takes it away
#   remove (running)  reinstall, start, apt-get remove with the daemon running
#   purge      apt-get purge: /var/lib/dynscreen and /etc/dynscreen gone
# The output, the kernel, ACCEL and begin/ok/bad/finish: scripts/vm-guest-steps.sh.
# shellcheck source=scripts/vm-guest-steps.sh
. /mnt/ctl/vm-guest-steps.sh
DEB=$(find "$OUT" -maxdepth 1 -name 'dynscreen_*.deb' | head -n1)
BLOCK_WAIT=300     # seconds for a log-based block to show (emulated CPU: slow)

xdp_links() { ip -o link show | grep 'prog/xdp' | awk -F': ' '{print $2}' | cut -d@ -f1 | tr '\n' ' '; }
attack() { local ns=$1; shift; ip netns exec "$ns" python3 "$OUT/attack.py" "$@"; }

# block_of IP: "reason source" of IP's block in `dynscreen status --json`, or nothing.
block_of() {
  dynscreen status --json 2>/dev/null | python3 -c '
import json, sys
ip = sys.argv[1]
for b in json.load(sys.stdin).get("blocks", []):
    if b["ip"] in (ip, ip + "/32"):
        print(b["reason"], b.get("source", "?"))
' "$1"
}
wait_block() {  # IP REASON: waits for IP's block, which must be for REASON
  local ip=$1 want=$2 got deadline=$((SECONDS + BLOCK_WAIT))
  while :; do
    got=$(block_of "$ip")
    if [ -n "$got" ]; then
      [ "${got%% *}" = "$want" ] && { echo "$ip blocked: $got"; return 0; }
      echo "$ip blocked for $got, expected $want"; return 1
    fi
    [ $SECONDS -lt $deadline ] || { echo "$ip not blocked after ${BLOCK_WAIT}s"; return 1; }
    sleep 3
  done
}
journal_mentions() {  # UNIT TEXT: the unit's journal has a line with TEXT
  journalctl -q -u "$1" --no-pager -o cat | grep -q -- "$2"
}
screening_gone() {  # no XDP on any link, no pins
  local links; links=$(xdp_links)
  [ -z "$links" ] || { echo "XDP still on: $links"; return 1; }
  [ ! -e /sys/fs/bpf/dynscreen ] || { echo "pins left in /sys/fs/bpf/dynscreen"; return 1; }
}

# ---- the host as found ----------------------------------------------------------------
begin "fresh host"
# (This runner starts with the other boot jobs: give the mail servers time to come up.)
for _ in $(seq 60); do
  systemctl is-active -q postfix@-.service && systemctl is-active -q dovecot.service && break
  sleep 2
done
why=
dpkg-query -W rsyslog >/dev/null 2>&1 && why="rsyslog is installed"
[ -e /var/log/mail.log ] && why="$why /var/log/mail.log exists"
for u in postfix@-.service dovecot.service; do
  systemctl is-active -q "$u" || why="$why $u is not running"
done
dpkg-query -W dynscreen >/dev/null 2>&1 && why="$why dynscreen is installed already"
if [ -z "$why" ]; then ok "postfix@- and dovecot running, journald only"; else bad "$why"; finish; fi

# ---- install -----------------------------------------------------------------------------
begin "install: apt-get install ./$(basename "$DEB")"
cp "$DEB" /root/ && chmod 644 "/root/$(basename "$DEB")"
if apt-get install -y "/root/$(basename "$DEB")" > "$OUT/apt-install.log" 2>&1; then
  why=
  [ "$(systemctl is-enabled dynscreen 2>&1)" = disabled ] || why="unit is $(systemctl is-enabled dynscreen 2>&1), not disabled"
  systemctl is-active -q dynscreen && why="$why; the service runs after install"
  [ -z "$(xdp_links)" ] || why="$why; XDP attached on install: $(xdp_links)"
  [ "$(command -v dynscreen)" = /usr/sbin/dynscreen ] || why="$why; dynscreen not /usr/sbin/dynscreen"
  dynscreen --help > /dev/null || why="$why; dynscreen --help fails"
  /usr/lib/dynscreen/bin/python3 -c 'import bcc' || why="$why; bcc not importable from the venv"
  [ -e "/lib/modules/$(uname -r)/build/include" ] || why="$why; no kernel headers (Recommends)"
  n=$(grep -c '^Unpacking ' "$OUT/apt-install.log")
  if [ -z "$why" ]; then ok "$n packages unpacked; unit disabled and inactive, no XDP"; else bad "$why"; fi
else
  tail -20 "$OUT/apt-install.log"; bad "apt-get install failed (apt-install.log)"; finish
fi

# ---- configure ---------------------------------------------------------------------------
begin "configure"
for i in 1 2 3; do
  ip netns add "dsa$i"
  ip link add "dsv$i" type veth peer name eth0 netns "dsa$i"
  ip addr add "10.99.$i.1/24" dev "dsv$i"; ip link set "dsv$i" up
  ip -n "dsa$i" addr add "10.99.$i.2/24" dev eth0
  ip -n "dsa$i" link set eth0 up; ip -n "dsa$i" link set lo up
done
conf=/etc/dynscreen/dynscreen.toml
sed -i -e 's/^#interfaces = .*/interfaces = ["eth0", "dsv1", "dsv2", "dsv3"]/' \
       -e 's/^#connections = .*/connections = 5/' \
       -e 's/^#failed_rcpts = .*/failed_rcpts = 3/' \
       -e 's/^#auth_failures = .*/auth_failures = 3/' "$conf"
cat >> "$conf" <<'EOF'

# Debian 12 without rsyslog: the mail servers log to the journal.
[[logs]]
format = "postfix"
journal = "postfix@-.service"

[[logs]]
format = "dovecot"
journal = "dovecot.service"
EOF
if [ "$ACCEL" = tcg ]; then
  # The emulated CPU compiles the BPF program several times slower than a real one.
  mkdir -p /etc/systemd/system/dynscreen.service.d
  printf '[Service]\nTimeoutStartSec=1200\n' > /etc/systemd/system/dynscreen.service.d/emulated-cpu.conf
  systemctl daemon-reload
fi
if out=$(dynscreen check-config 2>&1); then
  ok "check-config: logs: $(grep -o 'journal:[^ ]*' <<<"$out" | paste -sd ' ' -)"
else
  bad "check-config: $out"
fi

# ---- start -------------------------------------------------------------------------------
begin "start: systemctl start dynscreen"
if systemctl start dynscreen; then
  why=
  for l in eth0 dsv1 dsv2 dsv3; do
    ip -o link show dev "$l" | grep -q 'prog/xdp' || why="$why no XDP on $l;"
  done
  [ -d /sys/fs/bpf/dynscreen ] || why="$why no pins in /sys/fs/bpf/dynscreen;"
  if [ -z "$why" ]; then ok "XDP on $(xdp_links)"; else bad "$why"; fi
else
  journalctl -u dynscreen --no-pager | tail -30
  bad "the service did not start"; finish
fi

# ---- flood -------------------------------------------------------------------------------
begin "flood: connections from 10.99.3.2 (limit 5)"
out=$(attack dsa3 --target 10.99.3.1 --timeout 5 flood --port 25 --count 12)
echo "$out"
if ! grep -q 'connection 6 timed out' <<<"$out"; then
  bad "expected the 6th connection to time out: $out"
elif ! got=$(wait_block 10.99.3.2 connections); then
  bad "$got"
else
  ok "$(grep -o '[0-9]* connections in [0-9.]*s, connection 6 timed out' <<<"$out"); $got"
fi

# ---- postfix: unknown recipients, from the journal ---------------------------------------
begin "postfix journal: unknown recipients from 10.99.1.2 (limit 3)"
ip netns exec dsa1 python3 - <<'EOF'
import smtplib
s = smtplib.SMTP("10.99.1.1", 25, timeout=60)
s.ehlo("harvester.example")
s.mail("probe@harvester.example")
for i in range(5):
    print("RCPT", i, s.rcpt(f"nobody{i}@dsvm"))
s.close()
EOF
if ! journal_mentions postfix@-.service "User unknown"; then
  bad "postfix@-.service's journal has no 'User unknown' line"
elif got=$(wait_block 10.99.1.2 failed_rcpts); then
  if [ "$(attack dsa1 --target 10.99.1.1 --timeout 5 probe --port 25)" = "attacker: connect to 10.99.1.1:25: timeout" ]; then
    ok "$got; the next connection is dropped"
  else
    bad "$got, but the next connection was not dropped"
  fi
else
  bad "$got"
fi

# ---- dovecot: IMAP login failures, from the journal --------------------------------------
begin "dovecot journal: IMAP login failures from 10.99.2.2 (limit 3)"
attack dsa2 --target 10.99.2.1 --timeout 5 imap-auth --count 6
if ! journal_mentions dovecot.service "auth failed"; then
  bad "dovecot.service's journal has no 'auth failed' line"
elif got=$(wait_block 10.99.2.2 auth_failures); then
  if attack dsa2 --target 10.99.2.1 --timeout 5 probe --port 143 --expect timeout >/dev/null; then
    ok "$got; the next connection is dropped"
  else
    bad "$got, but the next connection was not dropped"
  fi
else
  bad "$got"
fi
dynscreen status || true

# ---- remove, with the daemon stopped -----------------------------------------------------
begin "remove with the daemon stopped"
systemctl stop dynscreen
if [ -z "$(xdp_links)" ]; then
  bad "stopping the daemon removed XDP (it should stay enforcing)"
elif ! apt-get remove -y dynscreen > "$OUT/apt-remove-1.log" 2>&1; then
  bad "apt-get remove failed (apt-remove-1.log)"
elif why=$(screening_gone); then
  if [ -e /var/lib/dynscreen/blocks.dat ] && [ -e /etc/dynscreen/dynscreen.toml ]; then
    ok "no XDP, no pins; state and config kept"
  else
    bad "remove deleted the state or the config"
  fi
else
  bad "$why"
fi

# ---- reinstall, remove with the daemon running -------------------------------------------
begin "remove with the daemon running"
if ! apt-get install -y "/root/$(basename "$DEB")" > "$OUT/apt-install-2.log" 2>&1; then
  bad "reinstall failed (apt-install-2.log)"
elif ! systemctl start dynscreen || [ -z "$(xdp_links)" ]; then
  bad "the reinstalled service did not start screening"
else
  attached=$(xdp_links)
  if ! apt-get remove -y dynscreen > "$OUT/apt-remove-2.log" 2>&1; then
    bad "apt-get remove failed (apt-remove-2.log)"
  elif why=$(screening_gone); then
    if systemctl is-active -q dynscreen; then bad "the daemon still runs"; else ok "was on: $attached; now no XDP, no pins"; fi
  else
    bad "$why"
  fi
fi

# ---- purge -------------------------------------------------------------------------------
begin "purge"
if ! apt-get purge -y dynscreen > "$OUT/apt-purge.log" 2>&1; then
  bad "apt-get purge failed (apt-purge.log)"
elif [ -e /var/lib/dynscreen ] || [ -e /etc/dynscreen ]; then
  left=; for d in /var/lib/dynscreen /etc/dynscreen; do [ -e "$d" ] && left="$left $d"; done
  bad "left:$left"
elif ip link show | grep -q 'prog/xdp'; then
  bad "XDP is back"
else
  ok "/var/lib/dynscreen and /etc/dynscreen gone"
fi

for i in 1 2 3; do ip netns del "dsa$i" 2>/dev/null; ip link del "dsv$i" 2>/dev/null; done
finish
