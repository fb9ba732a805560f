//! Name normalisation: the one place that decides what a host, an
//! identifier or a login name looks like inside the table.
//!
//! Everything stored is normalised (lowercase ASCII, IDNA to punycode, no
//! trailing dot), so lookups compare bytes. The request path uses
//! [`HostBuf`], which lowercases into a stack buffer and never allocates.

use std::sync::Arc;

/// A normalised name as stored in the table. Cloning it is a refcount bump.
pub type Name = Arc<str>;

/// Longest DNS name we accept, in octets, without the trailing dot.
pub const MAX_HOST_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;
/// Longest backend, member, site or database name.
pub const MAX_IDENT_LEN: usize = 253;
/// Longest mail or SFTP login name (RFC 5321 path limit).
pub const MAX_USER_LEN: usize = 256;

/// Why a name was refused. The message is shown to admins as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {max} characters")]
    TooLong { max: usize },
    #[error("label `{label}` is longer than 63 characters")]
    LabelTooLong { label: String },
    #[error("has an empty label")]
    EmptyLabel,
    #[error("has an invalid character {ch:?}")]
    BadChar { ch: char },
    #[error("label `{label}` starts or ends with `-`")]
    Hyphen { label: String },
    #[error("is not a valid internationalised domain name")]
    Idna,
    #[error("has `*` somewhere other than a whole first label (`*.example.org`)")]
    BadWildcard,
}

/// A site host as written by an admin: an exact name or `*.suffix`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    Exact(Name),
    /// Matches any name that ends in `.suffix`, at any depth (as nginx does).
    Wildcard(Name),
}

impl HostPattern {
    /// Parses and normalises `*.example.org` or `www.example.org`.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        match input.strip_prefix("*.") {
            Some(rest) => Ok(Self::Wildcard(host(rest)?)),
            None => Ok(Self::Exact(host(input)?)),
        }
    }

    /// The stored spelling: `*.suffix` or the exact name.
    pub fn to_name(&self) -> Name {
        match self {
            Self::Exact(n) => n.clone(),
            Self::Wildcard(s) => format!("*.{s}").into(),
        }
    }
}

/// Normalises a DNS host name: IDNA to punycode, lowercase, no trailing dot.
pub fn host(input: &str) -> Result<Name, NameError> {
    let trimmed = input.strip_suffix('.').unwrap_or(input);
    if trimmed.is_empty() {
        return Err(NameError::Empty);
    }
    let ascii = if trimmed.is_ascii() {
        trimmed.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(trimmed).map_err(|_| NameError::Idna)?
    };
    check_host_ascii(&ascii)?;
    Ok(ascii.into())
}

fn check_host_ascii(name: &str) -> Result<(), NameError> {
    if name.len() > MAX_HOST_LEN {
        return Err(NameError::TooLong { max: MAX_HOST_LEN });
    }
    for label in name.split('.') {
        check_label(label)?;
    }
    Ok(())
}

fn check_label(label: &str) -> Result<(), NameError> {
    if label.is_empty() {
        return Err(NameError::EmptyLabel);
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(NameError::LabelTooLong { label: label.into() });
    }
    if let Some(ch) = label.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(if ch == '*' { NameError::BadWildcard } else { NameError::BadChar { ch } });
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(NameError::Hyphen { label: label.into() });
    }
    Ok(())
}

/// Normalises an identifier (backend, member, site, database): lowercase
/// `[a-z0-9._-]`, starting with a letter or digit.
pub fn ident(input: &str) -> Result<Name, NameError> {
    simple(input, MAX_IDENT_LEN, |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Normalises a database name, which must also be one DNS label because
/// dnsd answers `<db>.mysql.<zone>`.
pub fn database(input: &str) -> Result<Name, NameError> {
    let name = simple(input, MAX_LABEL_LEN, |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))?;
    check_label(&name)?;
    Ok(name)
}

/// Normalises a mail or SFTP login: lowercase `[a-z0-9._+@-]`.
pub fn user(input: &str) -> Result<Name, NameError> {
    simple(input, MAX_USER_LEN, |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '@'))
}

fn simple(input: &str, max: usize, ok: impl Fn(char) -> bool) -> Result<Name, NameError> {
    if input.is_empty() {
        return Err(NameError::Empty);
    }
    if input.len() > max {
        return Err(NameError::TooLong { max });
    }
    if let Some(ch) = input.chars().find(|c| !ok(*c)) {
        return Err(NameError::BadChar { ch });
    }
    if !input.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        let ch = input.chars().next().unwrap_or(' ');
        return Err(NameError::BadChar { ch });
    }
    Ok(input.to_ascii_lowercase().into())
}

/// Lowercases a name from the wire into a stack buffer, for lookups that
/// must not allocate. Names that are not ASCII or too long give `None`
/// (they cannot match anything stored).
pub struct HostBuf {
    buf: [u8; MAX_USER_LEN],
    len: usize,
}

impl HostBuf {
    /// Lowercases `input`, dropping one trailing dot.
    pub fn new(input: &str) -> Option<Self> {
        let input = input.strip_suffix('.').unwrap_or(input);
        if input.len() > MAX_USER_LEN || !input.is_ascii() {
            return None;
        }
        let mut buf = [0u8; MAX_USER_LEN];
        for (dst, src) in buf.iter_mut().zip(input.bytes()) {
            *dst = src.to_ascii_lowercase();
        }
        Some(Self { buf, len: input.len() })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII bytes were copied in, so this cannot fail.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_lowercased_and_lose_the_trailing_dot() {
        assert_eq!(&*host("WWW.Example.ORG.").unwrap(), "www.example.org");
    }

    #[test]
    fn idna_becomes_punycode() {
        assert_eq!(&*host("Bücher.example").unwrap(), "xn--bcher-kva.example");
    }

    #[test]
    fn bad_hosts_say_why() {
        assert_eq!(host(""), Err(NameError::Empty));
        assert_eq!(host("a..b"), Err(NameError::EmptyLabel));
        assert_eq!(host("-a.b"), Err(NameError::Hyphen { label: "-a".into() }));
        assert_eq!(host("a b"), Err(NameError::BadChar { ch: ' ' }));
        assert_eq!(host(&"a".repeat(64)), Err(NameError::LabelTooLong { label: "a".repeat(64) }));
        assert_eq!(host("a.*.b"), Err(NameError::BadWildcard));
    }

    #[test]
    fn wildcards_keep_their_suffix() {
        assert_eq!(HostPattern::parse("*.Example.org").unwrap(), HostPattern::Wildcard("example.org".into()));
        assert_eq!(HostPattern::parse("*.example.org").unwrap().to_name().as_ref(), "*.example.org");
        assert!(HostPattern::parse("*example.org").is_err());
    }

    #[test]
    fn idents_and_users() {
        assert_eq!(&*ident("MOSH12").unwrap(), "mosh12");
        assert!(ident("-x").is_err());
        assert!(ident("a/b").is_err());
        assert_eq!(&*user("Alice@Example.org").unwrap(), "alice@example.org");
        assert!(database("db.1").is_err());
        assert_eq!(&*database("DB_1").unwrap(), "db_1");
    }

    #[test]
    fn host_buf_matches_host_for_ascii() {
        let b = HostBuf::new("WWW.Example.org.").unwrap();
        assert_eq!(b.as_str(), "www.example.org");
        assert!(HostBuf::new("bücher.example").is_none());
    }
}
