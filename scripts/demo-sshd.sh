#!/usr/bin/env bash
# Two demo SSH backends for the README tour, as root: OpenSSH servers for
# the demo routes' backends mosh12 (127.0.0.12) and mosh40 (127.0.0.40), on
# port 2200 (config/edge.toml's [ssh] upstream_port), each our own
# `sshd -D` process with a temporary host key. They trust the edge's user CA
# (var/ssh/user_ca.pub, made by the edge's first start) and say which
# backend they are: `echo $BACKEND` in a session, and the sftp start
# directory var/demo-sshd/<backend>/files.
#
# The demo login is the table's sftp_login `alice`: a system user `alice`
# with the password `alice-demo` is created if missing.
#
#   scripts/demo-sshd.sh         start both (edge must have started once)
#   scripts/demo-sshd.sh stop    stop them (by the pids they wrote)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$PWD/var/demo-sshd"

if [ "${1:-start}" = stop ]; then
    for b in mosh12 mosh40; do
        pid="$dir/$b/sshd.pid"
        [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null && echo "stopped $b"
        rm -f "$pid"
    done
    exit 0
fi

[ "$(id -u)" -eq 0 ] || { echo "demo-sshd: run as root (it starts sshd and creates the user alice)" >&2; exit 1; }
scripts/install-deps.sh test
ca="$PWD/var/ssh/user_ca.pub"
[ -f "$ca" ] || { echo "demo-sshd: $ca is missing: start edge once first (scripts/run.sh)" >&2; exit 1; }
id alice >/dev/null 2>&1 || useradd --no-create-home --home-dir /tmp --shell /bin/sh alice
echo 'alice:alice-demo' | chpasswd
mkdir -p /run/sshd
for pair in mosh12:127.0.0.12 mosh40:127.0.0.40; do
    b=${pair%%:*}
    ip=${pair#*:}
    d="$dir/$b"
    mkdir -p "$d/files"
    chmod 755 "$dir" "$d"
    chown alice: "$d/files"
    [ -f "$d/host_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$d/host_key"
    cat >"$d/sshd_config" <<EOF
Port 2200
ListenAddress $ip
HostKey $d/host_key
PidFile $d/sshd.pid
UsePAM no
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication yes
TrustedUserCAKeys $ca
AuthorizedKeysFile none
StrictModes no
PermitRootLogin no
Subsystem sftp internal-sftp -d $d/files
SetEnv BACKEND=$b
EOF
    if [ -f "$d/sshd.pid" ] && kill -0 "$(cat "$d/sshd.pid")" 2>/dev/null; then
        echo "$b: already running (pid $(cat "$d/sshd.pid"))"
        continue
    fi
    /usr/sbin/sshd -f "$d/sshd_config" -E "$d/sshd.log"
    echo "$b: sshd on $ip:2200, files in $d/files, log $d/sshd.log"
done
echo "log in through the edge: sftp -P 2222 alice@127.0.0.1   (password alice-demo)"
