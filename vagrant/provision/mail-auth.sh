#!/usr/bin/env bash
# The mail servers' logins on a test gateway (as root; idempotent), shared by the Vagrant
# gateway (vagrant/provision/gateway.sh, ROOT=/) and make test-deb's VM image
# (scripts/test-deb.sh, ROOT = the image's root file system, before it first boots):
#   Postfix offers SMTP AUTH and has Dovecot check it, through Dovecot's SASL socket in
#   Postfix's private directory;
#   Dovecot allows plain-text logins: the attackers of the tests speak no TLS (a lab
#   setting: never do this on a real gateway).
# Postfix and Dovecot must be installed; neither is restarted here.
#
# Usage: mail-auth.sh [ROOT]
set -euo pipefail
ROOT=${1:-/}
in_root() { if [ "$ROOT" = / ]; then "$@"; else chroot "$ROOT" "$@"; fi; }

in_root postconf -e \
  "smtpd_sasl_type = dovecot" \
  "smtpd_sasl_path = private/auth" \
  "smtpd_sasl_auth_enable = yes"

cat > "${ROOT%/}/etc/dovecot/conf.d/99-dynscreen-lab.conf" <<'DOVE'
# dynscreen's test gateways (vagrant/provision/mail-auth.sh): plain-text logins allowed,
# and the SASL socket through which Postfix checks SMTP AUTH.
disable_plaintext_auth = no
auth_mechanisms = plain login
service auth {
  unix_listener /var/spool/postfix/private/auth {
    mode = 0660
    user = postfix
    group = postfix
  }
}
DOVE
