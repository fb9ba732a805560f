#!/usr/bin/env bash
# The IMAP forwarder against a direct connection and against nginx's mail
# proxy, side by side in one run, as root. One Dovecot (our own process, on
# 127.0.0.61) is the backend; a release `edge` and an nginx (`mail` module,
# its auth_http answered by the same nginx) stand in front of it. All three
# are reached over implicit TLS (993-style) with the same certificate, so
# each path does one TLS handshake per session; both proxies speak plain
# IMAP to Dovecot, as a proxy inside the co-op's network would. A fourth
# row, `plain`, goes straight to Dovecot without TLS: the backend's own
# ceiling, for reference (Dovecot terminates TLS in its login process and
# relays to the imap process, so TLS costs it an extra hop).
#
#   - sessions: SESSIONS sessions (default 1000), CONCURRENCY at a time
#     (default 8, Python processes): TLS connect, LOGIN, SELECT INBOX,
#     FETCH 1 BODY.PEEK[] (a 4 KiB message), LOGOUT. Sessions per second,
#     session latency p50/p99, and each proxy's CPU time per session;
#   - bulk: one session FETCHes BULK MiB (default 64, in 8 messages).
#
# ROUNDS rounds (default 3); the order of the three targets rotates from
# round to round; medians are printed, then the ratios. Everything it starts
# is stopped by pid at the end; its files live in /dev/shm and are removed.
#
# Usage: scripts/bench-mail.sh [SESSIONS] [CONCURRENCY] [ROUNDS] [BULK_MIB]
set -euo pipefail
cd "$(dirname "$0")/.."
sessions=${1:-1000}
conc=${2:-8}
rounds=${3:-3}
bulk_mib=${4:-64}
[ "$(id -u)" -eq 0 ] || { echo "bench-mail: run as root (Dovecot starts as root and drops privileges)" >&2; exit 1; }
scripts/install-deps.sh test
for pkg in nginx-light libnginx-mod-mail; do
    dpkg -s "$pkg" >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y "$pkg" >/dev/null
done
cargo build --release --locked --bins -q

dir=$(mktemp -d /dev/shm/edge-bench-mail.XXXXXX)
chmod 755 "$dir"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$dir/dovecot/run/master.pid" ] && kill "$(cat "$dir/dovecot/run/master.pid")" 2>/dev/null
    sleep 0.3
    rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dove_plain=$(free_port)
dove_tls=$(free_port)
edge_port=$(free_port)
nginx_port=$(free_port)
auth_port=$(free_port)
backend=127.0.0.61
user=bench
pass=bench-password-1

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=mail.bench" \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
chmod 644 "$dir/key.pem"

# Dovecot: plain IMAP for the proxies, implicit TLS for the direct path.
d="$dir/dovecot"
mkdir -p "$d/run" "$d/state" "$d/mail/$user/cur" "$d/mail/$user/new" "$d/mail/$user/tmp"
echo "$user:{PLAIN}$pass" >"$d/passwd"
cat >"$d/dovecot.conf" <<EOF
base_dir = $d/run
state_dir = $d/state
instance_name = edge-bench-mail
log_path = $d/dovecot.log
protocols = imap
listen = $backend
ssl = yes
ssl_cert = <$dir/cert.pem
ssl_key = <$dir/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_cache_size = 1M
login_trusted_networks = 127.0.0.0/8
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
    port = $dove_plain
  }
  inet_listener imaps {
    port = $dove_tls
    ssl = yes
  }
  service_count = 0
  process_min_avail = 2
}
service imap {
  process_limit = 1024
}
default_client_limit = 4096
EOF
python3 - "$d/mail/$user/cur" "$bulk_mib" <<'EOF'
import base64, os, sys
cur, bulk = sys.argv[1], int(sys.argv[2])
def message(n, size):
    head = f"From: a@bench\r\nTo: bench@bench\r\nSubject: m{n}\r\nMessage-ID: <{n}@bench>\r\n\r\n"
    body, line = [], base64.b64encode(os.urandom(57)).decode() + "\r\n"
    while len(head) + len(line) * len(body) < size:
        body.append(line)
    return (head + "".join(body)).encode()
