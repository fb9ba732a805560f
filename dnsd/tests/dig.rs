//! dnsd's answers as real clients see them: every check runs `dig` or
//! `kdig` (Debian's bind9-dnsutils and knot-dnsutils) against dnsd on a
//! loopback port, over UDP and TCP.

mod support;

use support::{flags, section, status, TestDns};

const Z: &str = "mayfirst.local";

#[test]
fn databases_answer_with_their_server_and_aa() {
    let dns = TestDns::start("");
    let out = dns.dig(&format!("alice_wp.mysql.{Z} A"));
    assert_eq!(status(&out), "NOERROR");
    assert!(flags(&out).contains(&"aa"), "{out}");
    assert!(!flags(&out).contains(&"ra"), "{out}");
    let answer = section(&out, "ANSWER");
    assert_eq!(answer.len(), 1, "{out}");
    assert!(answer[0].ends_with("A\t10.0.0.12"), "{out}");
    let out = dns.dig(&format!("alice_wp.mysql.{Z} AAAA +tcp"));
    assert!(section(&out, "ANSWER")[0].ends_with("AAAA\tfd00::12"), "{out}");
    // A backend has a name of its own.
    let out = dns.dig(&format!("mosh40.{Z} A"));
    assert!(section(&out, "ANSWER")[0].ends_with("A\t10.0.0.40"), "{out}");
    // Extra records of each type.
    let out = dns.dig(&format!("_mysql._tcp.alice.{Z} SRV"));
    assert!(section(&out, "ANSWER")[0].ends_with(&format!("SRV\t0 5 3306 alice_wp.mysql.{Z}.")), "{out}");
    let out = dns.dig(&format!("{Z} MX"));
    assert!(section(&out, "ANSWER")[0].ends_with(&format!("MX\t10 mx.{Z}.")), "{out}");
    let out = dns.dig(&format!("{Z} TXT"));
    assert!(section(&out, "ANSWER")[0].ends_with("TXT\t\"v=spf1 -all\""), "{out}");
}

#[test]
fn nxdomain_and_nodata_are_told_apart_with_the_soa_and_aa() {
    let dns = TestDns::start("soa_ttl = 120\nminimum = 20\n");
    // A missing name: NXDOMAIN, authoritative, SOA with TTL min(120, 20).
    let out = dns.dig(&format!("nobody.mysql.{Z} A"));
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(flags(&out).contains(&"aa"), "{out}");
    let auth = section(&out, "AUTHORITY");
    assert_eq!(auth.len(), 1, "{out}");
    assert!(auth[0].starts_with(&format!("{Z}.\t\t20\tIN\tSOA\tns1.{Z}. hostmaster.{Z}. 1 ")), "{out}");
    // An existing name without the type: NODATA (NOERROR, no answer, SOA).
    let out = dns.dig(&format!("alice_shop.mysql.{Z} AAAA"));
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(section(&out, "ANSWER").is_empty() && section(&out, "AUTHORITY")[0].contains("SOA"), "{out}");
    // Empty non-terminals exist: `mysql.<zone>` and `_tcp.alice.<zone>`.
    for ent in [format!("mysql.{Z}"), format!("_tcp.alice.{Z}"), format!("alice.{Z}")] {
        let out = dns.dig(&format!("{ent} A"));
        assert_eq!(status(&out), "NOERROR", "{ent}: {out}");
        assert!(flags(&out).contains(&"aa") && section(&out, "AUTHORITY")[0].contains("SOA"), "{out}");
    }
    // Below a leaf there is nothing.
    assert_eq!(status(&dns.dig(&format!("x.alice_wp.mysql.{Z} A"))), "NXDOMAIN");
    // SOA and NS at the apex.
    let out = dns.dig(&format!("{Z} NS"));
    assert!(section(&out, "ANSWER")[0].ends_with(&format!("NS\tns1.{Z}.")), "{out}");
    let out = dns.dig(&format!("{Z} SOA +tcp"));
    assert!(section(&out, "ANSWER")[0].contains("SOA"), "{out}");
}

#[test]
fn other_zones_and_classes_are_refused() {
    let dns = TestDns::start("");
    let out = dns.dig("www.example.org A");
    assert_eq!(status(&out), "REFUSED", "{out}");
    assert!(!flags(&out).contains(&"aa"), "{out}");
    // A name that merely ends like the zone is another zone.
    assert_eq!(status(&dns.dig("xmayfirst.local A")), "REFUSED");
    let out = dns.dig(&format!("-c CH alice_wp.mysql.{Z} A"));
    assert_eq!(status(&out), "REFUSED", "{out}");
}

