//! IMAP commands before login (RFC 9051, RFC 3501): a pure, incremental
//! parser over the bytes received so far.
//!
//! Only what the edge answers itself is understood: CAPABILITY, NOOP,
//! LOGOUT, ID, STARTTLS, LOGIN and AUTHENTICATE; any other command is
//! tokenised (so its literals are skipped correctly) and reported as
//! [`Command::Other`]. Arguments are atoms, quoted strings, literals
//! (`{n}` synchronising, `{n+}` LITERAL+) and parenthesised lists.

/// Longest line (outside literals) the edge reads before login.
pub const MAX_LINE: usize = 8192;
/// Largest literal before login: credentials only.
pub const MAX_LITERAL: usize = 8192;
/// Largest whole command, literals included.
pub const MAX_COMMAND: usize = 32 * 1024;
const MAX_TAG: usize = 64;

/// A command the edge understands before login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Capability,
    Noop,
    Logout,
    StartTls,
    /// `ID`; its parameters are ignored (the edge sends its own upstream).
    Id,
    Login {
        user: Vec<u8>,
        password: Vec<u8>,
    },
    /// `AUTHENTICATE mechanism [initial-response]`; the mechanism is
    /// upper-cased, the response is still base64 (`=` is an empty one).
    Authenticate {
        mechanism: String,
        initial: Option<Vec<u8>>,
    },
    /// Anything else, upper-cased: answered "log in first".
    Other(String),
}

/// What the bytes so far hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// One whole command, which used the first `used` bytes.
    Complete { tag: String, command: Command, used: usize },
    /// The command is not complete yet. `continuation`: a synchronising
    /// literal whose announcement ends at this offset waits for the
    /// server's `+` before the client sends it.
    More { continuation: Option<usize> },
    /// A malformed command: answer `BAD` with `tag` (or `*`). `used` is
    /// where the next command starts; `None` means the stream cannot be
    /// resynchronised (limits exceeded) and must be closed.
    Bad { tag: Option<String>, reason: &'static str, used: Option<usize> },
}

enum Token {
    Atom(String),
    Str(Vec<u8>),
    Open,
    Close,
}

