//! A reader for RFC 1035 master files (what BIND, Knot and NSD load), for
//! the record types the table holds plus the apex SOA and NS.
//!
//! hickory-proto has a zone-file parser, but it reads owner names through
//! IDNA, which refuses `_` inside a label (`alice_wp.mysql`), the very names
//! a database import is about. This reader takes names as they are written
//! (lowercased, `\.`-style escapes refused), and its errors give the line.
//!
//! Supported: `$ORIGIN`, `$TTL`, owner inheritance (a line starting with
//! blank space), `@`, relative and absolute names, TTLs with units
//! (`1h30m`), class `IN`, parentheses across lines, `;` comments, quoted
//! strings. Not supported (an error): `$INCLUDE`, `$GENERATE`, other classes.

use std::net::{Ipv4Addr, Ipv6Addr};

/// One record, names absolute, lowercase, without the trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub line: usize,
    pub owner: String,
    pub ttl: u32,
    pub data: Data,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
    Mx(u16, String),
    Srv(u16, u16, u16, String),
    /// The character-strings, unquoted.
    Txt(Vec<String>),
    Ns(String),
    Soa,
    /// A type the table does not hold, by name.
    Other(String),
}

impl Data {
    pub fn type_name(&self) -> &str {
        match self {
            Data::A(_) => "A",
            Data::Aaaa(_) => "AAAA",
            Data::Cname(_) => "CNAME",
            Data::Mx(..) => "MX",
            Data::Srv(..) => "SRV",
            Data::Txt(_) => "TXT",
            Data::Ns(_) => "NS",
            Data::Soa => "SOA",
            Data::Other(t) => t,
        }
    }
}

/// Reads a whole file; `origin` applies until a `$ORIGIN` line.
pub fn parse(text: &str, origin: &str) -> Result<Vec<Entry>, String> {
    let mut origin = absolute(origin, "")?;
    let mut default_ttl: Option<u32> = None;
    let mut last_owner: Option<String> = None;
    let mut out = Vec::new();
    for (line_no, tokens, starts_blank) in logical_lines(text)? {
        let err = |m: String| format!("line {line_no}: {m}");
        let mut toks = tokens.iter().map(|t| t.as_str()).peekable();
        let Some(&first) = toks.peek() else { continue };
        match first.to_ascii_uppercase().as_str() {
            "$ORIGIN" => {
                toks.next();
                let name = toks.next().ok_or_else(|| err("$ORIGIN needs a name".into()))?;
                origin = absolute(name, &origin).map_err(err)?;
                continue;
            }
            "$TTL" => {
                toks.next();
                let t = toks.next().ok_or_else(|| err("$TTL needs a value".into()))?;
                default_ttl = Some(ttl(t).ok_or_else(|| err(format!("`{t}` is not a TTL")))?);
                continue;
            }
            d if d.starts_with('$') => return Err(err(format!("{first} is not supported"))),
            _ => {}
        }
        let owner = if starts_blank {
            last_owner.clone().ok_or_else(|| err("a record with no owner name before it".into()))?
        } else {
            let name = toks.next().unwrap_or_default();
            absolute(name, &origin).map_err(err)?
        };
        last_owner = Some(owner.clone());
        // TTL and class, in either order, both optional.
        let mut record_ttl = None;
        loop {
            let Some(&t) = toks.peek() else { return Err(err("a record with no type".into())) };
            if let Some(v) = ttl(t) {
                record_ttl = Some(v);
            } else if t.eq_ignore_ascii_case("IN") {
            } else if matches!(t.to_ascii_uppercase().as_str(), "CH" | "HS" | "CS") {
                return Err(err(format!("class {t}: only IN is supported")));
            } else {
                break;
            }
            toks.next();
        }
        let rtype = toks.next().unwrap_or_default().to_ascii_uppercase();
        let rest: Vec<&str> = toks.collect();
        let name_at = |i: usize| -> Result<String, String> {
            let n = rest.get(i).ok_or_else(|| err(format!("{rtype} data is missing a name")))?;
            absolute(n, &origin).map_err(err)
        };
        let num_at = |i: usize| -> Result<u16, String> {
            let n = rest.get(i).ok_or_else(|| err(format!("{rtype} data is missing a number")))?;
            n.parse().map_err(|_| err(format!("`{n}` is not a number from 0 to 65535")))
        };
        let count = |n: usize| -> Result<(), String> {
            if rest.len() == n {
                Ok(())
            } else {
                Err(err(format!("{rtype} takes {n} field(s), found {}", rest.len())))
            }
        };
        let data = match rtype.as_str() {
            "A" => {
                count(1)?;
                Data::A(rest[0].parse().map_err(|_| err(format!("`{}` is not an IPv4 address", rest[0])))?)
            }
            "AAAA" => {
                count(1)?;
                Data::Aaaa(rest[0].parse().map_err(|_| err(format!("`{}` is not an IPv6 address", rest[0])))?)
            }
            "CNAME" => {
                count(1)?;
                Data::Cname(name_at(0)?)
            }
            "NS" => {
                count(1)?;
                Data::Ns(name_at(0)?)
            }
            "MX" => {
                count(2)?;
                Data::Mx(num_at(0)?, name_at(1)?)
            }
            "SRV" => {
                count(4)?;
                Data::Srv(num_at(0)?, num_at(1)?, num_at(2)?, name_at(3)?)
            }
            "TXT" => {
                if rest.is_empty() {
                    return Err(err("TXT needs at least one string".into()));
                }
                Data::Txt(rest.iter().map(|s| unquote(s)).collect())
            }
            "SOA" => {
                count(7)?;
                Data::Soa
            }
            "" => return Err(err("a record with no type".into())),
            other if other.chars().all(|c| c.is_ascii_alphanumeric()) => Data::Other(other.to_string()),
            other => return Err(err(format!("`{other}` is not a record type"))),
        };
        let ttl = record_ttl.or(default_ttl).ok_or_else(|| err("no TTL and no $TTL before it".into()))?;
        out.push(Entry { line: line_no, owner, ttl, data });
    }
    Ok(out)
}