#[test]
fn matching_ignores_case_and_the_question_is_echoed_as_sent() {
    let dns = TestDns::start("");
    let out = dns.dig("ALICE_wp.MySQL.MayFirst.Local A");
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(out.contains(";ALICE_wp.MySQL.MayFirst.Local.\tIN\tA"), "{out}");
    assert_eq!(section(&out, "ANSWER").len(), 1, "{out}");
    // kdig checks the question it gets back against the one it sent.
    let out = dns.kdig("aLiCe_ShOp.mYsQl.mayfirst.LOCAL A");
    assert!(out.contains("status: NOERROR") && out.contains("10.0.0.40"), "{out}");
}

#[test]
fn cname_chains_are_followed_inside_the_zone_and_loops_stop() {
    let dns = TestDns::start("");
    let out = dns.dig(&format!("hop1.{Z} A"));
    let answer = section(&out, "ANSWER");
    assert_eq!(answer.len(), 3, "{out}");
    assert!(answer[0].contains("CNAME\thop2.") && answer[1].contains("CNAME\tmx.") && answer[2].ends_with("10.0.0.25"));
    // A loop: both CNAMEs once, then stop, NOERROR.
    let out = dns.dig(&format!("loop1.{Z} A"));
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert_eq!(section(&out, "ANSWER").len(), 2, "{out}");
    // A chain into a missing name: NXDOMAIN for the last name (RFC 6604).
    let out = dns.dig(&format!("gone.{Z} A"));
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert_eq!(section(&out, "ANSWER").len(), 1, "{out}");
    // Out of the zone: the CNAME only, for the resolver to follow.
    let out = dns.dig(&format!("out.{Z} A"));
    assert_eq!(section(&out, "ANSWER").len(), 1, "{out}");
    // Asking for the CNAME itself does not follow it.
    assert_eq!(section(&dns.dig(&format!("hop1.{Z} CNAME")), "ANSWER").len(), 1);
}

#[test]
fn large_answers_truncate_on_udp_and_retry_on_tcp() {
    let dns = TestDns::start("");
    // About 1.3 KB of TXT. Without EDNS the limit is 512 bytes.
    let out = dns.dig(&format!("big.{Z} TXT +noedns +ignore"));
    assert!(flags(&out).contains(&"tc"), "{out}");
    assert!(section(&out, "ANSWER").is_empty(), "{out}");
    assert!(!out.contains("OPT PSEUDOSECTION"), "no OPT unless the query had one: {out}");
    // With EDNS the client's size counts, capped at 1232.
    let out = dns.dig(&format!("big.{Z} TXT +bufsize=600 +ignore"));
    assert!(flags(&out).contains(&"tc"), "{out}");
    assert!(out.contains("udp: 1232"), "{out}");
    let out = dns.dig(&format!("big.{Z} TXT +bufsize=4096 +ignore"));
    assert!(flags(&out).contains(&"tc"), "capped at 1232: {out}");
    // dig retries a truncated answer over TCP and gets it all.
    let out = dns.dig(&format!("big.{Z} TXT +noedns"));
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    assert_eq!(section(&out, "ANSWER").len(), 3, "{out}");
    // Small answers are not truncated.
    assert!(!flags(&dns.dig(&format!("mx.{Z} A +noedns"))).contains(&"tc"));
}

#[test]
fn edns_versions_and_opcodes() {
    let dns = TestDns::start("");
    let out = dns.dig(&format!("alice_wp.mysql.{Z} A +edns=1 +noednsnegotiation"));
    assert_eq!(status(&out), "BADVERS", "{out}");
    assert!(out.contains("EDNS: version: 0"), "{out}");
    assert!(section(&out, "ANSWER").is_empty(), "{out}");
    let out = dns.dig(&format!("alice_wp.mysql.{Z} A +noedns"));
    assert!(!out.contains("OPT PSEUDOSECTION"), "{out}");
    for opcode in [3, 5, 15] {
        let out = dns.dig(&format!("alice_wp.mysql.{Z} A +opcode={opcode}"));
        assert_eq!(status(&out), "NOTIMP", "opcode {opcode}: {out}");
    }
    // No question at all.
    let out = dns.dig("+header-only");
    assert_eq!(status(&out), "FORMERR", "{out}");
}

