//! The internal zone as a view over one routing-table snapshot: which names
//! exist and what records they hold. Nothing is copied out of the table; a
//! lookup reads the snapshot it is given, so an answer and its SOA always come
//! from one version.
//!
//! Names, relative to the origin:
//! - the apex: SOA, NS (from the config) and the `@` extra records;
//! - `<db>.mysql`: A/AAAA of the database's server (a backend);
//! - `<backend>`: A/AAAA of that backend;
//! - every extra DNS name, with its records. An extra name wins over a
//!   database or backend of the same name.
//!
//! A name with nothing stored at it but names below it (`mysql` itself) is an
//! empty non-terminal: it exists, with no records (NODATA, not NXDOMAIN).

use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record};
use routing_table::{Backend, DnsName, RecordType as TableType, Snapshot};

/// The zone's own parameters (from `[dns]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneParams {
    /// Lowercase, fully qualified.
    pub origin: Name,
    pub nameservers: Vec<Name>,
    pub hostmaster: Name,
    pub ttl: u32,
    pub soa_ttl: u32,
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    pub minimum: u32,
    pub serial_offset: u32,
}

impl ZoneParams {
    /// The SOA serial for a table version. Versions rise by one per
    /// transaction and survive restarts, so the serial only moves forward in
    /// RFC 1982 terms (a step of 1, wrapping at 2^32).
    pub fn serial(&self, version: u64) -> u32 {
        (version as u32).wrapping_add(self.serial_offset)
    }

    pub fn soa(&self, version: u64) -> Record {
        let soa = SOA::new(
            self.nameservers[0].clone(),
            self.hostmaster.clone(),
            self.serial(version),
            self.refresh as i32,
            self.retry as i32,
            self.expire as i32,
            self.minimum,
        );
        Record::from_rdata(self.origin.clone(), self.soa_ttl, RData::SOA(soa))
    }

    /// The SOA for the authority section of a negative answer: its TTL is
    /// min(SOA TTL, MINIMUM) (RFC 2308 §3).
    pub fn negative_soa(&self, version: u64) -> Record {
        let mut soa = self.soa(version);
        soa.ttl = self.soa_ttl.min(self.minimum);
        soa
    }

    /// The query name relative to the origin, lowercase (`""` for the apex),
    /// or `None` when the name is outside the zone.
    pub fn relative(&self, name: &Name) -> Option<String> {
        if !self.origin.zone_of(name) {
            return None;
        }
        // Not `num_labels`, which leaves out a leading `*` (RFC 4034).
        let keep = name.iter().count() - self.origin.iter().count();
        let mut out = String::with_capacity(name.len());
        for (i, label) in name.iter().take(keep).enumerate() {
            if i > 0 {
                out.push('.');
            }
            for &b in label {
                // A byte that cannot appear in a table name (a dot inside a
                // label, a space) makes the name one the table cannot hold.
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'*' {
                    out.push(b.to_ascii_lowercase() as char);
                } else {
                    out.push('\u{0}');
                }
            }
        }
        Some(out)
    }

    /// The absolute name for a relative one.
    fn absolute(&self, rel: &str) -> Option<Name> {
        if rel.is_empty() || rel == "@" {
            return Some(self.origin.clone());
        }
        Name::from_ascii(rel).ok()?.append_domain(&self.origin).ok()
    }

    /// Every record at `rel` (relative, lowercase), owned by `owner`:
    /// `None` when the name does not exist, an empty list for an empty
    /// non-terminal.
    pub fn node(&self, snap: &Snapshot, rel: &str, owner: &Name) -> Option<Vec<Record>> {
        let mut out = Vec::new();
        if rel.is_empty() {
            out.push(self.soa(snap.version()));
            for ns in &self.nameservers {
                out.push(Record::from_rdata(self.origin.clone(), self.ttl, RData::NS(NS(ns.clone()))));
            }
            if let Some(extra) = snap.dns_name("@") {
                self.push_extra(&mut out, extra, owner);
            }
            return Some(out);
        }
        if rel.contains('\u{0}') {
            return None;
        }
        if let Some(extra) = snap.dns_name(rel) {
            self.push_extra(&mut out, extra, owner);
        } else if let Some(server) =
            rel.strip_suffix(".mysql").filter(|db| !db.contains('.')).and_then(|db| snap.database_server(db))
        {
            self.push_addresses(&mut out, server, owner);
        } else if let Some(backend) = snap.backend(rel) {
            self.push_addresses(&mut out, backend, owner);
        } else if !snap.dns_has_children(rel) {
            return None;
        }
        Some(out)
    }

    fn push_addresses(&self, out: &mut Vec<Record>, backend: &Backend, owner: &Name) {
        for addr in &backend.addresses {
            let data = match addr {
                IpAddr::V4(a) => RData::A(A(*a)),
                IpAddr::V6(a) => RData::AAAA(AAAA(*a)),
            };
            out.push(Record::from_rdata(owner.clone(), self.ttl, data));
        }
    }