/// Splits the file into logical lines of tokens (parentheses joined,
/// comments dropped, quoted strings kept whole with their quotes), each with
/// its first line number and whether it started with blank space.
fn logical_lines(text: &str) -> Result<Vec<(usize, Vec<String>, bool)>, String> {
    let mut out = Vec::new();
    let mut tokens: Vec<String> = Vec::new();
    let mut depth = 0usize;
    let mut start = (0usize, false);
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if depth == 0 {
            start = (line_no, line.starts_with([' ', '\t']));
        }
        let mut chars = line.chars().peekable();
        let mut cur = String::new();
        let flush = |cur: &mut String, tokens: &mut Vec<String>| {
            if !cur.is_empty() {
                tokens.push(std::mem::take(cur));
            }
        };
        while let Some(c) = chars.next() {
            match c {
                ';' => break,
                '"' => {
                    flush(&mut cur, &mut tokens);
                    let mut s = String::from('"');
                    let mut closed = false;
                    while let Some(c) = chars.next() {
                        s.push(c);
                        if c == '\\' {
                            s.extend(chars.next());
                        } else if c == '"' {
                            closed = true;
                            break;
                        }
                    }
                    if !closed {
                        return Err(format!("line {line_no}: a quoted string is not closed"));
                    }
                    tokens.push(s);
                }
                '(' => {
                    flush(&mut cur, &mut tokens);
                    depth += 1;
                }
                ')' => {
                    flush(&mut cur, &mut tokens);
                    depth = depth.checked_sub(1).ok_or_else(|| format!("line {line_no}: `)` without `(`"))?;
                }
                c if c.is_whitespace() => flush(&mut cur, &mut tokens),
                c => cur.push(c),
            }
        }
        flush(&mut cur, &mut tokens);
        if depth == 0 && !tokens.is_empty() {
            out.push((start.0, std::mem::take(&mut tokens), start.1));
        }
    }
    if depth > 0 {
        return Err(format!("line {}: `(` is never closed", start.0));
    }
    Ok(out)
}

