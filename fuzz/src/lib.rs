//! Bodies of the fuzz targets, shared by the libFuzzer binaries in
//! `fuzz_targets/` and by `tests/corpus.rs`, which replays the seed corpora
//! on stable Rust in CI. Each checks properties, not just "no panic".

use std::sync::OnceLock;

use routing_table::name::{self, HostBuf, HostPattern};
use routing_table::transaction::apply;
use routing_table::{Snapshot, Transaction};

fn demo() -> &'static Snapshot {
    static DEMO: OnceLock<Snapshot> = OnceLock::new();
    DEMO.get_or_init(|| {
        let seed = include_bytes!("../../config/example-routes.json");
        let txn: Transaction = serde_json::from_slice(seed).expect("demo routes parse");
        apply(&Snapshot::empty(), &txn).expect("demo routes apply").snapshot
    })
}

/// A control-API request body: decoded as the API decodes it, validated
/// against the demo table. A rejected transaction must leave the table as
/// it was; an accepted one must survive a JSON round trip and apply to the
/// same result again.
pub fn control_request(data: &[u8]) {
    let Ok(txn) = proxy::control::api::decode_json::<Transaction>(data) else {
        return;
    };
    let base = demo();
    let before = serde_json::to_string(&base.entities()).expect("serialise");
    match apply(base, &txn) {
        Err(_) => assert_eq!(serde_json::to_string(&base.entities()).expect("serialise"), before),
        Ok(applied) => {
            assert_eq!(applied.snapshot.version(), base.version() + 1);
            let text = serde_json::to_vec(&txn).expect("serialise txn");
            let again: Transaction = serde_json::from_slice(&text).expect("round trip");
            let second = apply(base, &again).expect("same transaction applies again");
            assert_eq!(second.changes, applied.changes);
            for e in applied.snapshot.entities() {
                let json = serde_json::to_string(&e).expect("serialise entity");
                let back: routing_table::Entity = serde_json::from_str(&json).expect("entity round trip");
                assert_eq!(back.normalized().expect("stays valid"), e);
            }
        }
    }
}

/// Name normalisation: idempotent, and the allocation-free lookup form
/// agrees with the stored form.
pub fn names(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(h) = name::host(text) {
        assert_eq!(name::host(&h).as_deref(), Ok(&*h));
        assert_eq!(HostBuf::new(&h).expect("ascii").as_str(), &*h);
        assert!(h.len() <= name::MAX_HOST_LEN && h.is_ascii());
    }
    if let Ok(p) = HostPattern::parse(text) {
        assert_eq!(HostPattern::parse(&p.to_name()), Ok(p));
    }
    for f in [name::ident, name::user, name::database] {
        if let Ok(n) = f(text) {
            assert_eq!(f(&n).as_deref(), Ok(&*n));
        }
    }
    if let Some(b) = HostBuf::new(text) {
        assert!(!b.as_str().bytes().any(|c| c.is_ascii_uppercase()));
        let _ = demo().site_for_host(text);
        let _ = demo().recipient(text);
    }
}

fn dns_settings() -> &'static dnsd::Settings {
    static SETTINGS: OnceLock<dnsd::Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let config = dnsd::DnsConfig { allow_transfer: vec!["127.0.0.1".into()], ..Default::default() };
        config.validate().expect("[dns] is valid")
    })
}

