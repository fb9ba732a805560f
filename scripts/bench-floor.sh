#!/usr/bin/env bash
# Pingora's floor in the HTTP peer comparison: one run of
# ../shared/bench/http-peers.sh (nginx, HAProxy, Varnish) with a bare
# Pingora service as the extra column instead of edge
# (`proxy/examples/pingora_floor.rs`): built as edge is (one worker
# thread, single-threaded runtime, mimalloc), with none of edge's code. It
# proxies /nocache/* to the origin and answers every other request itself
# with a fixed body of the requested size, as cheaply as Pingora can (no
# cache lookup): its rows bound what edge can reach on Pingora, uncached
# and on cache hits. TLS through Pingora's own rustls listener (HTTP/2 by
# ALPN), with the certificate the peers get; no full-handshake port.
#
# Usage: scripts/bench-floor.sh [http-peers.sh options], e.g.
#   scripts/bench-floor.sh --rounds 3 --duration 5
# Installs the peers and load generators when missing (as root). Compare
# with scripts/bench-http.sh (edge as the extra column); docs/benchmarks.md,
# "Bare Pingora".
set -euo pipefail
cd "$(dirname "$0")/.."
peers=../shared/bench/http-peers.sh
[ -x "$peers" ] || { echo "bench-floor: $peers not found (the shared bench scripts)" >&2; exit 1; }
for pkg in nginx-light haproxy varnish wrk nghttp2-client; do
    dpkg -s "$pkg" >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y "$pkg" >/dev/null
done
cargo build --release --locked --example pingora_floor -q
bin="${CARGO_TARGET_DIR:-$PWD/target}/release/examples/pingora_floor"
dir=$(mktemp -d /tmp/edge-bench-floor.XXXXXX)
trap 'rm -rf "$dir"' EXIT
keyopt=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1)
prev=""
for a in "$@"; do
    [[ "$prev" == --cert && "$a" == rsa ]] && keyopt=(-newkey rsa:2048)
    prev="$a"
done
openssl req -x509 "${keyopt[@]}" -nodes -days 7 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$dir/localhost.key" -out "$dir/localhost.crt" 2>/dev/null
"$peers" --extra-name pingora-floor --extra-port 18090 --extra-tls-port 18490 \
    --extra-cmd "$bin --origin 127.0.0.1:18080 127.0.0.1:18090 127.0.0.1:18490 $dir/localhost.crt $dir/localhost.key" "$@"
