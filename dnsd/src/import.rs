//! Migration from BIND: a zone file (RFC 1035 master format, as BIND, Knot
//! and NSD read it) turned into one routing-table transaction.
//!
//! - `<db>.mysql.<zone>` names holding only A/AAAA records become databases;
//!   their server is the backend that already has exactly those addresses,
//!   or a new backend named after the first address (`db-10-1-16-146`).
//! - Every other name becomes an extra DNS name with its A, AAAA, CNAME, MX,
//!   SRV and TXT records; targets are written as absolute names.
//! - SOA and NS at the apex are left out: they come from `[dns]`.
//! - TTLs are left out (the `[dns] ttl` applies, short so moves are seen
//!   quickly) unless `keep_ttl` is set.
//!
//! Anything the table cannot hold (another record type, a wildcard, a
//! delegation, a name outside the zone) is an error naming it; nothing is
//! imported then.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use serde_json::{json, Value};

use crate::zonefile::{self, Data, Entry};

/// A backend already in the table, to reuse for databases on its addresses.
#[derive(Debug, Clone)]
pub struct KnownBackend {
    pub name: String,
    pub addresses: Vec<IpAddr>,
}

/// What an import will do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub databases: usize,
    pub new_backends: usize,
    pub dns_names: usize,
    pub records: usize,
    /// Apex SOA and NS records left to `[dns]`.
    pub skipped_apex: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} database(s), {} new backend(s), {} extra name(s) with {} record(s); {} apex SOA/NS record(s) left to [dns]",
            self.databases, self.new_backends, self.dns_names, self.records, self.skipped_apex
        )
    }
}

/// Reads `text` (a zone file for `origin`) into a transaction body
/// (`{"comment": ..., "ops": [...]}`) for the control API.
pub fn zone_file(text: &str, origin: &str, known: &[KnownBackend], keep_ttl: bool) -> Result<(Value, Summary), String> {
    let origin = origin.trim_end_matches('.').to_ascii_lowercase();
    let entries = zonefile::parse(text, &origin).map_err(|e| format!("zone file: {e}"))?;
    // Group every record by owner, relative to the origin.
    let mut names: BTreeMap<String, Vec<&Entry>> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut summary = Summary::default();
    for e in &entries {
        let rel = if e.owner == origin {
            String::new()
        } else if let Some(rel) = e.owner.strip_suffix(&format!(".{origin}")) {
            rel.to_string()
        } else {
            problems.push(format!("line {}: {} is outside the zone {origin}", e.line, e.owner));
            continue;
        };
        if rel.is_empty() && matches!(e.data, Data::Soa | Data::Ns(_)) {
            summary.skipped_apex += 1;
            continue;
        }
        names.entry(rel).or_default().push(e);
    }
    let mut backends: Vec<KnownBackend> = known.to_vec();
    let mut ops = Vec::new();
    for (rel, records) in &names {
        if rel.split('.').any(|l| l == "*") {
            problems.push(format!("line {}: {rel}: wildcard names are not supported", records[0].line));
            continue;
        }
        let db = rel.strip_suffix(".mysql").filter(|d| !d.contains('.'));
        let addresses: Vec<IpAddr> = records
            .iter()
            .filter_map(|e| match e.data {
                Data::A(a) => Some(IpAddr::V4(a)),
                Data::Aaaa(a) => Some(IpAddr::V6(a)),
                _ => None,
            })
            .collect();
        if let (Some(db), true) = (db, addresses.len() == records.len()) {
            let wanted: BTreeSet<IpAddr> = addresses.iter().copied().collect();
            let server = match backends.iter().find(|b| b.addresses.iter().copied().collect::<BTreeSet<_>>() == wanted)
            {
                Some(b) => b.name.clone(),
                None => {
                    let name = backend_name(addresses[0]);
                    ops.push(json!({"op": "put", "entity": {"kind": "backend", "name": name, "addresses": addresses}}));
                    backends.push(KnownBackend { name: name.clone(), addresses: addresses.clone() });
                    summary.new_backends += 1;
                    name
                }
            };
            ops.push(json!({"op": "put", "entity": {"kind": "database", "name": db, "server": server}}));
            summary.databases += 1;
            continue;
        }
        let mut out = Vec::new();
        for e in records {
            match value(&e.data) {
                Some((kind, value)) => {
                    let mut r = json!({"type": kind, "value": value});
                    if keep_ttl {
                        r["ttl"] = json!(e.ttl);
                    }
                    out.push(r);
                }
                None => problems.push(format!(
                    "line {}: {}: {} records are not supported",
                    e.line,
                    display(rel),
                    e.data.type_name()
                )),
            }
        }
        summary.records += out.len();
        summary.dns_names += 1;
        let name = if rel.is_empty() { "@" } else { rel.as_str() };
        ops.push(json!({"op": "put", "entity": {"kind": "dns_name", "name": name, "records": out}}));
    }
    if !problems.is_empty() {
        let mut msg = format!("{} record(s) cannot be imported; nothing was imported:\n", problems.len());
        for p in problems.iter().take(20) {
            let _ = writeln!(msg, "  {p}");
        }
        if problems.len() > 20 {
            let _ = writeln!(msg, "  ... and {} more", problems.len() - 20);
        }
        return Err(msg.trim_end().to_string());
    }
    let body = json!({"comment": format!("import of zone {origin}"), "ops": ops});
    Ok((body, summary))
}