/// Bytes received by dnsd: as one UDP datagram, as one TCP message, and as
/// a TCP stream of length-prefixed messages. The server must not panic, and
/// every reply must parse, answer the query's ID with QR set, and fit the
/// UDP limit; a transfer must encode into messages that parse.
pub fn dns_query(data: &[u8]) {
    use dnsd::answer::{answer, Outcome, Peer, Transport, MAX_UDP_PAYLOAD};
    let check = |packet: &[u8], transport: Transport| {
        let peer = Peer { ip: [127, 0, 0, 1].into(), transport };
        match answer(dns_settings(), demo(), packet, peer).0 {
            Outcome::Drop => assert!(packet.len() < 12 || packet[2] & 0x80 != 0, "only runts and responses are dropped"),
            Outcome::Reply(reply) => {
                let m = hickory_proto::op::Message::from_vec(&reply).expect("every reply parses");
                assert_eq!(m.metadata.id.to_be_bytes(), [packet[0], packet[1]]);
                assert_eq!(m.metadata.message_type, hickory_proto::op::MessageType::Response);
                if transport == Transport::Udp {
                    assert!(reply.len() <= usize::from(MAX_UDP_PAYLOAD), "{} bytes over UDP", reply.len());
                }
            }
            Outcome::Transfer(query, _) => {
                assert_eq!(transport, Transport::Tcp, "no transfer over UDP");
                for msg in dnsd::transfer::messages(&dns_settings().zone, demo(), &query) {
                    hickory_proto::op::Message::from_vec(&msg).expect("transfer messages parse");
                }
            }
        }
    };
    check(data, Transport::Udp);
    check(data, Transport::Tcp);
    // The UDP answer cache, on a miss and then on a hit, gives exactly the
    // bytes the full path gives.
    let peer = Peer { ip: [127, 0, 0, 1].into(), transport: Transport::Udp };
    let want = match answer(dns_settings(), demo(), data, peer).0 {
        Outcome::Reply(bytes) => Some(bytes),
        _ => None,
    };
    let mut cache = dnsd::cache::AnswerCache::new();
    for _ in 0..2 {
        let mut out = Vec::new();
        let got = cache.answer_udp(dns_settings(), demo(), data, peer, &mut out).map(|_| out);
        assert_eq!(got, want, "the cache answers like the full path");
    }
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let Some(msg) = rest.get(2..2 + len) else { break };
        check(msg, Transport::Tcp);
        rest = &rest[2 + len..];
    }
}

/// Raw client bytes to the SSH forwarder before any login (version line,
/// key exchange, whatever follows), through russh's server and our handler,
/// then EOF: the session must end within 2 s (no hang, nothing left
/// running) and write a bounded amount (no amplification, no unbounded
/// buffering).
pub fn ssh_preauth(data: &[u8]) {
    static HARNESS: OnceLock<(tokio::runtime::Runtime, proxy::ssh::Harness)> = OnceLock::new();
    let (runtime, harness) = HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let dir = std::env::temp_dir().join(format!("edge-fuzz-ssh-{}", std::process::id()));
        let harness = proxy::ssh::Harness::new(&dir).expect("ssh keys");
        (runtime, harness)
    });
    let written = runtime.block_on(harness.feed(data));
    assert_ne!(written, usize::MAX, "the session did not end within 2 s of EOF");
    assert!(written <= 64 * 1024 + 4 * data.len(), "the server wrote {written} bytes for {} in", data.len());
}

/// IMAP commands before login: the parser is total, what it consumes lies
/// within the input, a complete command parses the same without what
/// follows it, and no shorter prefix is already complete.
pub fn mail_imap(data: &[u8]) {
    use proxy::mail::parse::imap::{parse, Step};
    match parse(data) {
        Step::Complete { tag, command, used } => {
            assert!(used > 0 && used <= data.len());
            assert!(data[..used].ends_with(b"\r\n"));
            assert_eq!(parse(&data[..used]), Step::Complete { tag, command, used });
            for cut in [used - 1, used / 2] {
                assert!(!matches!(parse(&data[..cut]), Step::Complete { .. }), "a prefix was complete");
            }
        }
        Step::Bad { used: Some(used), .. } => assert!(used > 0 && used <= data.len()),
        Step::More { continuation: Some(at) } => assert!(at <= data.len()),
        Step::Bad { used: None, .. } | Step::More { continuation: None } => {}
    }
}

/// POP3 command lines: total; a password is the rest of the line, byte
/// for byte.
pub fn mail_pop3(data: &[u8]) {
    use proxy::mail::parse::pop3::{parse_line, Command, MAX_LINE};
    match parse_line(data) {
        Ok(Command::Pass(p)) => assert_eq!(&data[5..], &p[..]),
        Ok(Command::User(u)) => assert_eq!(&data[5..], &u[..]),
        Ok(_) => assert!(data.len() + 2 <= MAX_LINE),
        Err(_) => {}
    }
}

