#!/usr/bin/env bash
# Provisions the gateway VM (run as root by Vagrant's shell provisioner; idempotent):
#   Postfix (SMTP AUTH through Dovecot), Dovecot (IMAP, POP3), a mail user,
#   dynscreen from the project's Debian package (`make deb` on the host; the Vagrantfile
#   syncs it to /opt/dynscreen-deb and names it in DYNSCREEN_DEB), installed with apt,
#   and a config that screens the private-network interface; the package's systemd unit
#   runs the daemon, which reads the mail servers' journal.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

GATEWAY_IP=${GATEWAY_IP:-192.168.56.10}
REPO=${DYNSCREEN_REPO:-/opt/dynscreen}
HERE=$REPO/vagrant
DEB=${DYNSCREEN_DEB:-}
MAIL_USER=alice
MAIL_PASS=${MAIL_PASS:-Correct-Horse-42}
say() { echo "gateway: $*"; }

if [ -z "$DEB" ] || [ ! -f "$DEB" ]; then
  echo "gateway: no dynscreen package${DEB:+ at $DEB}: run 'make deb' on the host," \
       "then 'vagrant rsync gateway && vagrant provision gateway'" >&2
  exit 1
fi

# ---- mail servers ------------------------------------------------------------------------
debconf-set-selections <<DEB
postfix postfix/main_mailer_type select Internet Site
postfix postfix/mailname string gateway.example.test
DEB
# Only what is missing (the debian-12-dynscreen box holds them all: no network needed).
pkgs=(postfix dovecot-imapd dovecot-pop3d swaks)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Installed before without a configuration (as dynscreen's own setup does): make one.
[ -e /etc/postfix/main.cf ] || dpkg-reconfigure -f noninteractive postfix >/dev/null 2>&1

# Postfix: SMTP AUTH through Dovecot and Dovecot's plain-text logins (shared with
# make test-deb's VM: provision/mail-auth.sh).
bash "$HERE/provision/mail-auth.sh"
# The lab's own: AUTH offered on port 25 without TLS too, so that the attacker's brute
# force needs no TLS (a lab: never do this on a real gateway); no reverse DNS lookups of
# clients (the lab has no DNS for them: each would stall).
postconf -e \
  "myhostname = gateway.example.test" \
  "mydestination = \$myhostname, example.test, localhost" \
  "inet_interfaces = all" \
  "inet_protocols = ipv4" \
  "smtpd_tls_auth_only = no" \
  "smtpd_peername_lookup = no" \
  "smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated defer_unauth_destination"

# The mailbox the attacker tries to break into (system user; Dovecot checks it with PAM).
id "$MAIL_USER" >/dev/null 2>&1 || useradd --create-home --shell /usr/sbin/nologin "$MAIL_USER"
echo "$MAIL_USER:$MAIL_PASS" | chpasswd

systemctl enable dovecot postfix >/dev/null 2>&1
systemctl restart dovecot postfix

# ---- dynscreen -----------------------------------------------------------------------------
say "apt-get install $DEB"
# Its dependencies are in the debian-12-dynscreen box already: apt downloads nothing.
# --reinstall: a package rebuilt under the same version replaces the installed one;
# confold: the config written below stays.
apt-get install -y -qq --no-install-recommends --reinstall \
  -o Dpkg::Options::=--force-confold "$DEB" >/dev/null
# A VM provisioned before from a checkout (make setup): its unit and command go.
rm -f /etc/systemd/system/dynscreen.service /usr/local/bin/dynscreen
[ "$(command -v dynscreen)" = /usr/sbin/dynscreen ] \
  || { echo "gateway: dynscreen is $(command -v dynscreen), not the package's /usr/sbin/dynscreen" >&2; exit 1; }

# The interface that holds the private-network address is the one screened; the
# management interface (Vagrant's NAT / libvirt network, vagrant ssh) is not.
iface=$(ip -o -4 addr show | awk -v ip="$GATEWAY_IP" '{split($4, a, "/"); if (a[1] == ip) {print $2; exit}}')
[ -n "$iface" ] || { echo "gateway: no interface holds $GATEWAY_IP" >&2; exit 1; }
say "screening $iface ($GATEWAY_IP)"
install -d -m 0755 /etc/dynscreen
sed "s/@IFACE@/$iface/" "$HERE/gateway.toml" > /etc/dynscreen/dynscreen.toml.new
dynscreen check-config /etc/dynscreen/dynscreen.toml.new
mv /etc/dynscreen/dynscreen.toml.new /etc/dynscreen/dynscreen.toml

# Under software emulation (qemu without KVM: systemd-detect-virt says "qemu") clang's
# compile of the BPF program at each start takes minutes, not the seconds the unit's
# TimeoutStartSec allows.
dropin=/etc/systemd/system/dynscreen.service.d/emulated.conf
if [ "$(systemd-detect-virt 2>/dev/null || true)" = qemu ]; then
  say "emulated CPU (no KVM): allowing dynscreen 15 minutes to start"
  install -d -m 0755 "${dropin%/*}"
  printf '# provision/gateway.sh: emulated CPU (TCG), BCC compiles slowly\n[Service]\nTimeoutStartSec=900\n' \
    > "$dropin"
else
  rm -f "$dropin"
fi
systemctl daemon-reload
systemctl enable dynscreen >/dev/null 2>&1
say "starting dynscreen (BCC compiles the program: up to a minute)"
systemctl restart dynscreen
systemctl --no-pager --lines=0 status dynscreen
unit=$(systemctl show -P FragmentPath dynscreen)
case $unit in
  /lib/systemd/system/dynscreen.service|/usr/lib/systemd/system/dynscreen.service) ;;
  *) echo "gateway: dynscreen runs from $unit, not the package's unit" >&2; exit 1 ;;
esac
dynscreen status
say "ready: Postfix and Dovecot on $GATEWAY_IP, screened by dynscreen; mail user $MAIL_USER"
