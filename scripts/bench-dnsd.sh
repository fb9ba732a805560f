#!/usr/bin/env bash
# Edge's dnsd as the extra column of ../shared/bench/dns-peers.sh: imports the
# benchmark zone with `edgectl dns import` (the migration path), then serves
# it on 127.0.0.1:PORT, UDP and TCP, until stopped. One UDP socket by default,
# since the benchmark pins every server to one CPU (UDP_SOCKETS=N for more).
#
#   cargo build --release --bins
#   ../shared/bench/dns-peers.sh --extra-name edge-dnsd --extra-port 15310 \
#       --extra-cmd 'scripts/bench-dnsd.sh @ZONEFILE@ @PORT@'
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ZONEFILE="$1" PORT="$2"
EDGE="$ROOT/target/release/edge" EDGECTL="$ROOT/target/release/edgectl"
[[ -x "$EDGE" && -x "$EDGECTL" ]] || { echo "build first: cargo build --release --bins" >&2; exit 1; }
DIR=$(mktemp -d /tmp/bench-dnsd.XXXXXX)
pid=""
cleanup() { [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$DIR"; }
trap cleanup EXIT
trap 'exit 0' TERM INT
cat >"$DIR/edge.toml" <<EOF
[edge]
data_dir = "$DIR/var"
[store]
seed = ""
[admin]
listen = "127.0.0.1:0"
[log]
level = "warn"
[dns]
listen = ["127.0.0.1:$PORT"]
udp_sockets = ${UDP_SOCKETS:-1}
EOF
"$EDGE" --config "$DIR/edge.toml" &
pid=$!
for _ in $(seq 100); do [[ -S "$DIR/var/control.sock" ]] && break; sleep 0.1; done
"$EDGECTL" --config "$DIR/edge.toml" dns import "$ZONEFILE" >&2
wait "$pid"
