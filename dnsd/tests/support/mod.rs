//! Test support: dnsd over an in-memory table on an ephemeral loopback port,
//! served from a background runtime, and `dig`/`kdig` runners.
#![allow(dead_code)] // each test file uses part of it

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use dnsd::{DnsConfig, DnsMetrics, Dnsd};
use routing_table::{MemoryStore, Table, TableMetrics, Transaction, Who};
use tokio::sync::watch;

/// Backends, a member's databases, extra names: what the tests query.
pub const ZONE_DATA: &str = r#"{"ops":[
  {"op":"put","entity":{"kind":"backend","name":"mosh12","addresses":["10.0.0.12","fd00::12"]}},
  {"op":"put","entity":{"kind":"backend","name":"mosh40","addresses":["10.0.0.40"]}},
  {"op":"put","entity":{"kind":"member","name":"alice"}},
  {"op":"put","entity":{"kind":"database","name":"alice_wp","member":"alice","server":"mosh12"}},
  {"op":"put","entity":{"kind":"database","name":"alice_shop","member":"alice","server":"mosh40"}},
  {"op":"put","entity":{"kind":"dns_name","name":"@","records":[{"type":"MX","value":"10 mx.mayfirst.local"},{"type":"TXT","value":"v=spf1 -all"}]}},
  {"op":"put","entity":{"kind":"dns_name","name":"mx","records":[{"type":"A","value":"10.0.0.25"}]}},
  {"op":"put","entity":{"kind":"dns_name","name":"_mysql._tcp.alice","member":"alice","records":[{"type":"SRV","value":"0 5 3306 alice_wp.mysql.mayfirst.local"}]}},
  {"op":"put","entity":{"kind":"dns_name","name":"db","records":[{"type":"CNAME","value":"alice_wp.mysql.mayfirst.local"}]}},
  {"op":"put","entity":{"kind":"dns_name","name":"hop1","records":[{"type":"CNAME","value":"hop2.mayfirst.local"}]}},
  {"op":"put","entity":{"kind":"dns_name","name":"hop2","records":[{"type":"CNAME","value":"mx.mayfirst.local"}]}},
  {"op":"put","entity":{"kind":"dns_name","name":"loop1","records":[{"type":"CNAME","value":"loop2.mayfirst.local"}]}},
  {"op":"put","entity":{"kind":"dns_name","name":"loop2","records":[{"type":"CNAME","value":"loop1.mayfirst.local"}]}},
  {"op":"put","entity":{"kind":"dns_name","name":"gone","records":[{"type":"CNAME","value":"nothing.mayfirst.local"}]}},
  {"op":"put","entity":{"kind":"dns_name","name":"out","records":[{"type":"CNAME","value":"www.example.org"}]}},
  {"op":"put","entity":{"kind":"dns_name","name":"big","records":[
    {"type":"TXT","value":"\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\" \"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\""},
    {"type":"TXT","value":"\"cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc\" \"dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd\""},
    {"type":"TXT","value":"\"eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee\" \"ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff\""}
  ]}}
]}"#;

pub fn txn(json: &str) -> Transaction {
    serde_json::from_str(json).unwrap()
}

pub fn who() -> Who {
    Who::internal("test")
}

/// dnsd serving an in-memory table on 127.0.0.1 (an ephemeral port).
pub struct TestDns {
    pub addr: SocketAddr,
    /// Every bound address (the first is `addr`).
    pub addrs: Vec<SocketAddr>,
    pub table: Table,
    pub metrics_registry: prometheus::Registry,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestDns {
    /// `extra` is TOML for the `[dns]` section, on top of the test defaults.
    pub fn start(extra: &str) -> TestDns {
        let table = Table::open(Box::new(MemoryStore::new()), TableMetrics::unregistered().unwrap()).unwrap();
        table.apply_blocking(txn(ZONE_DATA), who()).unwrap();
        Self::start_with(table, extra)
    }

    pub fn start_with(table: Table, extra: &str) -> TestDns {
        // Defaults first: `extra` may end inside a table such as [[tsig_keys]].
        let mut text = String::from("udp_sockets = 2\n");
        if !extra.contains("listen") {
            text.push_str("listen = [\"127.0.0.1:0\"]\n");
        }
        if !extra.contains("allow_transfer") {
            text.push_str("allow_transfer = [\"127.0.0.1\"]\n");
        }
        text.push_str(extra);
        let config: DnsConfig = toml::from_str(&text).unwrap();
        let settings = config.validate().unwrap();
        let registry = prometheus::Registry::new();
        let metrics = DnsMetrics::register(&registry).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dnsd = rt.block_on(Dnsd::bind(settings, table.clone(), metrics)).unwrap();
        let addrs = dnsd.local_addrs().to_vec();
        let addr = addrs[0];
        let (stop, shutdown) = watch::channel(false);
        let thread = std::thread::spawn(move || rt.block_on(dnsd.serve(shutdown)));
        TestDns { addr, addrs, table, metrics_registry: registry, stop, thread: Some(thread) }
    }

    /// Runs `dig @addr -p port ARGS` and returns its output.
    pub fn dig(&self, args: &str) -> String {
        run("dig", &format!("@{} -p {} +time=2 +tries=1 {args}", self.addr.ip(), self.addr.port()))
    }

    pub fn kdig(&self, args: &str) -> String {
        run("kdig", &format!("@{} -p {} +time=2 +retry=0 {args}", self.addr.ip(), self.addr.port()))
    }

    pub fn apply(&self, json: &str) -> u64 {
        self.table.apply_blocking(txn(json), who()).unwrap().version
    }

    pub fn metrics_text(&self) -> String {
        let families = self.metrics_registry.gather();
        prometheus::TextEncoder::new().encode_to_string(&families).unwrap()
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn run(program: &str, args: &str) -> String {
    let out = Command::new(program)
        .args(args.split_whitespace())
        .output()
        .unwrap_or_else(|e| panic!("{program} did not run ({e}); scripts/install-deps.sh test installs it"));
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The `status:` of a dig answer.
pub fn status(out: &str) -> &str {
    out.split("status: ").nth(1).and_then(|s| s.split(',').next()).unwrap_or_else(|| panic!("no status in:\n{out}"))
}

/// The flags of a dig answer (`qr aa rd`).
pub fn flags(out: &str) -> Vec<&str> {
    let line = out.lines().find(|l| l.starts_with(";; flags:")).unwrap_or_else(|| panic!("no flags in:\n{out}"));
    line[";; flags:".len()..].split(';').next().unwrap().split_whitespace().collect()
}

/// Lines of one dig section (`ANSWER`, `AUTHORITY`), without comments.
pub fn section<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    let head = format!(";; {name} SECTION:");
    let Some(start) = out.find(&head) else { return Vec::new() };
    out[start + head.len()..].lines().skip(1).take_while(|l| !l.trim().is_empty()).collect()
}

/// Polls `f` until it returns `Some`, for up to `limit`.
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "condition not met within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
