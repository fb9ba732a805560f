//! Where a request goes, decided from one table snapshot: pure functions of
//! the snapshot, the request's Host and the client's address, so they are
//! tested (and fuzzed) without a socket.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use routing_table::{Backend, BackendState, Protection, Site, Snapshot};

/// What to do with a request.
#[derive(Debug)]
pub enum Decision {
    /// Proxy to this site; the upstream is picked per attempt ([`pick`]).
    Proxy(Arc<Site>),
    /// 301 to this URL (an alias of a site).
    Redirect(String),
    /// Answer with one of the edge's own pages.
    Page(Page),
}

/// The edge's own answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The Host header is missing or malformed.
    BadRequest,
    /// No site serves this host.
    UnknownHost,
    /// The site refuses this client (deny or allow list).
    Denied,
    /// The site is quarantined: nothing reaches its backend.
    Quarantine,
    /// The site is in maintenance.
    Maintenance,
    /// No backend of the site can take the request.
    NoBackend,
    /// The backend that took the request failed before answering.
    BadGateway,
    /// The connection's certificate does not cover the request's host
    /// (HTTPS, RFC 9110 §15.5.20).
    Misdirected,
    /// The request body is over the site's limit.
    TooLarge,
    /// The request header is over the site's limit (RFC 6585 §5).
    HeaderTooLarge,
    /// Over a per-client limit of the site.
    TooManyRequests,
}

impl Page {
    pub fn status(self) -> u16 {
        match self {
            Page::BadRequest => 400,
            Page::UnknownHost => 404,
            Page::Denied => 403,
            Page::Quarantine => 403,
            Page::Maintenance | Page::NoBackend => 503,
            Page::BadGateway => 502,
            Page::Misdirected => 421,
            Page::TooLarge => 413,
            Page::HeaderTooLarge => 431,
            Page::TooManyRequests => 429,
        }
    }

    /// A short HTML page; no detail a visitor could use against the site.
    pub fn body(self) -> &'static str {
        match self {
            Page::BadRequest => "<!doctype html><title>400 Bad Request</title><h1>Bad request</h1>\n",
            Page::UnknownHost => {
                "<!doctype html><title>404 Not Found</title><h1>No site here</h1><p>This server has no site by that name.</p>\n"
            }
            Page::Denied => "<!doctype html><title>403 Forbidden</title><h1>Forbidden</h1>\n",
            Page::Quarantine => {
                "<!doctype html><title>403 Forbidden</title><h1>This site is unavailable</h1><p>It has been suspended by its hosting co-op.</p>\n"
            }
            Page::Maintenance => {
                "<!doctype html><title>503 Service Unavailable</title><h1>Down for maintenance</h1><p>Please try again shortly.</p>\n"
            }
            Page::NoBackend => {
                "<!doctype html><title>503 Service Unavailable</title><h1>Temporarily unavailable</h1><p>Please try again shortly.</p>\n"
            }
            Page::BadGateway => {
                "<!doctype html><title>502 Bad Gateway</title><h1>The site's server did not answer</h1><p>Please try again shortly.</p>\n"
            }
            Page::Misdirected => {
                "<!doctype html><title>421 Misdirected Request</title><h1>Misdirected request</h1><p>This connection is not for that site.</p>\n"
            }
            Page::TooLarge => "<!doctype html><title>413</title><h1>Request too large</h1>\n",
            Page::HeaderTooLarge => "<!doctype html><title>431</title><h1>Request header too large</h1>\n",
            Page::TooManyRequests => {
                "<!doctype html><title>429 Too Many Requests</title><h1>Too many requests</h1><p>Please slow down.</p>\n"
            }
        }
    }

    /// `Retry-After`, in seconds, where the page has one.
    pub fn retry_after(self) -> Option<u32> {
        match self {
            Page::Maintenance => Some(300),
            Page::NoBackend => Some(10),
            Page::TooManyRequests => Some(1),
            _ => None,
        }
    }
}