#[test]
fn any_gets_one_rrset() {
    let dns = TestDns::start("");
    let out = dns.dig(&format!("{Z} ANY"));
    assert_eq!(status(&out), "NOERROR", "{out}");
    let answer = section(&out, "ANSWER");
    assert!(!answer.is_empty(), "{out}");
    let types: std::collections::BTreeSet<&str> = answer.iter().map(|l| l.split('\t').nth(3).unwrap()).collect();
    assert_eq!(types.len(), 1, "RFC 8482: one RRset, got {types:?}: {out}");
    let out = dns.dig(&format!("nobody.{Z} ANY"));
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
}

#[test]
fn zone_transfers_over_tcp_to_allowed_peers_only() {
    let dns = TestDns::start("");
    let out = dns.dig(&format!("{Z} AXFR"));
    let records: Vec<&str> = out.lines().filter(|l| !l.starts_with(';') && !l.trim().is_empty()).collect();
    assert!(records.first().unwrap().contains("\tSOA\t"), "{out}");
    assert!(records.last().unwrap().contains("\tSOA\t"), "{out}");
    for want in ["alice_wp.mysql.mayfirst.local.", "mosh12.mayfirst.local.", "_mysql._tcp.alice.mayfirst.local."] {
        assert!(records.iter().any(|r| r.starts_with(want)), "{want} missing: {out}");
    }
    // Over UDP: refused (kdig sends it over UDP when told).
    let out = dns.kdig(&format!("{Z} AXFR +notcp"));
    assert!(out.contains("REFUSED"), "{out}");
    // From a peer not on the list: refused.
    let closed = TestDns::start("allow_transfer = []\n");
    let out = closed.dig(&format!("{Z} AXFR"));
    assert!(out.contains("Transfer failed") || out.contains("REFUSED"), "{out}");
    assert!(closed.metrics_text().contains("edge_dns_transfers_total{result=\"refused\"} 1"));
}

#[test]
fn a_large_zone_is_transferred_in_several_messages() {
    let dns = TestDns::start("");
    let ops: Vec<String> = (0..3000)
        .map(|i| format!(r#"{{"op":"put","entity":{{"kind":"database","name":"db{i}","server":"mosh40"}}}}"#))
        .collect();
    dns.apply(&format!(r#"{{"ops":[{}]}}"#, ops.join(",")));
    let out = dns.dig(&format!("{Z} AXFR"));
    let size = out.lines().find(|l| l.starts_with(";; XFR size:")).unwrap_or_else(|| panic!("{out}"));
    // ";; XFR size: 3028 records (messages 12, bytes 123456)"
    let records: usize = size.split_whitespace().nth(3).unwrap().parse().unwrap();
    let messages: usize = size.split("messages ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
    assert!(records > 3000, "{size}");
    assert!(messages > 1, "{size}");
    let db = out.lines().find(|l| l.starts_with("db2999.mysql.mayfirst.local.")).unwrap_or_else(|| panic!("{size}"));
    assert!(db.ends_with("A\t10.0.0.40"), "{db}");
}

#[test]
fn a_move_is_seen_by_the_next_query_with_a_higher_serial() {
    let dns = TestDns::start("");
    let serial = |dns: &TestDns| -> u64 {
        let out = dns.dig(&format!("{Z} SOA +short"));
        out.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    let before = serial(&dns);
    assert_eq!(dns.dig(&format!("alice_wp.mysql.{Z} A +short")).trim(), "10.0.0.12");
    let v = dns.apply(
        r#"{"ops":[{"op":"put","entity":{"kind":"database","name":"alice_wp","member":"alice","server":"mosh40"}}]}"#,
    );
    // No wait, no reload: the very next query.
    assert_eq!(dns.dig(&format!("alice_wp.mysql.{Z} A +short")).trim(), "10.0.0.40");
    assert_eq!(serial(&dns), before + 1);
    assert_eq!(serial(&dns), v);
}

#[test]
fn metrics_count_queries_by_type_and_rcode() {
    let dns = TestDns::start("");
    dns.dig(&format!("alice_wp.mysql.{Z} A"));
    dns.dig(&format!("nobody.{Z} AAAA"));
    dns.dig(&format!("alice_wp.mysql.{Z} A +tcp"));
    let text = dns.metrics_text();
    // The UDP recorder flushes its latency histogram in batches and when idle.
    assert!(text.contains(r#"edge_dns_queries_total{qtype="A",rcode="No Error",transport="udp"} 1"#), "{text}");
    assert!(
        text.contains(r#"edge_dns_queries_total{qtype="AAAA",rcode="Non-Existent Domain",transport="udp"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"edge_dns_queries_total{qtype="A",rcode="No Error",transport="tcp"} 1"#), "{text}");
}
