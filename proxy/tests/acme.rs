//! Automatic certificates against a real ACME CA: Debian's `pebble`
//! (Let's Encrypt's test CA), started by the test on loopback with its own
//! config and API certificate. It resolves names through
//! `pebble-challtestsrv`'s DNS (every name is 127.0.0.1) and validates
//! HTTP-01 on the edge's HTTP port and TLS-ALPN-01 on its TLS port; for
//! DNS-01 it asks the edge's own dnsd. An nginx origin serves the sites;
//! curl verifies the issued certificates with pebble's root.

#[path = "support/nginx.rs"]
mod nginx;
#[path = "support/edge.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nginx::{free_port, Nginx};
use proxy::control::client::Client;
use serde_json::{json, Value};
use support::{config_text, EdgeProcess, Killed};

/// pebble and its DNS, on free loopback ports.
struct Pebble {
    api: u16,
    management: u16,
    dir: PathBuf,
    proc: Option<Killed>,
    _dns: Option<Killed>,
    dns_port: u16,
    http_port: u16,
    tls_port: u16,
    validity_secs: Option<u64>,
}

/// What a test's pebble validates against, and how long its certificates
/// last.
struct PebbleSetup {
    http_port: u16,
    tls_port: u16,
    /// pebble's `certificateValidityPeriod` (its default is years).
    validity_secs: Option<u64>,
    /// A DNS server to resolve with (the edge's dnsd) instead of
    /// `pebble-challtestsrv`.
    dns_port: Option<u16>,
}

impl Pebble {
    /// HTTP-01 validations go to `http_port`; every name is 127.0.0.1.
    fn start(dir: &Path, http_port: u16) -> Pebble {
        Pebble::start_with(dir, PebbleSetup { http_port, tls_port: 1, validity_secs: None, dns_port: None })
    }

    /// A test CA signs pebble's API certificate (`ca.pem` in `dir`).
    fn start_with(dir: &Path, setup: PebbleSetup) -> Pebble {
        let dir = dir.join("pebble");
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "edge test: pebble's API CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        let (dns, dns_port) = match setup.dns_port {
            Some(port) => (None, port),
            None => {
                let port = free_port("127.0.0.1");
                let dns = Command::new("pebble-challtestsrv")
                    .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-dns01", &format!("127.0.0.1:{port}")])
                    .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                    .args(["-management", &format!("127.0.0.1:{}", free_port("127.0.0.1"))])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("pebble-challtestsrv (Debian package pebble)");
                (Some(Killed(dns)), port)
            }
        };
        let mut p = Pebble {
            api: 0,
            management: 0,
            dir,
            proc: None,
            _dns: dns,
            dns_port,
            http_port: setup.http_port,
            tls_port: setup.tls_port,
            validity_secs: setup.validity_secs,
        };
        p.restart();
        p
    }

    /// Starts pebble (again, on new ports: a restarted pebble is a new CA).
    fn restart(&mut self) {
        self.proc = None;
        self.api = free_port("127.0.0.1");
        self.management = free_port("127.0.0.1");
        let d = self.dir.display();
        let mut config = json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{}", self.api),
            "managementListenAddress": format!("127.0.0.1:{}", self.management),
            "certificate": format!("{d}/cert.pem"), "privateKey": format!("{d}/key.pem"),
            "httpPort": self.http_port, "tlsPort": self.tls_port, "ocspResponderURL": "",
            "externalAccountBindingRequired": false}});
        if let Some(secs) = self.validity_secs {
            config["pebble"]["certificateValidityPeriod"] = json!(secs);
        }
        std::fs::write(self.dir.join("pebble.json"), config.to_string()).unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(self.dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns_port)])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(self.dir.join("pebble.log")).unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble (Debian package pebble)");
        self.proc = Some(Killed(child));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.api)).is_err() {
            assert!(Instant::now() < deadline, "pebble did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        self.proc = None;
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.api)
    }

    /// pebble's root (it makes a new one each start), as a PEM file.
    fn root(&self) -> PathBuf {
        let path = self.dir.join(format!("root-{}.pem", self.api));
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(self.dir.join("ca.pem"))
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(&path, &out.stdout).unwrap();
        path
    }
}

