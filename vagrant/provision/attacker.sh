#!/usr/bin/env bash
# Provisions the attacker VM (run as root by Vagrant; idempotent): the tools of e2e.sh.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends python3 swaks netcat-openbsd >/dev/null
echo "attacker: ready; try: python3 /vagrant/attack.py --target ${GATEWAY_IP:-192.168.56.10} probe"