with open(f"{cur}/1.M1.bench:2,S", "wb") as f:
    f.write(message(1, 4096))
for n in range(2, 10):
    with open(f"{cur}/{n}.M{n}.bench:2,S", "wb") as f:
        f.write(message(n, bulk * 1024 * 1024 // 8))
EOF
chown -R 65534:65534 "$d/mail"
/usr/sbin/dovecot -F -c "$d/dovecot.conf" &
pids+=($!)

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
[mail]
imaps = ["127.0.0.1:$edge_port"]
cert_file = "$dir/cert.pem"
key_file = "$dir/key.pem"
max_connections_per_ip = 10000
max_failed_logins_per_ip_per_minute = 1000000
[mail.upstream]
imap_port = $dove_plain
EOF
target/release/edge --config "$dir/edge.toml" &
edge_pid=$!
pids+=("$edge_pid")
for _ in $(seq 100); do [ -S "$dir/var/control.sock" ] && break; sleep 0.1; done
target/release/edgectl --config "$dir/edge.toml" apply /dev/stdin >/dev/null <<EOF
{"ops": [
  {"op": "put", "entity": {"kind": "backend", "name": "b1", "addresses": ["$backend"]}},
  {"op": "put", "entity": {"kind": "mail_login", "user": "$user", "backend": "b1"}}
]}
EOF

mkdir -p "$dir/nginx"
cat >"$dir/nginx/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_mail_module.so;
worker_processes auto;
daemon off;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $dir/nginx/body;
    proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fastcgi;
    uwsgi_temp_path $dir/nginx/uwsgi;
    scgi_temp_path $dir/nginx/scgi;
    server {
        listen 127.0.0.1:$auth_port;
        location = /auth {
            add_header Auth-Status OK;
            add_header Auth-Server $backend;
            add_header Auth-Port $dove_plain;
            return 204;
        }
    }
}
mail {
    server_name mail.bench;
    auth_http 127.0.0.1:$auth_port/auth;
    proxy_pass_error_message on;
    imap_auth plain login;
    ssl_certificate $dir/cert.pem;
    ssl_certificate_key $dir/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    server {
        listen 127.0.0.1:$nginx_port ssl;
        protocol imap;
    }
}
EOF
nginx -e "$dir/nginx/error.log" -p "$dir/nginx" -c "$dir/nginx/nginx.conf" &
nginx_pid=$!
pids+=("$nginx_pid")

cat >"$dir/client.py" <<'EOF'
"""One measurement: `sessions HOST PORT USER PASS N CONC` or `bulk HOST PORT
USER PASS`; a negative PORT means plain IMAP (no TLS) on -PORT."""
import imaplib, json, multiprocessing, ssl, sys, time

USER, PASSWORD = sys.argv[4], sys.argv[5]
CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE

def login(host, port):
    if port < 0:
        m = imaplib.IMAP4(host, -port, timeout=30)
    else:
        m = imaplib.IMAP4_SSL(host, port, ssl_context=CTX, timeout=30)
    m.login(USER, PASSWORD)
    typ, _ = m.select("INBOX", readonly=True)
    assert typ == "OK"
    return m

def worker(args):
    host, port, n = args
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        m = login(host, port)
        typ, data = m.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK" and len(data[0][1]) >= 4096, data[:1]
        m.logout()
        times.append(time.perf_counter() - t0)
    return times

def main():
    kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "sessions":
        n, conc = int(sys.argv[6]), int(sys.argv[7])
        shares = [n // conc + (1 if i < n % conc else 0) for i in range(conc)]
        with multiprocessing.Pool(conc) as pool:
            t0 = time.perf_counter()
            results = pool.map(worker, [(host, port, s) for s in shares])
            wall = time.perf_counter() - t0
        times = sorted(t for r in results for t in r)
        pct = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1000
        print(json.dumps({"rate": len(times) / wall, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "n": len(times)}))
    else:
        m = login(host, port)
        t0 = time.perf_counter()
        typ, data = m.fetch("2:*", "(BODY.PEEK[])")
        wall = time.perf_counter() - t0
        assert typ == "OK"
        size = sum(len(d[1]) for d in data if isinstance(d, tuple))
        m.logout()
        print(json.dumps({"mib_s": size / wall / 1048576, "mib": size / 1048576}))

main()
EOF

# Every target must answer a login before measuring starts.
for target in "$backend:$dove_tls" "127.0.0.1:$edge_port" "127.0.0.1:$nginx_port" "$backend:-$dove_plain"; do
    ok=
    for _ in $(seq 100); do
        if python3 "$dir/client.py" sessions "${target%:*}" "${target#*:}" "$user" "$pass" 1 1 >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.2
    done
    [ -n "$ok" ] || { echo "bench-mail: no login through $target" >&2; tail -5 "$d/dovecot.log" "$dir/nginx/error.log" >&2; exit 1; }
done

if [ -n "${BENCH_MAIL_PAUSE:-}" ]; then # look around before measuring
    echo "bench-mail: direct $backend:$dove_tls, edge 127.0.0.1:$edge_port, nginx 127.0.0.1:$nginx_port; files in $dir; pausing ${BENCH_MAIL_PAUSE}s" >&2
    sleep "$BENCH_MAIL_PAUSE" || true
fi

cpu_ticks() { # pid -> utime+stime of it and its children processes, in clock ticks
    local total=0 p
    for p in $1 $(pgrep -P "$1" || true); do
        [ -r "/proc/$p/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$total"
}

results="$dir/results.tsv"
: >"$results"
targets=(direct edge nginx plain)
echo "bench-mail: $sessions sessions x $conc, ${bulk_mib} MiB bulk, $rounds rounds" >&2
# direct: Dovecot's own implicit TLS; edge, nginx: TLS at the proxy, plain
# IMAP behind; plain: Dovecot without TLS (reference).
for r in $(seq "$rounds"); do
    for i in 0 1 2 3; do
        t=${targets[$(((i + r) % 4))]}
        case $t in
            direct) host=$backend port=$dove_tls pid= ;;
            edge) host=127.0.0.1 port=$edge_port pid=$edge_pid ;;
            nginx) host=127.0.0.1 port=$nginx_port pid=$nginx_pid ;;
            plain) host=$backend port=-$dove_plain pid= ;;
        esac
        before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
        s=$(python3 "$dir/client.py" sessions "$host" "$port" "$user" "$pass" "$sessions" "$conc")
        after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
        b=$(python3 "$dir/client.py" bulk "$host" "$port" "$user" "$pass")
        printf '%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "$s" "$b" "$((after - before))" >>"$results"
        echo "  round $r $t: $s $b" >&2
    done
