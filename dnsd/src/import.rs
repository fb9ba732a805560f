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

use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::serialize::txt::Parser;
use serde_json::{json, Value};

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
    let origin = crate::config::fqdn(origin)?;
    let (file_origin, sets) =
        Parser::new(text, None, Some(origin.clone())).parse().map_err(|e| format!("zone file: {e}"))?;
    if file_origin.to_lowercase() != origin {
        return Err(format!("the file is for `{file_origin}`, not `{origin}`"));
    }
    // Group every record by owner, relative to the origin.
    let mut names: BTreeMap<String, Vec<(RecordType, u32, RData)>> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut summary = Summary::default();
    for set in sets.values() {
        let owner = set.name().to_lowercase();
        let Some(rel) = relative(&origin, &owner) else {
            problems.push(format!("{owner}: outside the zone {origin}"));
            continue;
        };
        for record in set.records_without_rrsigs() {
            let rtype = record.record_type();
            if rel.is_empty() && matches!(rtype, RecordType::SOA | RecordType::NS) {
                summary.skipped_apex += 1;
                continue;
            }
            names.entry(rel.clone()).or_default().push((rtype, record.ttl, record.data.clone()));
        }
    }
    let mut backends: Vec<KnownBackend> = known.to_vec();
    let mut ops = Vec::new();
    for (rel, records) in &names {
        if rel.starts_with('*') || rel.contains(".*") {
            problems.push(format!("{rel}: wildcard names are not supported"));
            continue;
        }
        let db = rel.strip_suffix(".mysql").filter(|d| !d.contains('.'));
        let addresses: Vec<IpAddr> = records
            .iter()
            .filter_map(|(_, _, d)| match d {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
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
        for (rtype, ttl, data) in records {
            match value(data) {
                Some((kind, value)) => {
                    let mut r = json!({"type": kind, "value": value});
                    if keep_ttl {
                        r["ttl"] = json!(ttl);
                    }
                    out.push(r);
                }
                None => problems.push(format!("{}: {rtype} records are not supported", display(rel))),
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

fn relative(origin: &Name, name: &Name) -> Option<String> {
    if !origin.zone_of(name) {
        return None;
    }
    // `num_labels` leaves out a leading `*` (RFC 4034 label count).
    let keep = name.iter().count() - origin.iter().count();
    let labels: Vec<String> = name.iter().take(keep).map(|l| String::from_utf8_lossy(l).to_ascii_lowercase()).collect();
    Some(labels.join("."))
}

fn backend_name(addr: IpAddr) -> String {
    format!("db-{}", addr.to_string().replace(['.', ':'], "-")).trim_end_matches('-').to_string()
}

fn target(n: &Name) -> String {
    n.to_ascii().trim_end_matches('.').to_string()
}

/// The table's type name and value for one record, or `None` for a type the
/// table does not hold.
fn value(data: &RData) -> Option<(&'static str, String)> {
    Some(match data {
        RData::A(a) => ("A", a.0.to_string()),
        RData::AAAA(a) => ("AAAA", a.0.to_string()),
        RData::CNAME(c) => ("CNAME", target(&c.0)),
        RData::MX(mx) => ("MX", format!("{} {}", mx.preference, target(&mx.exchange))),
        RData::SRV(s) => ("SRV", format!("{} {} {} {}", s.priority, s.weight, s.port, target(&s.target))),
        RData::TXT(t) => {
            let strings: Vec<String> = t
                .txt_data
                .iter()
                .map(|s| format!("\"{}\"", String::from_utf8_lossy(s).replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            ("TXT", strings.join(" "))
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZONE: &str = "$ORIGIN mayfirst.local.\n$TTL 3600\n\
        @ IN SOA ns1.mayfirst.local. hostmaster.mayfirst.local. 2026010101 7200 3600 1209600 300\n\
        @ IN NS ns1.mayfirst.local.\n\
        ns1 IN A 127.0.0.1\n\
        db1.mysql IN A 10.0.0.12\n\
        db2.mysql IN A 10.0.0.99\n\
        db3.mysql IN A 10.0.0.99\n\
        www 300 IN CNAME ns1\n\
        @ IN MX 10 mx.example.org.\n\
        @ IN TXT \"v=spf1\" \"-all\"\n\
        _mysql._tcp IN SRV 0 5 3306 db1.mysql\n";

    #[test]
    fn databases_reuse_backends_and_other_names_become_extra_records() {
        let known = [KnownBackend { name: "mosh12".into(), addresses: vec!["10.0.0.12".parse().unwrap()] }];
        let (body, s) = zone_file(ZONE, "mayfirst.local", &known, false).unwrap();
        assert_eq!(s, Summary { databases: 3, new_backends: 1, dns_names: 4, records: 5, skipped_apex: 2 }, "{body:#}");
        let ops = body["ops"].as_array().unwrap();
        let find = |name: &str| ops.iter().find(|o| o["entity"]["name"] == name).unwrap()["entity"].clone();
        assert_eq!(find("db1")["server"], "mosh12");
        assert_eq!(find("db2")["server"], "db-10-0-0-99");
        assert_eq!(find("db3")["server"], "db-10-0-0-99");
        assert_eq!(find("www")["records"][0], json!({"type": "CNAME", "value": "ns1.mayfirst.local"}));
        assert_eq!(find("_mysql._tcp")["records"][0]["value"], "0 5 3306 db1.mysql.mayfirst.local");
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
        let err = zone_file(ZONE, "other.zone", &[], false).unwrap_err();
        assert!(err.contains("not `other.zone.`") || err.contains("outside"), "{err}");
        assert!(zone_file("@ IN A", "mayfirst.local", &[], false).unwrap_err().starts_with("zone file:"));
    }
}
