#!/usr/bin/env bash
# The HTTP proxy against nginx (proxy_pass, proxy_cache), HAProxy (plain,
# cache) and Varnish, in one run of ../shared/bench/http-peers.sh, with a
# release `edge` as the extra column: uncached proxying (/nocache/, no-store)
# and cache hits (/cache/, max-age=3600) for 1 KiB and 100 KiB over
# HTTP/1.1 keepalive, HTTP/2 over TLS, and new TLS handshakes per second.
# Edge gets the same treatment as the peers: one worker thread, pinned to
# the SUT cpu by the script, logging at warn, a default site for every Host
# proxying to the origin 127.0.0.1:18080, and a certificate of the kind
# the peers get (one self-signed leaf for localhost, ECDSA P-256 unless
# `--cert rsa`). Full handshakes go to a second HTTPS listener without
# session resumption (tls_listen_no_resumption), as the peers' full rows
# go to ports without tickets or session cache. The handshake rows ask for
# /hs, as for the peers, which answer it themselves with "ok": edge's site
# caches it (`default_ttl_secs`, the origin's /hs has no freshness of its
# own), so the origin answers it once.
#
# With --pingora-floor first, the extra column is a bare Pingora service
# instead of edge (`proxy/examples/pingora_floor.rs`): built as edge is
# (one worker thread, single-threaded runtime, mimalloc), with none of
# edge's code. It proxies /nocache/* to the origin and answers every other
# request itself with a fixed body of the asked size, looking nothing up:
# its rows bound what edge can reach on Pingora, uncached and on hits.
# HTTPS through Pingora's own rustls listener (HTTP/2 by ALPN), with the
# same certificate; it has no full-handshake port (docs/benchmarks.md,
# "Bare Pingora").
#
# Usage: scripts/bench-http.sh [--pingora-floor] [extra http-peers.sh options], e.g.
#   scripts/bench-http.sh --rounds 3 --duration 10
# Installs the peers and load generators when missing (as root). The edge's
# files live in a temporary directory, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
floor=0
if [[ "${1:-}" == --pingora-floor ]]; then floor=1; shift; fi
peers=../shared/bench/http-peers.sh
[ -x "$peers" ] || { echo "bench-http: $peers not found (the shared bench scripts)" >&2; exit 1; }
for pkg in nginx-light haproxy varnish wrk nghttp2-client; do
    dpkg -s "$pkg" >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y "$pkg" >/dev/null
done
if ((floor)); then
    cargo build --release --locked --example pingora_floor -q
else
    cargo build --release --locked --bins -q
fi
bin_dir="${CARGO_TARGET_DIR:-$PWD/target}/release"
dir=$(mktemp -d /tmp/edge-bench-http.XXXXXX)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/routes.json" <<JSON
{"comment": "bench: every Host to the origin", "ops": [
  {"op": "put", "entity": {"kind": "backend", "name": "origin", "addresses": ["127.0.0.1"]}},
  {"op": "put", "entity": {"kind": "site", "name": "bench", "hosts": ["localhost"],
    "backends": [{"backend": "origin", "port": 18080}],
    "policy": {"cache": {"default_ttl_secs": 3600}}}}
]}
JSON
# The certificate, made as http-peers.sh makes the peers'.
keyopt=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1)
prev=""
for a in "$@"; do
    [[ "$prev" == --cert && "$a" == rsa ]] && keyopt=(-newkey rsa:2048)
    prev="$a"
done
mkdir -p "$dir/certs"
openssl req -x509 "${keyopt[@]}" -nodes -days 7 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$dir/certs/localhost.key" -out "$dir/certs/localhost.crt" 2>/dev/null
cat > "$dir/edge.toml" <<TOML
[edge]
data_dir = "$dir/var"
[store]
seed = "$dir/routes.json"
[control]
socket = "$dir/var/control.sock"
[admin]
listen = "127.0.0.1:0"
[log]
level = "warn"
[http]
listen = ["127.0.0.1:18090"]
tls_listen = ["127.0.0.1:18490"]
tls_listen_no_resumption = ["127.0.0.1:18491"]
cert_dir = "$dir/certs"
threads = 1
default_site = "bench"
TOML
if ((floor)); then
    "$peers" --extra-name pingora-floor --extra-port 18090 --extra-tls-port 18490 \
        --extra-cmd "$bin_dir/examples/pingora_floor --origin 127.0.0.1:18080 127.0.0.1:18090 127.0.0.1:18490 $dir/certs/localhost.crt $dir/certs/localhost.key" "$@"
else
    "$peers" --extra-name edge --extra-port 18090 --extra-tls-port 18490 --extra-hs-full-port 18491 \
        --extra-cmd "$bin_dir/edge --config $dir/edge.toml" "$@"
fi