enum Scan {
    Done(Vec<Token>, usize),
    More(Option<usize>),
    /// Why, and where scanning stopped: the command is skipped up to the
    /// first CRLF from there (past any literal it held).
    Bad(&'static str, usize),
    Fatal(&'static str),
}

/// Parses the first command in `buf`.
pub fn parse(buf: &[u8]) -> Step {
    let line_end = find_crlf(buf, 0);
    if line_end.is_none() && buf.len() > MAX_LINE {
        return Step::Bad { tag: None, reason: "line too long", used: None };
    }
    if buf.len() > MAX_COMMAND {
        return Step::Bad { tag: None, reason: "command too long", used: None };
    }
    let skip_line = |tag: Option<String>, reason, from: usize| match find_crlf(buf, from) {
        Some(end) => Step::Bad { tag, reason, used: Some(end + 2) },
        None => Step::More { continuation: None },
    };
    // tag SP name
    let tag_len = buf.iter().take_while(|&&b| is_atom_char(b) && b != b'+').count();
    if tag_len == 0 || tag_len > MAX_TAG || buf.get(tag_len) != Some(&b' ') {
        if line_end.is_none() && buf.len() <= tag_len {
            return Step::More { continuation: None };
        }
        return skip_line(None, "Invalid tag", 0);
    }
    let tag = String::from_utf8_lossy(&buf[..tag_len]).into_owned();
    let name_start = tag_len + 1;
    let name_len = buf[name_start..].iter().take_while(|&&b| is_atom_char(b)).count();
    if name_len == 0 {
        return skip_line(Some(tag), "Missing command", 0);
    }
    let name = String::from_utf8_lossy(&buf[name_start..name_start + name_len]).to_ascii_uppercase();
    let (tokens, used) = match scan(buf, name_start + name_len) {
        Scan::Done(tokens, used) => (tokens, used),
        Scan::More(continuation) => return Step::More { continuation },
        Scan::Bad(reason, at) => return skip_line(Some(tag), reason, at),
        Scan::Fatal(reason) => return Step::Bad { tag: Some(tag), reason, used: None },
    };
    let bad = |reason| Step::Bad { tag: Some(tag.clone()), reason, used: Some(used) };
    let command = match name.as_str() {
        "CAPABILITY" | "NOOP" | "LOGOUT" | "STARTTLS" if !tokens.is_empty() => return bad("Unexpected arguments"),
        "CAPABILITY" => Command::Capability,
        "NOOP" => Command::Noop,
        "LOGOUT" => Command::Logout,
        "STARTTLS" => Command::StartTls,
        "ID" => Command::Id,
        "LOGIN" => match tokens.as_slice() {
            [user, password] => match (astring(user), astring(password)) {
                (Some(user), Some(password)) => Command::Login { user, password },
                _ => return bad("LOGIN takes two strings"),
            },
            _ => return bad("LOGIN takes two arguments"),
        },
        "AUTHENTICATE" => match tokens.as_slice() {
            [Token::Atom(mechanism)] => {
                Command::Authenticate { mechanism: mechanism.to_ascii_uppercase(), initial: None }
            }
            [Token::Atom(mechanism), Token::Atom(initial)] => Command::Authenticate {
                mechanism: mechanism.to_ascii_uppercase(),
                initial: Some(initial.clone().into_bytes()),
            },
            _ => return bad("AUTHENTICATE takes a mechanism and an optional initial response"),
        },
        _ => Command::Other(name),
    };
    Step::Complete { tag, command, used }
}

/// An astring: an atom or a string (quoted or literal).
fn astring(token: &Token) -> Option<Vec<u8>> {
    match token {
        Token::Atom(a) => Some(a.clone().into_bytes()),
        Token::Str(s) => Some(s.clone()),
        Token::Open | Token::Close => None,
    }
}

/// Tokenises the arguments from `pos` (just after the command name) to the
/// command's final CRLF.
fn scan(buf: &[u8], mut pos: usize) -> Scan {
    let mut tokens = Vec::new();
    let mut depth = 0usize;
    // Whether the previous token needs a separator (SP, `)` or CRLF) next.
    let mut after_literal = false;
    loop {
        let Some(&b) = buf.get(pos) else { return Scan::More(None) };
        match b {
            b'\r' => {
                return match buf.get(pos + 1) {
                    None => Scan::More(None),
                    Some(b'\n') if depth == 0 => Scan::Done(tokens, pos + 2),
                    Some(b'\n') => Scan::Bad("Unbalanced parentheses", pos),
                    Some(_) => Scan::Bad("CR without LF", pos),
                };
            }
            b' ' => {
                after_literal = false;
                pos += 1;
                match buf.get(pos) {
                    Some(b' ') => return Scan::Bad("Two spaces", pos),
                    Some(b'\r') if depth == 0 => return Scan::Bad("Trailing space", pos),
                    _ => {}
                }
                continue;
            }
            _ if after_literal && b != b')' => return Scan::Bad("A literal must be followed by SP or CRLF", pos),
            b'(' => {
                depth += 1;
                if depth > 8 {
                    return Scan::Bad("Lists nested too deep", pos);
                }
                tokens.push(Token::Open);
                pos += 1;
            }
            b')' => {
                if depth == 0 {
                    return Scan::Bad("Unbalanced parentheses", pos);
                }
                depth -= 1;
                tokens.push(Token::Close);
                pos += 1;
            }
            b'"' => {
                let mut value = Vec::new();
                pos += 1;
                loop {
                    match buf.get(pos) {
                        None => return Scan::More(None),
                        Some(b'"') => break,
                        Some(b'\\') => match buf.get(pos + 1) {
                            None => return Scan::More(None),
                            Some(&c @ (b'"' | b'\\')) => {
                                value.push(c);
                                pos += 2;
                            }
                            Some(_) => return Scan::Bad("Bad escape in quoted string", pos),
                        },
                        Some(b'\r' | b'\n' | 0) => return Scan::Bad("CR, LF or NUL in quoted string", pos),
                        Some(&c) => {
                            value.push(c);
                            pos += 1;
                        }
                    }
                }
                pos += 1;
                tokens.push(Token::Str(value));
            }
            b'{' => {
                let digits = buf[pos + 1..].iter().take_while(|b| b.is_ascii_digit()).count();
                let mut end = pos + 1 + digits;
                let plus = buf.get(end) == Some(&b'+');
                if plus {
                    end += 1;
                }
                match (buf.get(end), buf.get(end + 1), buf.get(end + 2)) {
                    (None, ..) | (Some(b'}'), None, _) | (Some(b'}'), Some(b'\r'), None) => return Scan::More(None),
                    (Some(b'}'), Some(b'\r'), Some(b'\n')) if digits > 0 => {}
                    _ => return Scan::Bad("Bad literal", pos),
                }
                if digits > 5 {
                    return Scan::Fatal("Literal too big");
                }
                let len: usize = std::str::from_utf8(&buf[pos + 1..pos + 1 + digits])
                    .ok()
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(usize::MAX);
                if len > MAX_LITERAL {
                    return Scan::Fatal("Literal too big");
                }
                let data = end + 3;
                if !plus && buf.len() == data {
                    return Scan::More(Some(data));
                }
                if buf.len() < data + len {
                    return Scan::More(None);
                }
                tokens.push(Token::Str(buf[data..data + len].to_vec()));
                pos = data + len;
                after_literal = true;
            }
            _ if is_atom_char(b) || b == b']' || b == b'%' || b == b'*' => {
                let len =
                    buf[pos..].iter().take_while(|&&c| is_atom_char(c) || c == b']' || c == b'%' || c == b'*').count();
                tokens.push(Token::Atom(String::from_utf8_lossy(&buf[pos..pos + len]).into_owned()));
                pos += len;
                if !matches!(buf.get(pos), None | Some(b' ' | b'\r' | b')' | b'(')) {
                    return Scan::Bad("Bad character in atom", pos);
                }
            }
            _ => return Scan::Bad("Bad character", pos),
        }
    }
}

/// ATOM-CHAR of RFC 9051: any CHAR except atom-specials.
fn is_atom_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?.windows(2).position(|w| w == b"\r\n").map(|p| p + from)
}

/// Quotes `value` for an IMAP command sent upstream: a synchronising
/// literal's announcement, for any bytes (the caller waits for `+`).
pub fn literal_prefix(value: &[u8]) -> String {
    format!("{{{}}}\r\n", value.len())
}

/// Quotes a string that has no CR, LF, NUL or non-ASCII byte as a quoted
/// string (for ID values), or `None`.
pub fn quoted(value: &str) -> Option<String> {
    if value.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
        return None;
    }
    Some(format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn complete(input: &[u8]) -> (String, Command) {
        match parse(input) {
            Step::Complete { tag, command, used } => {
                assert_eq!(used, input.len());
                (tag, command)
            }
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn simple_commands() {
        assert_eq!(complete(b"a1 capability\r\n"), ("a1".into(), Command::Capability));
        assert_eq!(complete(b"A NOOP\r\n").1, Command::Noop);
        assert_eq!(complete(b"x LOGOUT\r\n").1, Command::Logout);
        assert_eq!(complete(b"x StartTLS\r\n").1, Command::StartTls);
        assert_eq!(complete(b"x ID (\"name\" \"mutt\" \"version\" {3+}\r\n1.2)\r\n").1, Command::Id);
        assert_eq!(complete(b"x ID NIL\r\n").1, Command::Id);
        assert_eq!(complete(b"x SELECT INBOX\r\n").1, Command::Other("SELECT".into()));
    }

    #[test]
    fn login_with_atoms_quoted_strings_and_literals() {
        let login = |u: &str, p: &str| Command::Login { user: u.into(), password: p.into() };
        assert_eq!(complete(b"a LOGIN alice secret\r\n").1, login("alice", "secret"));
        assert_eq!(complete(b"a LOGIN \"alice\" \"se \\\"cr\\\\et\"\r\n").1, login("alice", "se \"cr\\et"));
        assert_eq!(complete(b"a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n").1, login("alice", "secret"));
        assert_eq!(complete(b"a LOGIN alice {8}\r\nse\r\ncret\r\n").1, login("alice", "se\r\ncret"));
    }

    #[test]
    fn synchronising_literals_ask_for_a_continuation_once() {
        let input = b"a LOGIN {5}\r\n";
        assert_eq!(parse(input), Step::More { continuation: Some(input.len()) });
        // Part of the literal arrived: the `+` was sent already.
        assert_eq!(parse(b"a LOGIN {5}\r\nal"), Step::More { continuation: None });
        // LITERAL+ never waits.
        assert_eq!(parse(b"a LOGIN {5+}\r\n"), Step::More { continuation: None });
        assert_eq!(parse(b"a LOGIN {5"), Step::More { continuation: None });
        assert_eq!(parse(b"a LOGIN alice"), Step::More { continuation: None });
    }

    #[test]
    fn authenticate_with_and_without_initial_response() {
        assert_eq!(
            complete(b"a AUTHENTICATE plain\r\n").1,
            Command::Authenticate { mechanism: "PLAIN".into(), initial: None }
        );
        assert_eq!(
            complete(b"a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n").1,
            Command::Authenticate { mechanism: "PLAIN".into(), initial: Some(b"AGFsaWNlAHNlY3JldA==".to_vec()) }
        );
    }

    #[test]
    fn malformed_commands_are_bad_and_skipped_to_the_next_line() {
        let bad = |input: &[u8]| match parse(input) {
            Step::Bad { used, .. } => used,
            other => panic!("{other:?}"),
        };
        assert_eq!(bad(b"a LOGIN alice\r\nb NOOP\r\n"), Some(15));
        assert_eq!(bad(b"a LOGIN  alice x\r\n"), Some(18));
        assert_eq!(bad(b"+ NOOP\r\n"), Some(8));
        // Skipped to the end of the command, past the literal: its bytes are
        // never read as a command of their own.
        assert_eq!(bad(b"a LOGIN {3}\r\nabcX\r\nb NOOP\r\n"), Some(19), "only SP or CRLF after a literal");
        // A literal holding a command line: skipped with its command, not run.
        assert_eq!(bad(b"a LOGIN {12}\r\nx STARTTLS\r\nX\r\n"), Some(29));
        assert_eq!(bad(b"a LOGIN {99999999999}\r\n"), None, "literal size overflow");
        assert_eq!(bad(b"a LOGIN {9000}\r\n"), None, "literal over the limit");
        assert_eq!(bad(&[b'a'; MAX_LINE + 1]), None, "line over the limit");
        assert_eq!(bad(b"a NOOP x\r\n"), Some(10));
    }

    proptest! {
        #[test]
        fn never_panics_and_used_is_within_the_buffer(input in proptest::collection::vec(any::<u8>(), 0..300)) {
            match parse(&input) {
                Step::Complete { used, .. } | Step::Bad { used: Some(used), .. } => {
                    prop_assert!(used > 0 && used <= input.len());
                }
                Step::More { continuation: Some(at) } => prop_assert!(at <= input.len()),
                _ => {}
            }
        }

        #[test]
        fn any_credentials_survive_literals(user in proptest::collection::vec(any::<u8>(), 0..100),
                                            password in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut input = format!("t1 LOGIN {{{}+}}\r\n", user.len()).into_bytes();
            input.extend_from_slice(&user);
            input.extend_from_slice(format!(" {{{}}}\r\n", password.len()).as_bytes());
            let wait = input.len();
            prop_assert_eq!(parse(&input), Step::More { continuation: Some(wait) });
            input.extend_from_slice(&password);
            input.extend_from_slice(b"\r\n");
            prop_assert_eq!(complete(&input).1, Command::Login { user, password });
        }

        #[test]
        fn quoted_round_trips(value in "[ -~]{0,40}") {
            let line = format!("q LOGIN {} x\r\n", quoted(&value).unwrap());
            prop_assert_eq!(complete(line.as_bytes()).1, Command::Login { user: value.into_bytes(), password: b"x".to_vec() });
        }
    }
}
