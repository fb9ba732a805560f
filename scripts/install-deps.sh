#!/usr/bin/env bash
# Installs the Debian packages Edge needs, only those missing (idempotent).
#   scripts/install-deps.sh run    what building and running needs
#   scripts/install-deps.sh test   that, plus the real servers and clients
#                                  the interop tests drive
set -euo pipefail

# protobuf-compiler + libprotobuf-dev: the etcd client's build runs protoc on
# etcd's .proto files, which import Google's well-known types.
run_pkgs=(build-essential pkg-config cmake curl ca-certificates protobuf-compiler libprotobuf-dev)
# prometheus: interop test of /metrics; util-linux: setpriv for the peer-uid
# test; procps: kill(1) for the signal tests; sqlite3: admins inspect the
# store with it (docs/routing-table.md); bind9-dnsutils (dig) and
# knot-dnsutils (kdig): dnsd's answers as clients see them; knot: a real
# secondary that transfers dnsd's zone; etcd-server and etcd-client (etcdctl):
# the 3-member cluster the multi-node tests start; openssh-server (two sshd
# backends), openssh-client (ssh, sftp, scp, ssh-keygen) and sshpass: the SSH
# forwarder's interop tests; passwd: useradd/chpasswd for their test user;
# openssl: certificates for the etcd TLS test and openssl s_client; the mail
# forwarders' interop tests: dovecot-imapd + dovecot-pop3d (IMAP/POP3
# backends), python3-aiosmtpd (SMTP backends), slapd + ldap-utils (the LDAP
# auth plug-in), swaks (an SMTP client) with libnet-ssleay-perl for its --tls;
# nginx-light: the HTTP proxy's origins; pebble (with pebble-challtestsrv
# for its DNS): the ACME test CA.
test_pkgs=(prometheus util-linux procps sqlite3 bind9-dnsutils knot-dnsutils knot etcd-server etcd-client
    openssh-server openssh-client sshpass passwd openssl dovecot-imapd dovecot-pop3d python3-aiosmtpd slapd
    ldap-utils swaks libnet-ssleay-perl nginx-light pebble)

# The test script runs clippy and rustfmt; a minimal rustup profile lacks them.
if [ "${1:-run}" = test ] && command -v rustup >/dev/null 2>&1; then
    for c in clippy rustfmt; do
        rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
    done
fi

want=("${run_pkgs[@]}")
[ "${1:-run}" = test ] && want+=("${test_pkgs[@]}")

missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages: ${missing[*]}; run as root or install them" >&2
    exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Servers the tests use (knot, prometheus, etcd, sshd) are started by the tests as their
# own processes; keep their packages from starting system services.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
