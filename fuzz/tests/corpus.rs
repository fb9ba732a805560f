//! Replays every committed seed and crash input through the fuzz targets'
//! bodies, so CI (stable Rust, no libFuzzer run) checks them on each change.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        f(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "no seeds in {}", dir.display());
}

#[test]
fn control_request_corpus() {
    replay("control_request", edge_fuzz::control_request);
}

#[test]
fn names_corpus() {
    replay("names", edge_fuzz::names);
}

#[test]
fn dns_query_corpus() {
    replay("dns_query", edge_fuzz::dns_query);
}

#[test]
fn ssh_preauth_corpus() {
    replay("ssh_preauth", edge_fuzz::ssh_preauth);
}

#[test]
fn mail_imap_corpus() {
    replay("mail_imap", edge_fuzz::mail_imap);
}

#[test]
fn mail_pop3_corpus() {
    replay("mail_pop3", edge_fuzz::mail_pop3);
}

#[test]
fn mail_smtp_corpus() {
    replay("mail_smtp", edge_fuzz::mail_smtp);
}

#[test]
fn http_host_corpus() {
    replay("http_host", edge_fuzz::http_host);
}

#[test]
fn cache_key_corpus() {
    replay("cache_key", edge_fuzz::cache_key);
}