/// `curl https://HOST:PORT/` verified with `root`: (exit code, body).
fn curl_verified(root: &Path, host: &str, port: u16) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "--cacert"])
        .arg(root)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1"), &format!("https://{host}:{port}/")])
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn metric(admin: u16, series: &str) -> f64 {
    let out =
        Command::new("curl").args(["-s", "--max-time", "5", &format!("http://127.0.0.1:{admin}/metrics")]).output();
    let text = String::from_utf8_lossy(&out.unwrap().stdout).into_owned();
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// `edgectl cert renew SITE`, which must be accepted.
fn renew(socket: &Path, site: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .arg("--socket")
        .arg(socket)
        .args(["cert", "renew", site])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// An edge with HTTP and HTTPS on `port` and `tls_port`, its admin on
/// `admin`, ordering from `pebble` with `acme` added to `[http.acme]`, and
/// `extra` sections.
async fn start_edge(
    d: &Path,
    pebble: &Pebble,
    ports: (u16, u16, u16),
    acme: &str,
    extra: &str,
) -> (EdgeProcess, PathBuf, Client) {
    start_edge_at(d, &pebble.directory(), pebble, ports, acme, extra).await
}

/// [`start_edge`] with another ACME `directory` URL (pebble behind a front).
async fn start_edge_at(
    d: &Path,
    directory: &str,
    pebble: &Pebble,
    (port, tls_port, admin): (u16, u16, u16),
    acme: &str,
    extra: &str,
) -> (EdgeProcess, PathBuf, Client) {
    let http = format!(
        "[http]\nlisten = [\"127.0.0.1:{port}\"]\ntls_listen = [\"127.0.0.1:{tls_port}\"]\nshutdown_drain_secs = 1\n\
         [http.acme]\ndirectory = \"{directory}\"\nca_file = \"{}\"\ncontact = [\"mailto:admin@example.org\"]\n{acme}\n{extra}",
        pebble.dir.join("ca.pem").display()
    );
    let text = config_text(d, "").replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{admin}\""));
    let config = d.join("edge.toml");
    std::fs::write(&config, text + &http).unwrap();
    let socket = d.join("var/control.sock");
    let mut edge = EdgeProcess::spawn(&config, &socket);
    edge.ready().await;
    let client = Client::new(&socket);
    (edge, socket, client)
}

/// A transaction with backend `b1` and the given sites (name, hosts,
/// acme), all served by `origin_port`.
fn sites_txn(origin_port: u16, sites: &[(&str, &[&str], bool)]) -> Value {
    let mut ops = vec![json!({"op": "put", "entity": {"kind": "backend", "name": "b1", "addresses": ["127.0.0.61"]}})];
    for (name, hosts, acme) in sites {
        ops.push(json!({"op": "put", "entity": {"kind": "site", "name": name, "hosts": hosts,
            "backends": [{"backend": "b1", "port": origin_port}], "policy": {"tls": {"acme": acme}}}}));
    }
    json!({ "ops": ops })
}

