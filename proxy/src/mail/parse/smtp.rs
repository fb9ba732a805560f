//! SMTP command lines (RFC 5321, RFC 3207 STARTTLS, RFC 4954 AUTH): a pure
//! parser of one line, and the paths of MAIL and RCPT.

/// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4).
pub const MAX_LINE: usize = 512;
/// Longest AUTH line or SASL response, CRLF included (RFC 4954 §4).
pub const MAX_AUTH_LINE: usize = 12_288;
/// Longest path (RFC 5321 §4.5.3.1.3).
const MAX_PATH: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    StartTls,
    /// `AUTH mechanism [initial-response]`; mechanism upper-cased.
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    /// `MAIL FROM:<path> [params]`: the address (empty for `<>`) and the
    /// parameters as written.
    Mail {
        from: String,
        params: String,
    },
    /// `RCPT TO:<path> [params]`.
    Rcpt {
        to: String,
        params: String,
    },
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    /// Anything else, upper-cased.
    Other(String),
}

/// Parses one line, without its line ending. Errors are the text of a
/// `501 5.5.2` reply.
pub fn parse_line(line: &[u8]) -> Result<Command, &'static str> {
    if line.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return Err("NUL, CR or LF in the command");
    }
    let text = std::str::from_utf8(line).map_err(|_| "the command is not UTF-8")?;
    let (verb, rest) = text.split_once(' ').unwrap_or((text, ""));
    if verb.is_empty() || verb.len() > 10 || !verb.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("unknown command");
    }
    let verb = verb.to_ascii_uppercase();
    let limit = if verb == "AUTH" { MAX_AUTH_LINE } else { MAX_LINE };
    if line.len() + 2 > limit {
        return Err("line too long");
    }
    let rest = rest.trim_end_matches(' ');
    let none = |c: Command| if rest.is_empty() { Ok(c) } else { Err("no arguments expected") };
    Ok(match verb.as_str() {
        "EHLO" | "HELO" => {
            let name = rest.trim();
            if name.is_empty() || name.contains(' ') || name.len() > 255 {
                return Err("give one domain or address literal");
            }
            if verb == "EHLO" {
                Command::Ehlo(name.to_string())
            } else {
                Command::Helo(name.to_string())
            }
        }
        "STARTTLS" => none(Command::StartTls)?,
        "DATA" => none(Command::Data)?,
        "RSET" => none(Command::Rset)?,
        "QUIT" => none(Command::Quit)?,
        "NOOP" => Command::Noop,
        "VRFY" => Command::Vrfy,
        "HELP" => Command::Help,
        "BDAT" => Command::Bdat,
        "AUTH" => {
            let mut words = rest.split(' ');
            let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
            let initial = words.next().map(str::to_string);
            if mechanism.is_empty() || words.next().is_some() {
                return Err("AUTH takes a mechanism and an optional initial response");
            }
            Command::Auth { mechanism, initial }
        }
        "MAIL" => {
            let (from, params) = path(rest, "FROM:")?;
            Command::Mail { from, params }
        }
        "RCPT" => {
            let (to, params) = path(rest, "TO:")?;
            if to.is_empty() {
                return Err("a recipient cannot be empty");
            }
            Command::Rcpt { to, params }
        }
        _ => Command::Other(verb),
    })
}

/// `FROM:<a@b> params` → (`a@b`, `params`). A source route (`@x,@y:`) is
/// dropped; the address must be `local@domain` (or empty).
fn path(rest: &str, keyword: &str) -> Result<(String, String), &'static str> {
    // Compared as bytes: the client's text may put a multi-byte character
    // across the keyword's end, where a `str` slice would panic.
    let matches =
        rest.as_bytes().get(..keyword.len()).is_some_and(|head| head.eq_ignore_ascii_case(keyword.as_bytes()));
    if !matches {
        return Err("syntax: MAIL FROM:<address> or RCPT TO:<address>");
    }
    let rest = rest[keyword.len()..].trim_start_matches(' ');
    let Some(inner) = rest.strip_prefix('<') else { return Err("the address must be in <>") };
    let Some(close) = inner.find('>') else { return Err("the address must be in <>") };
    let (mut address, params) = (&inner[..close], inner[close + 1..].trim_start_matches(' '));
    if close > MAX_PATH {
        return Err("the address is too long");
    }
    if address.starts_with('@') {
        address = address.split_once(':').map(|(_, a)| a).ok_or("bad source route")?;
    }
    if !address.is_empty() {
        let (local, domain) = address.rsplit_once('@').ok_or("the address needs a domain")?;
        if local.is_empty() || domain.is_empty() || address.chars().any(|c| c.is_control() || c == ' ' || c == '<') {
            return Err("bad address");
        }
    }
    if params.chars().any(char::is_control) {
        return Err("bad parameters");
    }
    Ok((address.to_string(), params.to_string()))
}