/// SMTP command lines and DATA: the line parser is total and keeps the
/// RFC limits; the DATA filter gives the backend one end of data, exactly
/// where the edge saw it, whatever the input and however it is split.
pub fn mail_smtp(data: &[u8]) {
    use proxy::mail::parse::data::DataFilter;
    use proxy::mail::parse::smtp::{parse_line, Command, MAX_AUTH_LINE, MAX_LINE};
    match parse_line(data) {
        Ok(Command::Auth { .. }) => assert!(data.len() + 2 <= MAX_AUTH_LINE),
        Ok(Command::Rcpt { to, .. }) => {
            assert!(data.len() + 2 <= MAX_LINE);
            assert!(to.contains('@') && !to.contains(['<', '>', ' ', '\r', '\n']));
        }
        Ok(_) => assert!(data.len() + 2 <= MAX_LINE || data.len() + 2 <= MAX_AUTH_LINE),
        Err(_) => {}
    }
    let run = |split: usize| {
        let mut f = DataFilter::new();
        let mut out = Vec::new();
        let mut used = f.feed(&data[..split], &mut out);
        if !f.done() {
            used += f.feed(&data[split..], &mut out);
        }
        (out, used, f.done())
    };
    let (whole, used, done) = run(data.len());
    assert_eq!(run(data.len() / 2), (whole.clone(), used, done));
    assert!(used <= data.len());
    let text = [b"\r\n".as_slice(), &whole].concat();
    let ends = text.windows(5).filter(|w| *w == b"\r\n.\r\n").count();
    assert_eq!(ends, usize::from(done), "the backend would see {ends} ends of data");
    if done {
        assert!(text.ends_with(b"\r\n.\r\n"));
    }
    for (i, &b) in whole.iter().enumerate() {
        assert!(b != b'\n' || (i > 0 && whole[i - 1] == b'\r'), "bare LF reached the backend");
        assert!(b != b'\r' || whole.get(i + 1) == Some(&b'\n'), "bare CR reached the backend");
    }
}

/// HTTP Host headers: normalising never panics and yields a part of the
/// header; routing any host through a small table never panics, and a
/// redirect always goes to the site's first host.
pub fn http_host(data: &[u8]) {
    use proxy::http::router::{decide, host_of, Decision};
    static TABLE: std::sync::OnceLock<std::sync::Arc<routing_table::Snapshot>> = std::sync::OnceLock::new();
    let Ok(header) = std::str::from_utf8(data) else { return };
    if let Some(host) = host_of(header) {
        assert!(header.contains(host));
    }
    let snapshot = TABLE.get_or_init(|| {
        let store = Box::new(routing_table::MemoryStore::new());
        let table = routing_table::Table::open(store, routing_table::TableMetrics::unregistered().unwrap()).unwrap();
        let txn = serde_json::from_value(serde_json::json!({"ops": [
            {"op": "put", "entity": {"kind": "backend", "name": "b1", "addresses": ["127.0.0.1"]}},
            {"op": "put", "entity": {"kind": "site", "name": "s", "hosts": ["a.example", "*.w.example"],
                "aliases": ["www.a.example", "*.alias.example"], "backends": [{"backend": "b1"}]}},
        ]}))
        .unwrap();
        table.apply_blocking(txn, routing_table::Who::internal("fuzz")).unwrap();
        std::sync::Arc::clone(&table.load())
    });
    let client = std::net::IpAddr::from([192, 0, 2, 1]);
    if let Decision::Redirect(url) = decide(snapshot, Some(header), None, client, "http", "/") {
        assert!(url.starts_with("http://"), "{url}");
    }
}

/// The cache key and the HTTPS redirect URL from a Host header and a path
/// (`header NUL path`): never panic; the key is the host (lower case) and
/// the path framed by a newline the host cannot hold, so two requests
/// share an entry only when both parts are equal.
pub fn cache_key(data: &[u8]) {
    use proxy::http::cache::key;
    use proxy::http::router::{host_of, https_url};
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (header, path) = text.split_once('\0').unwrap_or((text, "/"));
    if let Some(url) = https_url(header, 8443, path) {
        assert!(url.starts_with("https://"), "{url}");
    }
    let Some(host) = host_of(header) else { return };
    let host = host.trim_end_matches('.');
    assert!(!host.contains('\n'));
    let k = key("site", host, path);
    let primary = k.primary_key();
    let (h, p) = primary.split_at(host.len());
    assert_eq!(h, host.to_ascii_lowercase().as_bytes());
    assert_eq!(&p[1..], path.as_bytes());
    assert_eq!(p[0], b'\n');
}