/// The host of a `Host` header (or `:authority`): the port dropped,
/// brackets kept off an IPv6 literal. `None` when it is not a plausible
/// host.
pub fn host_of(header: &str) -> Option<&str> {
    let header = header.trim();
    let host = if let Some(rest) = header.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        inside
    } else {
        match header.rsplit_once(':') {
            Some((host, port)) if is_port(port) => host,
            Some(_) => return None,
            None => header,
        }
    };
    let plausible = !host.is_empty()
        && host.len() <= 253 + 1
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    plausible.then_some(host)
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Decides what a request for `host` from `client` gets. `scheme` and
/// `path` build an alias's redirect.
pub fn decide(
    snapshot: &Snapshot,
    host: Option<&str>,
    default_site: Option<&str>,
    client: IpAddr,
    scheme: &str,
    path_and_query: &str,
) -> Decision {
    let Some(host) = host.and_then(host_of) else { return Decision::Page(Page::BadRequest) };
    let site = match snapshot.site_for_host(host) {
        Some(m) if m.alias => {
            let target = m.site.hosts().first().map(|h| h.to_string()).unwrap_or_default();
            // A wildcard's first host names no one host: keep the request's.
            let target = target.strip_prefix("*.").map_or(target.clone(), |_| host.to_ascii_lowercase());
            return Decision::Redirect(format!("{scheme}://{target}{path_and_query}"));
        }
        Some(m) => m.site.clone(),
        None => match default_site.and_then(|name| snapshot.site(name)) {
            Some(site) => site.clone(),
            None => return Decision::Page(Page::UnknownHost),
        },
    };
    let policy = &site.policy;
    let denied = policy.deny.iter().any(|n| n.contains(&client))
        || (!policy.allow.is_empty() && !policy.allow.iter().any(|n| n.contains(&client)));
    if denied {
        return Decision::Page(Page::Denied);
    }
    match site.protection {
        Protection::Quarantine => Decision::Page(Page::Quarantine),
        Protection::Maintenance => Decision::Page(Page::Maintenance),
        Protection::Normal | Protection::UnderAttack => Decision::Proxy(site),
    }
}

/// The `https://` URL of a plain-HTTP request to a site that redirects to
/// HTTPS: the request's host (port dropped), the HTTPS listener's port when
/// it is not 443, the path and query kept.
pub fn https_url(host: &str, https_port: u16, path_and_query: &str) -> Option<String> {
    let host = host_of(host)?;
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_ascii_lowercase() };
    Some(match https_port {
        443 => format!("https://{host}{path_and_query}"),
        port => format!("https://{host}:{port}{path_and_query}"),
    })
}

/// One upstream of a site, chosen for one attempt.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub backend: Arc<Backend>,
    pub addr: SocketAddr,
    /// The site's entry asks for a PROXY protocol v2 header.
    pub proxy_protocol: bool,
}

/// The address an upstream of `backend` is reached at: its first IPv4
/// address, else its first address.
pub fn upstream_ip(backend: &Backend) -> Option<IpAddr> {
    backend.ipv4().map(IpAddr::V4).or_else(|| backend.addresses.first().copied())
}

