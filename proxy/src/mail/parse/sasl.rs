//! SASL PLAIN (RFC 4616) and LOGIN credentials, shared by IMAP, POP3 and
//! SMTP submission.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// A user name and password from the client. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).finish_non_exhaustive()
    }
}

/// Why credentials were refused before any backend saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*`.
    Cancelled,
    /// Not base64, not `authzid NUL authcid NUL password`, or not UTF-8.
    Malformed,
    /// An authorisation identity other than the user (proxy login).
    Authzid,
}

impl SaslError {
    pub fn reason(self) -> &'static str {
        match self {
            SaslError::Cancelled => "Authentication cancelled",
            SaslError::Malformed => "Invalid authentication data",
            SaslError::Authzid => "Logging in as another user is not allowed",
        }
    }
}

/// Decodes one base64 SASL response line; `*` cancels, `=` is empty.
pub fn response(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    match line {
        b"*" => Err(SaslError::Cancelled),
        b"=" => Ok(Vec::new()),
        _ => STANDARD.decode(line).map_err(|_| SaslError::Malformed),
    }
}

/// The credentials in a decoded PLAIN message.
pub fn plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let user = std::str::from_utf8(authcid).map_err(|_| SaslError::Malformed)?;
    if user.is_empty() {
        return Err(SaslError::Malformed);
    }
    if !authzid.is_empty() && authzid != authcid {
        return Err(SaslError::Authzid);
    }
    Ok(Credentials { user: user.to_string(), password: password.to_vec() })
}

/// Credentials from a LOGIN-style user name and password (IMAP LOGIN,
/// POP3 USER/PASS, SASL LOGIN).
pub fn login(user: &[u8], password: &[u8]) -> Result<Credentials, SaslError> {
    let user = std::str::from_utf8(user).map_err(|_| SaslError::Malformed)?;
    if user.is_empty() || user.contains(['\0', '\r', '\n']) || password.contains(&0) {
        return Err(SaslError::Malformed);
    }
    Ok(Credentials { user: user.to_string(), password: password.to_vec() })
}

/// The base64 PLAIN message for `credentials` (empty authzid), as sent
/// upstream.
pub fn encode_plain(credentials: &Credentials) -> String {
    let mut message = Vec::with_capacity(credentials.user.len() + credentials.password.len() + 2);
    message.push(0);
    message.extend_from_slice(credentials.user.as_bytes());
    message.push(0);
    message.extend_from_slice(&credentials.password);
    STANDARD.encode(message)
}

pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_messages() {
        let ok = |u: &str, p: &str| Ok(Credentials { user: u.into(), password: p.into() });
        assert_eq!(plain(b"\0alice\0secret"), ok("alice", "secret"));
        assert_eq!(plain(b"alice\0alice\0secret"), ok("alice", "secret"));
        assert_eq!(plain(b"admin\0alice\0secret"), Err(SaslError::Authzid));
        assert_eq!(plain(b"\0alice"), Err(SaslError::Malformed));
        assert_eq!(plain(b"\0\0secret"), Err(SaslError::Malformed));
        assert_eq!(plain(b"\0a\0b\0c"), Err(SaslError::Malformed));
        assert_eq!(response(b"*"), Err(SaslError::Cancelled));
        assert_eq!(response(b"="), Ok(vec![]));
        assert_eq!(response(b"!!"), Err(SaslError::Malformed));
        assert!(!format!("{:?}", plain(b"\0alice\0secret").unwrap()).contains("secret"));
    }

    proptest! {
        #[test]
        fn plain_round_trips(user in "[a-z0-9@.]{1,40}", password in proptest::collection::vec(1u8..=255, 0..80)) {
            let c = Credentials { user, password };
            let decoded = response(encode_plain(&c).as_bytes()).unwrap();
            prop_assert_eq!(plain(&decoded), Ok(c));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = response(&bytes).map(|m| plain(&m));
        }
    }
}