fn display(rel: &str) -> &str {
    if rel.is_empty() {
        "@"
    } else {
        rel
    }
}

fn backend_name(addr: IpAddr) -> String {
    format!("db-{}", addr.to_string().replace(['.', ':'], "-")).trim_end_matches('-').to_string()
}

/// The table's type name and value for one record, or `None` for a type the
/// table does not hold (NS below the apex is a delegation: not held either).
fn value(data: &Data) -> Option<(&'static str, String)> {
    Some(match data {
        Data::A(a) => ("A", a.to_string()),
        Data::Aaaa(a) => ("AAAA", a.to_string()),
        Data::Cname(t) => ("CNAME", t.clone()),
        Data::Mx(p, t) => ("MX", format!("{p} {t}")),
        Data::Srv(p, w, port, t) => ("SRV", format!("{p} {w} {port} {t}")),
        Data::Txt(strings) => {
            let quoted: Vec<String> =
                strings.iter().map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))).collect();
            ("TXT", quoted.join(" "))
        }
        Data::Ns(_) | Data::Soa | Data::Other(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZONE: &str = "$ORIGIN mayfirst.local.\n$TTL 3600\n\
        @ IN SOA ns1.mayfirst.local. hostmaster.mayfirst.local. 2026010101 7200 3600 1209600 300\n\
        @ IN NS ns1.mayfirst.local.\n\
        ns1 IN A 127.0.0.1\n\
        alice_wp.mysql IN A 10.0.0.12\n\
        db2.mysql IN A 10.0.0.99\n\
        db3.mysql IN A 10.0.0.99\n\
        www 300 IN CNAME ns1\n\
        @ IN MX 10 mx.example.org.\n\
        @ IN TXT \"v=spf1\" \"-all\"\n\
        _mysql._tcp IN SRV 0 5 3306 alice_wp.mysql\n";

    #[test]
    fn databases_reuse_backends_and_other_names_become_extra_records() {
        let known = [KnownBackend { name: "mosh12".into(), addresses: vec!["10.0.0.12".parse().unwrap()] }];
        let (body, s) = zone_file(ZONE, "mayfirst.local", &known, false).unwrap();
        assert_eq!(s, Summary { databases: 3, new_backends: 1, dns_names: 4, records: 5, skipped_apex: 2 }, "{body:#}");
        let ops = body["ops"].as_array().unwrap();
        let find = |name: &str| ops.iter().find(|o| o["entity"]["name"] == name).unwrap()["entity"].clone();
        assert_eq!(find("alice_wp")["server"], "mosh12");
        assert_eq!(find("db2")["server"], "db-10-0-0-99");
        assert_eq!(find("db3")["server"], "db-10-0-0-99");
        assert_eq!(find("www")["records"][0], json!({"type": "CNAME", "value": "ns1.mayfirst.local"}));
        assert_eq!(find("_mysql._tcp")["records"][0]["value"], "0 5 3306 alice_wp.mysql.mayfirst.local");
        let apex = find("@");
        assert!(apex["records"].as_array().unwrap().contains(&json!({"type": "TXT", "value": "\"v=spf1\" \"-all\""})));
        // The transaction is one the table takes.
        let txn: routing_table::Transaction = serde_json::from_value(body).unwrap();
        let mut base = routing_table::Snapshot::empty();
        let seed: routing_table::Transaction = serde_json::from_value(json!({"ops": [
            {"op": "put", "entity": {"kind": "backend", "name": "mosh12", "addresses": ["10.0.0.12"]}}]}))
        .unwrap();
        base = routing_table::transaction::apply(&base, &seed).unwrap().snapshot;
        routing_table::transaction::apply(&base, &txn).unwrap();
    }

    #[test]
    fn what_the_table_cannot_hold_is_named_and_nothing_is_imported() {
        let zone = format!("{ZONE}*.wild IN A 10.0.0.1\nptr IN PTR x.example.org.\nsub IN NS ns.example.org.\n");
        let err = zone_file(&zone, "mayfirst.local", &[], false).unwrap_err();
        assert!(err.contains("3 record(s) cannot be imported"), "{err}");
        assert!(err.contains("*.wild: wildcard") && err.contains("ptr: PTR") && err.contains("sub: NS"), "{err}");
        assert!(err.contains("line 13: *.wild"), "{err}");
        let err =
            zone_file(&ZONE.replace("$ORIGIN mayfirst.local.", "$ORIGIN other.zone."), "mayfirst.local", &[], false)
                .unwrap_err();
        assert!(err.contains("other.zone is outside the zone mayfirst.local"), "{err}");
        assert!(zone_file("@ IN A", "mayfirst.local", &[], false).unwrap_err().starts_with("zone file: line 1:"));
    }
}
