#!/usr/bin/env bash
# Provisions the attacker VM (run as root by Vagrant; idempotent): the tools of e2e.sh.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
# Only what is missing (the debian-12-dynscreen box holds them all: no network needed).
pkgs=(python3 swaks netcat-openbsd)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "attacker: ready; try: python3 /vagrant/attack.py --target ${GATEWAY_IP:-192.168.56.10} probe"