done

python3 - "$results" "$sessions" "$(getconf CLK_TCK)" <<'EOF'
import json, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
n, tck = int(sys.argv[2]), int(sys.argv[3])
by = {}
for r, t, s, b, ticks in rows:
    s, b = json.loads(s), json.loads(b)
    d = by.setdefault(t, {"rate": [], "p50": [], "p99": [], "bulk": [], "cpu": []})
    d["rate"].append(s["rate"]); d["p50"].append(s["p50_ms"]); d["p99"].append(s["p99_ms"])
    d["bulk"].append(b["mib_s"]); d["cpu"].append(int(ticks) / tck / n * 1e6)
med = {t: {k: statistics.median(v) for k, v in d.items()} for t, d in by.items()}
print("| target | sessions/s | p50 ms | p99 ms | bulk FETCH MiB/s | proxy CPU µs/session |")
print("| --- | --- | --- | --- | --- | --- |")
for t in ("direct", "edge", "nginx", "plain"):
    m = med[t]
    cpu = "—" if t in ("direct", "plain") else f"{m['cpu']:.0f}"
    print(f"| {t} | {m['rate']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['bulk']:.0f} | {cpu} |")
d, e, x = med["direct"], med["edge"], med["nginx"]
print()
print(f"edge/direct: sessions {e['rate']/d['rate']:.2f}, bulk {e['bulk']/d['bulk']:.2f}")
print(f"nginx/direct: sessions {x['rate']/d['rate']:.2f}, bulk {x['bulk']/d['bulk']:.2f}")
print(f"edge/nginx: sessions {e['rate']/x['rate']:.2f}, bulk {e['bulk']/x['bulk']:.2f}, CPU per session {e['cpu']/x['cpu']:.2f}")
EOF
