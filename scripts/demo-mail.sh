#!/usr/bin/env bash
# Two demo mail backends for the README tour, as root: for the demo routes'
# backends mosh12 (127.0.0.12) and mosh40 (127.0.0.40), each a Dovecot (IMAP
# on 1430, POP3 on 1100) and an aiosmtpd SMTP server (submission with AUTH on
# 5870, MX on 2500), on the ports config/edge.toml's [mail.upstream] names.
# They are our own processes with configs under var/demo-mail/, never system
# services. Dovecot trusts 127.0.0.0/8 for the client address (IMAP ID);
# the SMTP servers record each message, with its XCLIENT address, as JSON in
# var/demo-mail/<backend>/smtp-out/.
#
# The demo login is the table's mail_login `alice@alice.test`, password
# `alice-demo`, known to both backends (as after a copy of her mailbox).
#
#   scripts/demo-mail.sh         start them
#   scripts/demo-mail.sh stop    stop them (by the pids they wrote)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$PWD/var/demo-mail"

if [ "${1:-start}" = stop ]; then
    for b in mosh12 mosh40; do
        for pid in "$dir/$b/dovecot.pid" "$dir/$b/smtp.pid"; do
            [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null && echo "stopped $b ($(basename "$pid" .pid))"
            rm -f "$pid"
        done
    done
    exit 0
fi

[ "$(id -u)" -eq 0 ] || { echo "demo-mail: run as root (Dovecot starts as root and drops privileges)" >&2; exit 1; }
scripts/install-deps.sh test
for pair in mosh12:127.0.0.12 mosh40:127.0.0.40; do
    b=${pair%%:*}
    ip=${pair#*:}
    d="$dir/$b"
    mkdir -p "$d/run" "$d/state" "$d/mail" "$d/smtp-out"
    chmod 755 "$dir" "$d"
    chmod 777 "$d/mail"
    echo 'alice@alice.test:{PLAIN}alice-demo' >"$d/passwd"
    [ -f "$d/key.pem" ] || openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=$b" \
        -keyout "$d/key.pem" -out "$d/cert.pem" 2>/dev/null
    cat >"$d/dovecot.conf" <<EOF
base_dir = $d/run
state_dir = $d/state
instance_name = edge-demo-$b
log_path = $d/dovecot.log
protocols = imap pop3
listen = $ip
ssl = yes
ssl_cert = <$d/cert.pem
ssl_key = <$d/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
login_trusted_networks = 127.0.0.0/8
login_greeting = Dovecot on $b ready.
mail_location = maildir:$d/mail/%u
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $d/passwd
}
userdb {
  driver = static
  args = uid=65534 gid=65534 home=$d/mail/%u
}
service imap-login {
  inet_listener imap {
    port = 1430
  }
  inet_listener imaps {
    port = 0
  }
}
service pop3-login {
  inet_listener pop3 {
    port = 1100
  }
  inet_listener pop3s {
    port = 0
  }
}
EOF
    if [ -f "$d/dovecot.pid" ] && kill -0 "$(cat "$d/dovecot.pid")" 2>/dev/null; then
        echo "$b: already running"
        continue
    fi
    dovecot -F -c "$d/dovecot.conf" </dev/null >/dev/null 2>&1 &
    echo $! >"$d/dovecot.pid"
    # The tests' SMTP backend (aiosmtpd), told to run until killed.
    SMTP_BACKEND_FOREVER=1 /usr/bin/python3 -W ignore proxy/tests/support/smtp_backend.py "$b" "$ip" 5870 2500 \
        "$d/smtp-out" '{"alice@alice.test": "alice-demo", "alice": "alice-demo"}' </dev/null >"$d/smtp.log" 2>&1 &
    echo $! >"$d/smtp.pid"
    echo "$b: Dovecot on $ip:1430 (IMAP) and :1100 (POP3), SMTP on :5870 (submission) and :2500 (MX); files in $d"
done
echo "through the edge: IMAP 127.0.0.1:1143 (STARTTLS) or :1993, user alice@alice.test, password alice-demo"
