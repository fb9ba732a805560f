#!/usr/bin/env bash
# The SSH forwarder against a direct connection, side by side in one run, as
# root: one OpenSSH server (our own `sshd -D`, on 127.0.0.21) as the backend,
# a release `edge` in front of it, and the same clients both ways.
#
#   - bulk: `sftp -b` put + get of a SIZE MiB file (default 256), in
#     /dev/shm, ROUNDS times each way (default 3), best time kept;
#   - logins: LOGINS password logins running `true` (default 200),
#     CONCURRENCY at a time (default 4), per second.
# Clients use curve25519-sha256 key exchange both ways (KEX=default: not).
#
# Prints each figure and the edge/direct ratio. Everything it starts is
# stopped by pid at the end. Usage: scripts/bench-ssh.sh [SIZE] [ROUNDS] [LOGINS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-256}
rounds=${2:-3}
logins=${3:-200}
conc=${4:-4}
[ "$(id -u)" -eq 0 ] || { echo "bench-ssh: run as root (sshd, a test user)" >&2; exit 1; }
scripts/install-deps.sh test
cargo build --release --locked --bins -q

user=edgetest
pass=edge-test-password-1
id "$user" >/dev/null 2>&1 || useradd --no-create-home --home-dir /tmp --shell /bin/sh "$user"
echo "$user:$pass" | chpasswd
mkdir -p /run/sshd

dir=$(mktemp -d /dev/shm/edge-bench-ssh.XXXXXX)
chmod 755 "$dir"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port)
edge_port=$(free_port)

cat >"$dir/edge.toml" <<EOF
[edge]
data_dir = "$dir/var"
[store]
seed = ""
[control]
socket = "$dir/var/control.sock"
[admin]
listen = "127.0.0.1:0"
[log]
level = "warn"
[ssh]
listen = ["127.0.0.1:$edge_port"]
upstream_port = $up
max_connections_per_ip = 1000
max_failed_logins_per_ip_per_minute = 100000
EOF
target/release/edge --config "$dir/edge.toml" &
pids+=($!)
for _ in $(seq 100); do [ -S "$dir/var/control.sock" ] && break; sleep 0.1; done
target/release/edgectl --config "$dir/edge.toml" apply /dev/stdin >/dev/null <<EOF
{"ops": [
  {"op": "put", "entity": {"kind": "backend", "name": "b1", "addresses": ["127.0.0.21"]}},
  {"op": "put", "entity": {"kind": "sftp_login", "user": "$user", "backend": "b1"}}
]}
EOF

mkdir -p "$dir/b1/files"
chown "$user:" "$dir/b1/files"
ssh-keygen -q -t ed25519 -N '' -f "$dir/b1/host_key"
cat >"$dir/b1/sshd_config" <<EOF
Port $up
ListenAddress 127.0.0.21
HostKey $dir/b1/host_key
PidFile $dir/b1/sshd.pid
UsePAM no
PasswordAuthentication yes
KbdInteractiveAuthentication no
TrustedUserCAKeys $dir/var/ssh/user_ca.pub
AuthorizedKeysFile none
StrictModes no
MaxStartups 200:30:400
Subsystem sftp internal-sftp -d $dir/b1/files
EOF
/usr/sbin/sshd -D -f "$dir/b1/sshd_config" -E "$dir/b1/sshd.log" &
pids+=($!)
sleep 0.5

# The same key exchange both ways: OpenSSH 9 prefers sntrup761x25519, which
# russh does not offer, so through the edge both hops would run the cheaper
# curve25519 and make the edge look faster than direct. KEX=default keeps
# each side's own preference instead.
kex=(-o KexAlgorithms=curve25519-sha256)
[ "${KEX:-}" = default ] && kex=()
opts=(-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
      -o PubkeyAuthentication=no -o PreferredAuthentications=password -o BatchMode=no "${kex[@]}")
dd if=/dev/urandom of="$dir/big.bin" bs=1M count="$size" status=none
printf 'put %s big.bin\nget big.bin %s/back.bin\n' "$dir/big.bin" "$dir" >"$dir/batch"

bulk() { # host port -> best seconds for put+get
    local best=999999
    for _ in $(seq "$rounds"); do
        local t0 t1
        t0=$(date +%s.%N)
        sshpass -p "$pass" sftp "${opts[@]}" -P "$2" -b "$dir/batch" "$user@$1" >/dev/null
        t1=$(date +%s.%N)
        cmp -s "$dir/big.bin" "$dir/back.bin" || { echo "bench-ssh: the copy differs" >&2; exit 1; }
        best=$(python3 -c "print(min($best, $t1 - $t0))")
    done
    echo "$best"
}

login_rate() { # host port -> logins per second
    local t0 t1
    t0=$(date +%s.%N)
    seq "$logins" | xargs -P "$conc" -I{} sshpass -p "$pass" ssh "${opts[@]}" -p "$2" "$user@$1" true
    t1=$(date +%s.%N)
    python3 -c "print($logins / ($t1 - $t0))"
}

echo "bulk: ${size} MiB up + ${size} MiB down with sftp, best of $rounds"
direct=$(bulk 127.0.0.21 "$up")
edge=$(bulk 127.0.0.1 "$edge_port")
python3 - "$size" "$direct" "$edge" <<'EOF'
import sys
size, d, e = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print(f"  direct to sshd: {d:.2f} s = {2*size/d:.0f} MiB/s")
print(f"  through edge:   {e:.2f} s = {2*size/e:.0f} MiB/s")
print(f"  edge/direct throughput: {d/e:.2f}")
EOF
echo "logins: $logins password logins running 'true', $conc at a time"
direct=$(login_rate 127.0.0.21 "$up")
edge=$(login_rate 127.0.0.1 "$edge_port")
python3 - "$direct" "$edge" <<'EOF'
import sys
d, e = float(sys.argv[1]), float(sys.argv[2])
print(f"  direct to sshd: {d:.1f} logins/s")
print(f"  through edge:   {e:.1f} logins/s")
print(f"  edge/direct logins: {e/d:.2f}")
EOF
