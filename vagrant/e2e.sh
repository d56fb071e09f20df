#!/usr/bin/env bash
# shellcheck disable=SC2317  # the scenario_* functions are called by name (see the loop)
# End-to-end scenarios across the two Vagrant VMs (run on the host, in vagrant/, after
# `vagrant up`). Each scenario attacks the gateway from the attacker VM, then checks on
# the gateway that `dynscreen status --json` shows the block with the expected reason,
# checks that the attacker's next connection times out (its packets are dropped by
# XDP), and unblocks it again so that the next scenario starts afresh.
#
#   smtp-auth   SMTP AUTH brute force on port 25       -> block "auth_failures" (from logs)
#   flood       connection flood on port 25            -> block "connections" (kernel)
#   imap-auth   IMAP LOGIN brute force on port 143     -> block "auth_failures" (from logs)
#
# Usage: ./e2e.sh [SCENARIO...]     (default: all three, in this order)
# Exit status: 0 when every scenario passed, 1 otherwise, 2 when the VMs are not ready.
set -euo pipefail
cd "$(dirname "$0")"
export VAGRANT_CHECKPOINT_DISABLE=1

GATEWAY_IP=${DYNSCREEN_GATEWAY_IP:-192.168.56.10}
ATTACKER_IP=${DYNSCREEN_ATTACKER_IP:-192.168.56.20}
BLOCK_WAIT=${E2E_BLOCK_WAIT:-60}     # seconds to wait for a block to show in status

on() { local vm=$1; shift; vagrant ssh "$vm" --no-tty -c "$*"; }
gw() { on gateway "sudo $*"; }
attack() { on attacker "python3 /vagrant/attack.py --target $GATEWAY_IP $*"; }
say() { echo "e2e: $*"; }

# The attacker's block in `dynscreen status --json`, as "reason minutes_left drops",
# or nothing. The JSON is parsed here, on the host, with python3 (jq need not exist).
block_of_attacker() {
  gw dynscreen status --json | python3 -c '
import json, sys
ip = sys.argv[1]
for b in json.load(sys.stdin)["blocks"]:
    if b["ip"] in (ip, ip + "/32"):
        print(b["reason"], round(b["minutes_left"], 1), b["drops"], b["source"])
' "$ATTACKER_IP"
}

unblock_attacker() {
  if [ -n "$(block_of_attacker)" ]; then gw dynscreen unblock "$ATTACKER_IP" >/dev/null; fi
}

# wait_block REASON: polls status until the attacker is blocked for REASON.
wait_block() {
  local want=$1 got deadline=$((SECONDS + BLOCK_WAIT))
  while :; do
    got=$(block_of_attacker)
    if [ -n "$got" ]; then
      say "status: $ATTACKER_IP blocked: reason, minutes left, drops, source = $got"
      [ "${got%% *}" = "$want" ] && return 0
      say "expected reason $want"; return 1
    fi
    [ "$SECONDS" -lt "$deadline" ] || { say "no block after ${BLOCK_WAIT}s"; return 1; }
    sleep 2
  done
}

# blocked_then_unblocked PORT REASON: the common end of every scenario.
blocked_then_unblocked() {
  local port=$1 reason=$2
  wait_block "$reason" || return 1
  attack probe --port "$port" --expect timeout || { say "the next connection was not dropped"; return 1; }
  gw dynscreen status   # the human view, for the record
  gw dynscreen unblock "$ATTACKER_IP" || return 1
  attack probe --port "$port" --expect open || { say "still dropped after unblock"; return 1; }
}

scenario_smtp_auth() {
  attack smtp-auth --count 10
  blocked_then_unblocked 25 auth_failures
}

scenario_flood() {
  attack flood --port 25 --count 40
  blocked_then_unblocked 25 connections
}

scenario_imap_auth() {
  attack imap-auth --count 10
  blocked_then_unblocked 143 auth_failures
}

# ---- preflight ------------------------------------------------------------------------------
for vm in gateway attacker; do
  vagrant status "$vm" --machine-readable | grep -q ",state,running" \
    || { say "$vm is not running: vagrant up"; exit 2; }
done
gw systemctl is-active --quiet dynscreen || { say "dynscreen is not active on the gateway"; exit 2; }
unblock_attacker
attack probe --port 25 --expect open || { say "the attacker cannot reach SMTP on $GATEWAY_IP"; exit 2; }

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(smtp-auth flood imap-auth)
results=(); failed=0
for s in "${scenarios[@]}"; do
  fn=scenario_${s//-/_}
  declare -F "$fn" >/dev/null || { say "unknown scenario $s"; exit 2; }
  say "=== $s"
  # (errexit does not apply inside an if: each step checks its own status)
  if "$fn"; then
    results+=("PASS  $s")
  else
    results+=("FAIL  $s"); failed=1
    unblock_attacker || true
  fi
done

echo
for r in "${results[@]}"; do say "$r"; done
exit $failed