/// Waits up to `secs` for the certificate `name`.
async fn wait_cert(client: &Client, name: &str, secs: u64) -> Value {
    let started = Instant::now();
    loop {
        if let Some(c) = cert(client, name).await {
            eprintln!("acme: {name}: issued {:?} after {:?}", c["names"], started.elapsed());
            return c;
        }
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "no certificate for {name} in {secs} s: {:?}",
            client.get("/v1/certs").await.map(|a| a.body)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// HTTPS requests one after another, each verified with `root`, until
/// stopped: counts the answers from b1 and the failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(root: &Path, host: &str, tls_port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let task = {
            let (stop, ok, failed, root, host) =
                (stop.clone(), ok.clone(), failed.clone(), root.to_path_buf(), host.to_string());
            tokio::task::spawn_blocking(move || {
                while !stop.load(Ordering::SeqCst) {
                    match curl_verified(&root, &host, tls_port) {
                        (0, body) if body.starts_with("b1 ") => ok.fetch_add(1, Ordering::SeqCst),
                        other => {
                            eprintln!("acme load: failed: {other:?}");
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            })
        };
        Load { stop, ok, failed, task }
    }

    /// (answered, failed)
    async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        (self.ok.load(Ordering::SeqCst), self.failed.load(Ordering::SeqCst))
    }
}

/// A test's directory, its nginx origin `b1` (on 127.0.0.61), and free
/// ports for the edge's HTTP, HTTPS and admin listeners.
fn setup() -> (tempfile::TempDir, Nginx, (u16, u16, u16)) {
    let dir = tempfile::tempdir().unwrap();
    let origin = Nginx::start(dir.path(), "b1", "127.0.0.61");
    (dir, origin, (free_port("127.0.0.1"), free_port("127.0.0.1"), free_port("127.0.0.1")))
}

async fn cert(client: &Client, name: &str) -> Option<Value> {
    let a = client.get(&format!("/v1/certs/{name}")).await.ok()?;
    (a.status == 200).then_some(a.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_get_certificates_from_pebble_renew_them_under_load_and_keep_serving_when_the_ca_is_down() {
    let (dir, origin, (port, tls_port, admin)) = setup();
    let d = dir.path();
    let mut pebble = Pebble::start(d, port);
    let (edge, socket, client) =
        start_edge(d, &pebble, (port, tls_port, admin), "check_interval_secs = 1\nretry_secs = 1", "").await;
    let txn = sites_txn(origin.port, &[("shop", &["shop.test"], true), ("plain", &["plain.test"], false)]);
    assert_eq!(client.post("/v1/transactions", &txn).await.unwrap().status, 200);

    // A new site gets its certificate through HTTP-01; curl verifies it
    // with pebble's root.
    let first = wait_cert(&client, "shop", 60).await;
    assert_eq!(first["names"], json!(["shop.test"]));
    let root = pebble.root();
    let (code, body) = curl_verified(&root, "shop.test", tls_port);
    assert!(code == 0 && body.starts_with("b1 "), "{code} {body}");
    let mode = std::fs::metadata(d.join("var/certs/acme-shop.pem"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    assert_eq!(mode.unwrap() & 0o777, 0o600, "the key is private");

    // Only sites that ask: no order for plain.test, nor for a host the
    // table does not have.
    let (code, _) = curl_verified(&root, "unknown.test", tls_port);
    assert_ne!(code, 0, "no certificate for a host not in the table");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(cert(&client, "plain").await.is_none());
    assert_eq!(metric(admin, "edge_acme_orders_total{result=\"started\"}"), 1.0);

    // A renewal (forced with edgectl) under continuous load: no failed request.
    let load = Load::start(&root, "shop.test", tls_port);
    let before = std::fs::read(d.join("var/certs/acme-shop.pem")).unwrap();
    renew(&socket, "shop");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read(d.join("var/certs/acme-shop.pem")).unwrap() == before {
        assert!(Instant::now() < deadline, "not renewed in 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ok, failed) = load.stop().await;
    eprintln!("acme: renewal under load: {ok} requests, {failed} failed");
    assert!(ok > 5 && failed == 0, "{ok} ok, {failed} failed");
    assert_eq!(metric(admin, "edge_acme_orders_total{result=\"issued\"}"), 2.0);

    // The CA down: the renewal fails, is retried with backoff, and the old
    // certificate keeps serving.
    pebble.stop();
    renew(&socket, "shop");
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(admin, "edge_acme_orders_total{result=\"failed\"}") < 1.0 {
        assert!(Instant::now() < deadline, "the failed order was not counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let list = client.get("/v1/certs").await.unwrap().body;
    assert!(list["acme_failing"]["shop"]["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{list}");
    let (code, body) = curl_verified(&root, "shop.test", tls_port);
    assert!(code == 0 && body.starts_with("b1 "), "the old certificate serves: {code} {body}");
    assert!(metric(admin, "edge_tls_certificate_earliest_expiry_seconds") > 86_400.0);
    drop(edge);
}

/// TLS-ALPN-01 on the edge's TLS listener, then pebble's short lifetime:
/// the certificate is renewed at two-thirds of it by itself, under
/// continuous HTTPS load, with no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_issues_and_a_short_lifetime_is_renewed_on_time_under_load() {
    const LIFETIME: u64 = 24;
    let (dir, origin, (port, tls_port, admin)) = setup();
    let d = dir.path();
    // pebble validates HTTP-01 on a closed port: only TLS-ALPN-01 can pass.
    let setup = PebbleSetup { http_port: 1, tls_port, validity_secs: Some(LIFETIME), dns_port: None };
    let pebble = Pebble::start_with(d, setup);
    let acme = "challenge = \"tls-alpn-01\"\ncheck_interval_secs = 1\nretry_secs = 1";
    let (edge, _socket, client) = start_edge(d, &pebble, (port, tls_port, admin), acme, "").await;
    let txn = sites_txn(origin.port, &[("shop", &["shop.test"], true)]);
    assert_eq!(client.post("/v1/transactions", &txn).await.unwrap().status, 200);
    let first = wait_cert(&client, "shop", 60).await;
    assert_eq!(first["names"], json!(["shop.test"]));
    let lifetime = first["not_after"].as_i64().unwrap() - first["not_before"].as_i64().unwrap();
    assert!(lifetime <= LIFETIME as i64 + 1, "pebble's short lifetime: {first}");
    let root = pebble.root();
    let (code, body) = curl_verified(&root, "shop.test", tls_port);
    assert!(code == 0 && body.starts_with("b1 "), "{code} {body}");

    // Nobody asks: the renewal comes at two-thirds of the lifetime, and
    // the load sees no failure while the certificate is replaced.
    let load = Load::start(&root, "shop.test", tls_port);
    let renewed = loop {
        let c = cert(&client, "shop").await.unwrap();
        if c["not_after"] != first["not_after"] {
            break c;
        }
        assert!(metric(admin, "edge_acme_orders_total{result=\"failed\"}") == 0.0, "an order failed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let issued_at = renewed["not_before"].as_i64().unwrap();
    let due = first["not_before"].as_i64().unwrap() + lifetime * 2 / 3;
    eprintln!("acme: renewed at {issued_at} (due {due}, expiry {})", first["not_after"]);
    assert!(issued_at >= due - 1 && issued_at < first["not_after"].as_i64().unwrap(), "{first} {renewed}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, failed) = load.stop().await;
    eprintln!("acme: automatic renewal under load: {ok} requests, {failed} failed");
    assert!(ok > 5 && failed == 0, "{ok} ok, {failed} failed");
    assert_eq!(metric(admin, "edge_acme_orders_total{result=\"issued\"}"), 2.0);
    drop(edge);
}

/// A wildcard site gets its certificate through DNS-01: the edge puts the
/// TXT record in the table, its own dnsd answers pebble, and the record is
/// taken away afterwards. The manager wakes on the table commit (its
/// periodic check is an hour here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_site_gets_its_certificate_through_dns_01_answered_by_dnsd() {
    let (dir, origin, (port, tls_port, admin)) = setup();
    let d = dir.path();
    let dns_port = free_port("127.0.0.1");
    let setup = PebbleSetup { http_port: 1, tls_port: 1, validity_secs: None, dns_port: Some(dns_port) };
    let pebble = Pebble::start_with(d, setup);
    let dns = format!("[dns]\nlisten = [\"127.0.0.1:{dns_port}\"]\nzone = \"edge.test\"\n");
    let acme = "check_interval_secs = 3600\nretry_secs = 1";
    let (edge, _socket, client) = start_edge(d, &pebble, (port, tls_port, admin), acme, &dns).await;
    // The first round (at start) has nothing to do; the commit wakes it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let txn = sites_txn(origin.port, &[("wild", &["*.wild.edge.test"], true), ("out", &["*.example.org"], true)]);
    assert_eq!(client.post("/v1/transactions", &txn).await.unwrap().status, 200);
    let c = wait_cert(&client, "wild", 30).await;
    assert_eq!(c["names"], json!(["*.wild.edge.test"]));
    let root = pebble.root();
    for host in ["www.wild.edge.test", "shop.wild.edge.test"] {
        let (code, body) = curl_verified(&root, host, tls_port);
        assert!(code == 0 && body.starts_with("b1 "), "{host}: {code} {body}");
    }
    // The record was committed and removed again, by the ACME manager.
    let history = client.get("/v1/history").await.unwrap().body;
    let by_acme: Vec<&Value> =
        history["entries"].as_array().unwrap().iter().filter(|e| e["who"]["origin"] == "acme").collect();
    assert_eq!(by_acme.len(), 2, "put, then delete: {history}");
    let gone = client.get("/v1/table/dns_name/_acme-challenge.wild").await.unwrap();
    assert_eq!(gone.status, 404, "{:?}", gone.body);
    // A wildcard outside dnsd's zone cannot be proved: no order.
    assert!(cert(&client, "out").await.is_none());
    assert_eq!(metric(admin, "edge_acme_orders_total{result=\"started\"}"), 1.0);
    drop(edge);
}

/// ARI (RFC 9773): Debian's pebble 2.4 has no renewal information, so the
/// test puts a small HTTPS front before it (`support/ari_front.py`) that
/// adds `renewalInfo` to pebble's directory and answers it: the first
/// certificate's window is already open, any later one's is a month away.
/// The edge renews the first certificate at once (its lifetime fraction
/// is years away), asks about it by the right identifier, and then leaves
/// the new certificate alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cas_renewal_information_brings_a_renewal_forward() {
    use base64::Engine;
    let (dir, origin, (port, tls_port, admin)) = setup();
    let d = dir.path();
    let pebble = Pebble::start(d, port);
    let front_port = free_port("127.0.0.1");
    let asked = d.join("ari-asked.log");
    let p = &pebble.dir;
    let _front = Killed(
        Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/ari_front.py"))
            .arg(front_port.to_string())
            .arg(pebble.directory())
            .args([p.join("cert.pem"), p.join("key.pem"), p.join("ca.pem"), asked.clone()])
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", front_port)).is_err() {
        assert!(Instant::now() < deadline, "the ARI front did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let directory = format!("https://127.0.0.1:{front_port}/dir");
    let acme = "check_interval_secs = 1\nretry_secs = 1";
    let (edge, _socket, client) = start_edge_at(d, &directory, &pebble, (port, tls_port, admin), acme, "").await;
    let txn = sites_txn(origin.port, &[("shop", &["shop.test"], true)]);
    assert_eq!(client.post("/v1/transactions", &txn).await.unwrap().status, 200);
    wait_cert(&client, "shop", 60).await;
    let first = std::fs::read(d.join("var/certs/acme-shop.pem")).unwrap();

    // ARI's identifier of the first certificate: base64url of its
    // authority key identifier, a dot, base64url of its serial.
    let expected = {
        let (_, pem) = x509_parser::pem::parse_x509_pem(&first).unwrap();
        let cert = pem.parse_x509().unwrap();
        let aki = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.clone(),
                _ => None,
            })
            .unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}", b64.encode(aki.0), b64.encode(cert.tbs_certificate.raw_serial()))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(admin, "edge_acme_orders_total{result=\"issued\"}") < 2.0 {
        let asked = std::fs::read_to_string(&asked);
        assert!(Instant::now() < deadline, "ARI's open window brought no renewal: asked {asked:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_ne!(std::fs::read(d.join("var/certs/acme-shop.pem")).unwrap(), first);
    // The new certificate's window is a month away: no third order.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(metric(admin, "edge_acme_orders_total{result=\"started\"}"), 2.0);
    let log = std::fs::read_to_string(&asked).unwrap();
    let ids: Vec<&str> = log.lines().collect();
    eprintln!("acme: ARI asked about {ids:?}");
    assert_eq!(ids.first().copied(), Some(expected.as_str()), "the first certificate, by its identifier");
    assert_eq!(ids.len(), 2, "once per certificate (Retry-After is an hour): {ids:?}");
    assert_ne!(ids[0], ids[1]);
    drop(edge);
}
