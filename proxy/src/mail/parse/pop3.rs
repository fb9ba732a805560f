//! POP3 commands before login (RFC 1939, RFC 2449, RFC 2595, RFC 5034): a
//! pure parser of one command line.

/// Longest command line, CRLF included (RFC 2449).
pub const MAX_LINE: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Capa,
    Stls,
    /// `USER name`: the rest of the line.
    User(Vec<u8>),
    /// `PASS password`: the rest of the line (passwords may hold spaces).
    Pass(Vec<u8>),
    /// `AUTH mechanism [initial-response]`; mechanism upper-cased.
    Auth {
        mechanism: String,
        initial: Option<Vec<u8>>,
    },
    Quit,
    Noop,
    /// Anything else, upper-cased.
    Other(String),
}

/// Parses one line, without its line ending.
pub fn parse_line(line: &[u8]) -> Result<Command, &'static str> {
    if line.len() + 2 > MAX_LINE {
        return Err("line too long");
    }
    if line.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return Err("NUL, CR or LF in the line");
    }
    let (keyword, rest) = match line.iter().position(|&b| b == b' ') {
        Some(at) => (&line[..at], Some(&line[at + 1..])),
        None => (line, None),
    };
    if keyword.is_empty() || keyword.len() > 8 || !keyword.iter().all(u8::is_ascii_alphabetic) {
        return Err("unknown command");
    }
    let keyword = String::from_utf8_lossy(keyword).to_ascii_uppercase();
    let arg = || rest.filter(|r| !r.is_empty()).map(<[u8]>::to_vec).ok_or("missing argument");
    Ok(match (keyword.as_str(), rest) {
        ("CAPA", None) => Command::Capa,
        ("STLS", None) => Command::Stls,
        ("QUIT", None) => Command::Quit,
        ("NOOP", None) => Command::Noop,
        ("CAPA" | "STLS" | "QUIT" | "NOOP", Some(_)) => return Err("no arguments expected"),
        ("USER", _) => Command::User(arg()?),
        ("PASS", _) => Command::Pass(arg()?),
        ("AUTH", _) => {
            let arg = arg()?;
            let mut words = arg.split(|&b| b == b' ');
            let mechanism = String::from_utf8_lossy(words.next().unwrap_or_default()).to_ascii_uppercase();
            let initial = words.next().map(<[u8]>::to_vec);
            if mechanism.is_empty() || words.next().is_some() || initial.as_ref().is_some_and(Vec::is_empty) {
                return Err("AUTH takes a mechanism and an optional initial response");
            }
            Command::Auth { mechanism, initial }
        }
        _ => Command::Other(keyword),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commands() {
        assert_eq!(parse_line(b"capa"), Ok(Command::Capa));
        assert_eq!(parse_line(b"STLS"), Ok(Command::Stls));
        assert_eq!(parse_line(b"USER alice"), Ok(Command::User(b"alice".to_vec())));
        assert_eq!(parse_line(b"PASS two words"), Ok(Command::Pass(b"two words".to_vec())));
        assert_eq!(parse_line(b"AUTH plain"), Ok(Command::Auth { mechanism: "PLAIN".into(), initial: None }));
        assert_eq!(
            parse_line(b"AUTH PLAIN AGEAYg=="),
            Ok(Command::Auth { mechanism: "PLAIN".into(), initial: Some(b"AGEAYg==".to_vec()) })
        );
        assert_eq!(parse_line(b"RETR 1"), Ok(Command::Other("RETR".into())));
        assert!(parse_line(b"USER").is_err());
        assert!(parse_line(b"USER ").is_err());
        assert!(parse_line(b"STLS now").is_err());
        assert!(parse_line(b"AUTH PLAIN a b").is_err());
        assert!(parse_line(&[b'A'; 300]).is_err());
        assert!(parse_line(b"PASS a\0b").is_err());
    }

    proptest! {
        #[test]
        fn never_panics(line in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_line(&line);
        }

        #[test]
        fn passwords_round_trip(password in "[ -~]{1,200}") {
            prop_assert_eq!(parse_line(format!("PASS {password}").as_bytes()), Ok(Command::Pass(password.into_bytes())));
        }
    }
}
