//! A real secondary: Knot DNS (Debian's `knot`), started by the test on a
//! loopback port as a secondary of dnsd. It transfers the zone with AXFR;
//! after a move, dnsd's NOTIFY makes it transfer again, and it serves the new
//! serial and the moved address.

mod support;

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::TestDns;

struct Knot {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Knot {
    /// Knot as a secondary of `primary`; with `key` (name, base64 secret),
    /// its SOA queries and transfers are TSIG-signed, and it takes only
    /// NOTIFYs signed with that key.
    fn start_secondary(primary: std::net::SocketAddr, port: u16, key: Option<(&str, &str)>) -> Knot {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let (keys, use_key) = match key {
            Some((name, secret)) => (
                format!("key:\n  - id: {name}\n    algorithm: hmac-sha256\n    secret: {secret}\n"),
                format!("    key: {name}\n"),
            ),
            None => (String::new(), String::new()),
        };
        let conf = format!(
            r#"{keys}server:
    rundir: "{d}"
    pidfile: "{d}/knot.pid"
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "{d}/db"
control:
    listen: "{d}/knot.sock"
log:
  - target: stderr
    any: info
remote:
  - id: primary
    address: {ip}@{pport}
{use_key}acl:
  - id: notify-from-primary
    address: {ip}
{use_key}    action: notify
template:
  - id: default
    storage: "{d}/zones"
    journal-content: none
    zonefile-sync: -1
zone:
  - domain: mayfirst.local
    master: primary
    acl: notify-from-primary
"#,
            ip = primary.ip(),
            pport = primary.port()
        );
        let path = dir.path().join("knot.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("knotd")
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("knot.log")).unwrap())
            .spawn()
            .expect("knotd runs (scripts/install-deps.sh test installs Debian's knot)");
        Knot { child, port, _dir: dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("knot.log")).unwrap_or_default()
    }

    fn dig(&self, args: &str) -> String {
        support::run("dig", &format!("@127.0.0.1 -p {} +time=1 +tries=1 +short {args}", self.port))
    }

    fn serial(&self) -> Option<u64> {
        self.dig("mayfirst.local SOA").split_whitespace().nth(2)?.parse().ok()
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    // knotd binds UDP and TCP on it: free for both.
    loop {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Waits up to `secs` for Knot to serve `serial`; fails with Knot's log.
fn wait_serial(knot: &Knot, serial: u64, secs: u64) {
    let start = std::time::Instant::now();
    while knot.serial() != Some(serial) {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "Knot did not reach serial {serial} in {secs} s (it has {:?}); its log:\n{}",
            knot.serial(),
            knot.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn knot_follows_dnsd_through_axfr_and_notify() {
    follow(None);
}

/// The same with TSIG: Knot signs its SOA queries and transfer requests,
/// checks every answer, and takes only signed NOTIFYs.
#[test]
fn knot_follows_dnsd_with_tsig() {
    follow(Some(("xfr.mayfirst.local", "ZWRnZS10ZXN0LXRzaWctc2VjcmV0LTAxMjM0NTY3ODk=")));
}

fn follow(key: Option<(&str, &str)>) {
    let port = free_port();
    let mut extra = format!("notify = [\"127.0.0.1:{port}\"]\nrefresh = 3600\nretry = 3600\n");
    if let Some((name, secret)) = key {
        extra
            .push_str(&format!("transfer_key = \"{name}\"\n[[tsig_keys]]\nname = \"{name}\"\nsecret = \"{secret}\"\n"));
    }
    let dns = TestDns::start(&extra);
    let knot = Knot::start_secondary(dns.addr, port, key);
    let v1 = dns.table.load().version();
    // The first transfer, at start.
    wait_serial(&knot, v1, 20);
    assert_eq!(knot.dig("alice_wp.mysql.mayfirst.local A").trim(), "10.0.0.12", "{}", knot.log());
    assert_eq!(knot.dig("_mysql._tcp.alice.mayfirst.local SRV").trim(), "0 5 3306 alice_wp.mysql.mayfirst.local.");
    // A move. The refresh timer is an hour: only NOTIFY can bring it over.
    let v2 = dns.apply(
        r#"{"ops":[{"op":"put","entity":{"kind":"database","name":"alice_wp","member":"alice","server":"mosh40"}}]}"#,
    );
    wait_serial(&knot, v2, 10);
    assert_eq!(knot.dig("alice_wp.mysql.mayfirst.local A").trim(), "10.0.0.40", "{}", knot.log());
    let text = dns.metrics_text();
    assert!(!text.contains("edge_dns_notifies_total{result=\"acked\"} 0"), "{text}");
    assert!(!text.contains("edge_dns_notifies_total{result=\"sent\"} 0"), "{text}");
    assert!(!text.contains("edge_dns_transfers_total{result=\"done\"} 0"), "{text}");
}