/// Picks an upstream of `site` by weight, skipping `tried` backends and
/// down ones. Among the rest, the best group is used: up and healthy, then
/// draining and healthy, then (rather than none) those health checks took
/// out (`is_out`). `roll` is uniform in `0..u32::MAX` (the caller's
/// randomness, so this stays pure). No allocation: two walks over the
/// site's backends.
pub fn pick(
    snapshot: &Snapshot,
    site: &Site,
    tried: &[routing_table::Name],
    roll: u32,
    is_out: impl Fn(SocketAddr) -> bool,
) -> Option<Upstream> {
    let candidates = || {
        site.backends.iter().filter_map(|b| {
            if b.weight == 0 || tried.iter().any(|t| **t == *b.backend) {
                return None;
            }
            let backend = snapshot.backend(&b.backend)?;
            let addr = SocketAddr::new(upstream_ip(backend)?, b.port);
            let rank = match backend.state {
                BackendState::Down => return None,
                _ if is_out(addr) => 2,
                BackendState::Up => 0,
                BackendState::Draining => 1,
            };
            Some((backend, addr, rank, u64::from(b.weight), b.proxy_protocol))
        })
    };
    let best = candidates().map(|c| c.2).min()?;
    let total: u64 = candidates().filter(|c| c.2 == best).map(|c| c.3).sum();
    let mut at = u64::from(roll) * total / u64::from(u32::MAX);
    let mut last = None;
    for (backend, addr, _, weight, proxy_protocol) in candidates().filter(|c| c.2 == best) {
        let upstream = Upstream { backend: backend.clone(), addr, proxy_protocol };
        if at < weight {
            return Some(upstream);
        }
        at -= weight;
        last = Some(upstream);
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use routing_table::{Table, Transaction, Who};

    fn snapshot(entities: serde_json::Value) -> Arc<Snapshot> {
        let metrics = routing_table::TableMetrics::unregistered().unwrap();
        let table = Table::open(Box::new(routing_table::MemoryStore::new()), metrics).unwrap();
        let ops: Vec<serde_json::Value> =
            entities.as_array().unwrap().iter().map(|e| serde_json::json!({"op": "put", "entity": e})).collect();
        let txn: Transaction = serde_json::from_value(serde_json::json!({ "ops": ops })).unwrap();
        table.apply_blocking(txn, Who::internal("test")).unwrap();
        Arc::clone(&table.load())
    }

    fn fixture() -> Arc<Snapshot> {
        snapshot(serde_json::json!([
            {"kind": "backend", "name": "b1", "addresses": ["127.0.0.41"]},
            {"kind": "backend", "name": "b2", "addresses": ["127.0.0.42"]},
            {"kind": "backend", "name": "b3", "addresses": ["127.0.0.43"], "state": "down"},
            {"kind": "site", "name": "blog", "hosts": ["blog.example", "*.blog.example"], "aliases": ["www.blog.example"],
             "backends": [{"backend": "b1", "port": 8080, "weight": 3}, {"backend": "b2", "port": 8081}, {"backend": "b3"}]},
            {"kind": "site", "name": "shut", "hosts": ["shut.example"], "backends": [{"backend": "b1"}], "protection": "quarantine"},
            {"kind": "site", "name": "fix", "hosts": ["fix.example"], "backends": [{"backend": "b1"}], "protection": "maintenance"},
            {"kind": "site", "name": "lan", "hosts": ["lan.example"], "backends": [{"backend": "b1"}],
             "policy": {"allow": ["10.0.0.0/8"], "deny": ["10.9.0.0/16"]}},
        ]))
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn host_headers_lose_the_port_and_junk_is_refused() {
        assert_eq!(host_of("Blog.Example:8080"), Some("Blog.Example"));
        assert_eq!(host_of("blog.example."), Some("blog.example."));
        assert_eq!(host_of("[::1]:443"), Some("::1"));
        assert_eq!(host_of("[::1]"), Some("::1"));
        for bad in ["", ":80", "a b", "a:b", "x:99999999", "[::1", "[::1]x", "é.example", "a/b"] {
            assert_eq!(host_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hosts_route_to_their_site_aliases_redirect_unknown_hosts_get_404() {
        let s = fixture();
        let decide = |host| decide(&s, host, None, CLIENT, "https", "/a?b=1");
        assert!(matches!(decide(Some("BLOG.example:443")), Decision::Proxy(site) if &*site.name == "blog"));
        assert!(matches!(decide(Some("x.blog.example")), Decision::Proxy(site) if &*site.name == "blog"));
        assert!(
            matches!(decide(Some("www.blog.example")), Decision::Redirect(url) if url == "https://blog.example/a?b=1")
        );
        assert!(matches!(decide(Some("nobody.example")), Decision::Page(Page::UnknownHost)));
        assert!(matches!(decide(None), Decision::Page(Page::BadRequest)));
        assert!(matches!(decide(Some("shut.example")), Decision::Page(Page::Quarantine)));
        assert!(matches!(decide(Some("fix.example")), Decision::Page(Page::Maintenance)));
        // A default site takes unknown hosts.
        assert!(matches!(
            super::decide(&s, Some("nobody.example"), Some("blog"), CLIENT, "http", "/"),
            Decision::Proxy(site) if &*site.name == "blog"
        ));
    }

    #[test]
    fn allow_and_deny_lists() {
        let s = fixture();
        let from = |ip: &str| decide(&s, Some("lan.example"), None, ip.parse().unwrap(), "http", "/");
        assert!(matches!(from("10.1.2.3"), Decision::Proxy(_)));
        assert!(matches!(from("10.9.2.3"), Decision::Page(Page::Denied)));
        assert!(matches!(from("192.0.2.1"), Decision::Page(Page::Denied)));
    }

    #[test]
    fn picks_follow_weights_and_skip_down_and_tried_backends() {
        let s = fixture();
        let site = s.site("blog").unwrap();
        let mut counts = std::collections::HashMap::new();
        for i in 0..4000u32 {
            let u = pick(&s, site, &[], i.wrapping_mul(1_073_741), |_| false).unwrap();
            *counts.entry(u.backend.name.to_string()).or_insert(0) += 1;
        }
        assert!(!counts.contains_key("b3"), "down: {counts:?}");
        let (b1, b2) = (counts["b1"], counts["b2"]);
        assert!((2.5..3.5).contains(&(f64::from(b1) / f64::from(b2))), "3:1 weights: {counts:?}");
        let u = pick(&s, site, &["b1".into()], 0, |_| false).unwrap();
        assert_eq!((&*u.backend.name, u.addr), ("b2", "127.0.0.42:8081".parse().unwrap()));
        assert!(pick(&s, site, &["b1".into(), "b2".into()], 0, |_| false).is_none());
    }

    #[test]
    fn upstreams_out_by_health_checks_are_used_only_when_no_other_is_left() {
        let s = fixture();
        let site = s.site("blog").unwrap();
        let b2: SocketAddr = "127.0.0.42:8081".parse().unwrap();
        let not_b2 = |a: SocketAddr| a != b2;
        for i in 0..200u32 {
            let u = pick(&s, site, &[], i.wrapping_mul(21_474_836), not_b2).unwrap();
            assert_eq!(u.addr, b2, "every other upstream is out");
        }
        // All out: still one of them, rather than none.
        assert!(pick(&s, site, &[], 7, |_| true).is_some());
        // Roll at either end stays in range.
        assert!(pick(&s, site, &[], u32::MAX, |_| false).is_some());
        assert!(pick(&s, site, &[], 0, |_| false).is_some());
    }

    proptest! {
        #[test]
        fn host_of_never_panics_and_returns_a_substring(header in "\\PC{0,80}") {
            if let Some(h) = host_of(&header) {
                prop_assert!(header.contains(h));
            }
        }
    }
}
