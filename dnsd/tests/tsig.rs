//! TSIG (RFC 8945) as BIND's `dig -y` checks it: signed answers over UDP and
//! TCP, every message of a multi-message zone transfer signed and chained,
//! transfers refused without the key, and NOTAUTH for a wrong secret or an
//! unknown key.

mod support;

use support::{status, TestDns};

const SECRET: &str = "ZWRnZS10ZXN0LXRzaWctc2VjcmV0LTAxMjM0NTY3ODk=";
const OTHER: &str = "b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldC1vdGhlcg==";

fn signed_dns() -> TestDns {
    let dns = TestDns::start(&format!(
        "transfer_key = \"xfr.mayfirst.local\"\n[[tsig_keys]]\nname = \"xfr.mayfirst.local\"\nsecret = \"{SECRET}\"\n"
    ));
    // Enough names for a transfer of several messages.
    let ops: Vec<String> = (0..1500)
        .map(|i| format!(r#"{{"op":"put","entity":{{"kind":"database","name":"db{i}","server":"mosh40"}}}}"#))
        .collect();
    dns.apply(&format!(r#"{{"ops":[{}]}}"#, ops.join(",")));
    dns
}

#[test]
fn signed_queries_get_signed_answers() {
    let dns = signed_dns();
    for transport in ["", "+tcp"] {
        let out =
            dns.dig(&format!("-y hmac-sha256:xfr.mayfirst.local:{SECRET} alice_wp.mysql.mayfirst.local A {transport}"));
        assert_eq!(status(&out), "NOERROR", "{out}");
        assert!(out.contains("TSIG PSEUDOSECTION") && out.contains("NOERROR 0"), "{out}");
        assert!(!out.contains("failure") && !out.contains("error"), "dig verified the answer: {out}");
    }
    // Unsigned queries still get plain answers.
    let out = dns.dig("alice_wp.mysql.mayfirst.local A");
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(!out.contains("TSIG PSEUDOSECTION"), "{out}");
}

#[test]
fn transfers_need_the_key_and_every_message_is_signed() {
    let dns = signed_dns();
    let out = dns.dig(&format!("-y hmac-sha256:xfr.mayfirst.local:{SECRET} mayfirst.local AXFR"));
    let size = out.lines().find(|l| l.starts_with(";; XFR size:")).unwrap_or_else(|| panic!("{out}"));
    let messages: usize = size.split("messages ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
    assert!(messages > 1, "{size}");
    assert!(!out.contains("failure") && !out.contains("Transfer failed"), "{out}");
    // One TSIG record per message, as dig prints them.
    assert_eq!(out.lines().filter(|l| l.contains("\tANY\tTSIG\t")).count(), messages, "{out}");
    // Without the key: refused, even from an allowed address.
    let out = dns.dig("mayfirst.local AXFR");
    assert!(out.contains("Transfer failed") || out.contains("REFUSED"), "{out}");
    assert!(!out.contains("db1499.mysql"), "{out}");
}

#[test]
fn wrong_secret_and_unknown_key_get_notauth() {
    let dns = signed_dns();
    let out = dns.dig(&format!("-y hmac-sha256:xfr.mayfirst.local:{OTHER} alice_wp.mysql.mayfirst.local A +tcp"));
    assert!(out.contains("NOTAUTH") || out.contains("BADSIG"), "{out}");
    assert!(!out.contains("10.0.0.12"), "{out}");
    let out = dns.dig(&format!("-y hmac-sha256:nobody.example:{SECRET} alice_wp.mysql.mayfirst.local A +tcp"));
    assert!(out.contains("NOTAUTH") || out.contains("BADKEY"), "{out}");
    assert!(!out.contains("10.0.0.12"), "{out}");
}