    fn push_extra(&self, out: &mut Vec<Record>, extra: &DnsName, owner: &Name) {
        for r in &extra.records {
            // Values were checked when the table took them; one that still
            // fails (a target too long once the origin is added) is skipped.
            if let Some(data) = rdata(r.rtype, &r.value) {
                out.push(Record::from_rdata(owner.clone(), r.ttl.unwrap_or(self.ttl), data));
            }
        }
    }

    /// Every record of the zone, SOA first (and not repeated), for a zone
    /// transfer. Names that cannot be DNS names (a backend called
    /// `a..b`) are left out.
    pub fn all_records<'s>(&'s self, snap: &'s Snapshot) -> impl Iterator<Item = Record> + 's {
        let apex = self.node(snap, "", &self.origin).unwrap_or_default();
        let extras = snap.dns_names().filter(|n| &*n.name != "@").flat_map(move |n| {
            let mut out = Vec::new();
            if let Some(owner) = self.absolute(&n.name) {
                self.push_extra(&mut out, n, &owner);
            }
            out
        });
        let databases = snap.databases().flat_map(move |d| {
            let mut out = Vec::new();
            let rel = format!("{}.mysql", d.name);
            if snap.dns_name(&rel).is_none() {
                if let (Some(owner), Some(server)) = (self.absolute(&rel), snap.backend(&d.server)) {
                    self.push_addresses(&mut out, server, &owner);
                }
            }
            out
        });
        let backends = snap.backends().flat_map(move |b| {
            let mut out = Vec::new();
            let shadowed = snap.dns_name(&b.name).is_some()
                || b.name.strip_suffix(".mysql").is_some_and(|db| snap.database(db).is_some());
            if !shadowed {
                if let Some(owner) = self.absolute(&b.name) {
                    self.push_addresses(&mut out, b, &owner);
                }
            }
            out
        });
        apex.into_iter().chain(extras).chain(databases).chain(backends)
    }
}

/// Record data from a table value (zone-file syntax, already normalised;
/// targets are absolute names).
pub fn rdata(rtype: TableType, value: &str) -> Option<RData> {
    let mut parts = value.split_whitespace();
    let target = |t: Option<&str>| Name::from_ascii(format!("{}.", t?.trim_end_matches('.'))).ok();
    let num = |t: Option<&str>| t?.parse::<u16>().ok();
    Some(match rtype {
        TableType::A => RData::A(A(value.parse().ok()?)),
        TableType::Aaaa => RData::AAAA(AAAA(value.parse().ok()?)),
        TableType::Cname => RData::CNAME(CNAME(target(parts.next())?)),
        TableType::Mx => RData::MX(MX::new(num(parts.next())?, target(parts.next())?)),
        TableType::Srv => {
            let (p, w, port) = (num(parts.next())?, num(parts.next())?, num(parts.next())?);
            RData::SRV(SRV::new(p, w, port, target(parts.next())?))
        }
        TableType::Txt => RData::TXT(TXT::new(txt_strings(value))),
    })
}

/// Splits TXT data into character-strings: quoted strings as written
/// (`"a b" "c"`), or the whole value as one; each at most 255 bytes.
pub fn txt_strings(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let v = value.trim();
    if v.starts_with('"') {
        let mut cur = String::new();
        let mut quoted = false;
        let mut chars = v.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted => {
                    out.push(std::mem::take(&mut cur));
                    quoted = false;
                }
                '"' => quoted = true,
                '\\' if quoted => cur.extend(chars.next()),
                c if quoted => cur.push(c),
                _ => {}
            }
        }
        if quoted {
            out.push(cur);
        }
    } else {
        out.push(v.to_string());
    }
    out.into_iter().flat_map(|s| chunks(&s)).collect()
}

fn chunks(s: &str) -> Vec<String> {
    if s.len() <= 255 {
        return vec![s.to_string()];
    }
    let mut out = Vec::new();
    let mut start = 0;
    while start < s.len() {
        let mut end = (start + 255).min(s.len());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        out.push(s[start..end].to_string());
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_values_split_into_strings() {
        assert_eq!(txt_strings("v=spf1 -all"), vec!["v=spf1 -all"]);
        assert_eq!(txt_strings(r#""a b" "c\"d""#), vec!["a b", "c\"d"]);
        let long = "x".repeat(300);
        assert_eq!(txt_strings(&long).iter().map(String::len).collect::<Vec<_>>(), vec![255, 45]);
    }

    #[test]
    fn serials_wrap_forward() {
        let z = crate::DnsConfig { serial_offset: u32::MAX, ..Default::default() }.validate().unwrap().zone;
        assert_eq!(z.serial(0), u32::MAX);
        assert_eq!(z.serial(1), 0);
    }
}