/// Encodes `value` as xtext (RFC 3461 §4), for XCLIENT attributes.
pub fn xtext(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commands_and_paths() {
        assert_eq!(parse_line(b"ehlo client.example"), Ok(Command::Ehlo("client.example".into())));
        assert_eq!(parse_line(b"HELO [192.0.2.1]"), Ok(Command::Helo("[192.0.2.1]".into())));
        assert_eq!(parse_line(b"STARTTLS"), Ok(Command::StartTls));
        assert_eq!(
            parse_line(b"MAIL FROM:<a@b.example> BODY=8BITMIME"),
            Ok(Command::Mail { from: "a@b.example".into(), params: "BODY=8BITMIME".into() })
        );
        assert_eq!(parse_line(b"mail from: <>"), Ok(Command::Mail { from: String::new(), params: String::new() }));
        assert_eq!(
            parse_line(b"RCPT TO:<@relay.example:bob@c.example>"),
            Ok(Command::Rcpt { to: "bob@c.example".into(), params: String::new() })
        );
        assert_eq!(parse_line(b"AUTH PLAIN"), Ok(Command::Auth { mechanism: "PLAIN".into(), initial: None }));
        assert_eq!(
            parse_line(b"AUTH login YWxpY2U="),
            Ok(Command::Auth { mechanism: "LOGIN".into(), initial: Some("YWxpY2U=".into()) })
        );
        assert_eq!(parse_line(b"XCLIENT ADDR=1.2.3.4"), Ok(Command::Other("XCLIENT".into())));
        for bad in [&b"RCPT TO:<>"[..], b"RCPT TO:bob@c", b"MAIL FROM:<a>", b"EHLO", b"DATA now", b"MAIL <a@b>"] {
            assert!(parse_line(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        // Found by cargo-fuzz: a multi-byte character across the end of
        // `TO:` once made the parser slice inside it and panic.
        assert!(parse_line("RCPT AR\u{0705}TP  ".as_bytes()).is_err());
        assert!(parse_line("MAIL F\u{00e9}:<a@b>".as_bytes()).is_err());
        let long_auth = format!("AUTH PLAIN {}", "A".repeat(12_000));
        assert!(parse_line(long_auth.as_bytes()).is_ok(), "AUTH lines may be long (RFC 4954)");
        let long_mail = format!("MAIL FROM:<{}@b>", "a".repeat(600));
        assert_eq!(parse_line(long_mail.as_bytes()), Err("line too long"));
    }

    #[test]
    fn xtext_escapes_plus_equals_and_non_printables() {
        assert_eq!(xtext("192.0.2.1"), "192.0.2.1");
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
    }

    proptest! {
        #[test]
        fn never_panics(line in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = parse_line(&line);
        }

        #[test]
        fn never_panics_on_text_after_a_verb(verb in "(MAIL|RCPT|AUTH|EHLO) ", rest in "\\PC{0,40}") {
            let _ = parse_line(format!("{verb}{rest}").as_bytes());
        }

        #[test]
        fn recipients_round_trip(local in "[a-z0-9.+_-]{1,30}", domain in "[a-z0-9-]{1,20}\\.[a-z]{2,5}") {
            let address = format!("{local}@{domain}");
            prop_assert_eq!(parse_line(format!("RCPT TO:<{address}>").as_bytes()),
                            Ok(Command::Rcpt { to: address, params: String::new() }));
        }

        #[test]
        fn xtext_output_is_printable_without_plus_or_equals_unescaped(value in ".{0,40}") {
            let x = xtext(&value);
            prop_assert!(x.bytes().all(|b| (b'!'..=b'~').contains(&b) && b != b'='));
        }
    }
}