/// `name` made absolute against `origin`: lowercase, no trailing dot.
fn absolute(name: &str, origin: &str) -> Result<String, String> {
    if name == "@" {
        return Ok(origin.to_string());
    }
    if name.contains('\\') {
        return Err(format!("`{name}`: escapes in names are not supported"));
    }
    let (body, fq) = match name.strip_suffix('.') {
        Some(b) => (b, true),
        None => (name, false),
    };
    if body.is_empty() || body.split('.').any(|l| l.is_empty() || l.len() > 63) {
        return Err(format!("`{name}` is not a valid name"));
    }
    let body = body.to_ascii_lowercase();
    Ok(if fq || origin.is_empty() { body } else { format!("{body}.{origin}") })
}

/// A TTL: seconds, or with units (`1h30m`, `2d`, `1W`).
fn ttl(s: &str) -> Option<u32> {
    if s.is_empty() || !s.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if let Ok(v) = s.parse::<u32>() {
        return Some(v);
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return None,
        };
        total += num.parse::<u64>().ok()? * unit;
        num.clear();
    }
    if !num.is_empty() {
        return None;
    }
    u32::try_from(total).ok()
}

fn unquote(s: &str) -> String {
    let Some(inner) = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else { return s.to_string() };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_usual_forms() {
        let text = "$ORIGIN Example.ORG.\n$TTL 1h\n\
            @ IN SOA ns1 hostmaster ( 1 7200\n   3600 1209600 300 ) ; the SOA\n\
            \tIN NS ns1.example.org.\n\
            alice_wp.mysql 60 IN A 10.0.0.1\n\
            www IN 300 CNAME alice_wp.mysql\n\
            _sip._tcp SRV 0 5 5060 sip\n\
            txt TXT \"a b\" \"c\\\"d\" plain\n\
            $ORIGIN sub.example.org.\n\
            x CAA 0 issue \"ca.example\"\n";
        let e = parse(text, "ignored.test").unwrap();
        assert_eq!(e.len(), 7);
        assert_eq!((e[0].owner.as_str(), e[0].ttl, &e[0].data), ("example.org", 3600, &Data::Soa));
        assert_eq!((e[1].owner.as_str(), &e[1].data), ("example.org", &Data::Ns("ns1.example.org".into())));
        assert_eq!((e[2].owner.as_str(), e[2].ttl), ("alice_wp.mysql.example.org", 60));
        assert_eq!(e[3].data, Data::Cname("alice_wp.mysql.example.org".into()));
        assert_eq!(e[3].ttl, 300);
        assert_eq!(e[4].data, Data::Srv(0, 5, 5060, "sip.example.org".into()));
        assert_eq!(e[5].data, Data::Txt(vec!["a b".into(), "c\"d".into(), "plain".into()]));
        assert_eq!((e[6].owner.as_str(), e[6].data.type_name(), e[6].line), ("x.sub.example.org", "CAA", 11));
    }

    #[test]
    fn errors_give_the_line() {
        let bad = |text: &str| parse(text, "example.org").unwrap_err();
        assert_eq!(bad("$TTL 60\nx A 10.0.0.300\n"), "line 2: `10.0.0.300` is not an IPv4 address");
        assert_eq!(bad("x A 10.0.0.1\n"), "line 1: no TTL and no $TTL before it");
        assert_eq!(bad("$TTL 60\nx MX 10\n"), "line 2: MX takes 2 field(s), found 1");
        assert_eq!(bad("$TTL 60\n$INCLUDE other\n"), "line 2: $INCLUDE is not supported");
        assert_eq!(bad("$TTL 60\nx CH A 10.0.0.1\n"), "line 2: class CH: only IN is supported");
        assert_eq!(bad("$TTL 60\n@ SOA a b ( 1 2 3\n"), "line 2: `(` is never closed");
        assert_eq!(bad("$TTL 60\nx TXT \"open\n"), "line 2: a quoted string is not closed");
        assert_eq!(bad("$TTL 60\n  A 10.0.0.1\n"), "line 2: a record with no owner name before it");
        assert_eq!(ttl("1h30m"), Some(5400));
        assert_eq!(ttl("1x"), None);
    }
}
