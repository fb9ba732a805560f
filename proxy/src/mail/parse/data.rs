//! The body of SMTP DATA, relayed as a canonical stream (SMTP smuggling,
//! CVE-2023-51764 family).
//!
//! Only `<CRLF>.<CRLF>` ends the data. What reaches the backend is
//! rewritten so that it cannot see an end the edge did not see: a bare LF
//! or bare CR becomes CRLF, and a `.` that would then begin a line the
//! backend could read as the end is stuffed to `..`. So the backend finds
//! exactly one end of data, the one the edge found, however lenient it is.
//! Data already in canonical form passes through unchanged.

/// Incremental filter over DATA bytes.
#[derive(Debug, Clone)]
pub struct DataFilter {
    start: Start,
    /// The line so far is a single `.` after a real line start.
    dot: bool,
    /// A CR was read; whether an LF follows is still to come.
    cr: bool,
    done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Inside a line.
    No,
    /// After a real CRLF, or at the start of the data.
    Real,
    /// After a bare CR or LF (which the output turned into CRLF).
    Bare,
}

impl Default for DataFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl DataFilter {
    pub fn new() -> Self {
        Self { start: Start::Real, dot: false, cr: false, done: false }
    }

    /// Whether the end of data was seen.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Filters `input` into `out`; returns how many bytes of `input` were
    /// used: fewer than all when the end of data comes first (the rest is
    /// the client's next command). `out` then ends with `\r\n.\r\n`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        for (i, &b) in input.iter().enumerate() {
            if self.done {
                return i;
            }
            if self.cr {
                self.cr = false;
                if b == b'\n' {
                    self.end_line(true, out);
                    continue;
                }
                self.end_line(false, out);
            }
            match (b, self.start) {
                (b'\r', _) => self.cr = true,
                (b'\n', _) => self.end_line(false, out),
                (b'.', Start::Real) => {
                    out.push(b'.');
                    self.dot = true;
                    self.start = Start::No;
                }
                (b'.', Start::Bare) => {
                    out.extend_from_slice(b"..");
                    self.start = Start::No;
                }
                _ => {
                    out.push(b);
                    self.dot = false;
                    self.start = Start::No;
                }
            }
        }
        input.len()
    }

    /// A line ends, with a real CRLF or a bare CR or LF.
    fn end_line(&mut self, crlf: bool, out: &mut Vec<u8>) {
        if self.dot && crlf {
            out.extend_from_slice(b"\r\n");
            self.done = true;
            return;
        }
        if self.dot {
            // `.` then a bare line end: `..` keeps it a data line upstream.
            out.push(b'.');
        }
        out.extend_from_slice(b"\r\n");
        self.dot = false;
        self.start = if crlf { Start::Real } else { Start::Bare };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(input: &[u8]) -> (Vec<u8>, usize, bool) {
        let mut f = DataFilter::new();
        let mut out = Vec::new();
        let used = f.feed(input, &mut out);
        (out, used, f.done())
    }

    #[test]
    fn canonical_data_passes_unchanged_and_ends_at_crlf_dot_crlf() {
        let input = b"Subject: x\r\n\r\n..stuffed\r\nbody\r\n.\r\nQUIT\r\n";
        let (out, used, done) = run(input);
        assert!(done);
        assert_eq!(used, input.len() - 6);
        assert_eq!(out, &input[..used]);
        assert_eq!(run(b".\r\n"), (b".\r\n".to_vec(), 3, true), "an empty message");
    }

    #[test]
    fn smuggling_attempts_do_not_end_the_data_and_cannot_end_it_upstream() {
        for attempt in [&b"a\n.\nMAIL FROM:<x@y>\r\n"[..], b"a\r\n.\nRSET\r\n", b"a\n.\r\nRSET\r\n", b"a\r.\rRSET\r\n"]
        {
            let (out, used, done) = run(attempt);
            assert!(!done, "{:?}", String::from_utf8_lossy(attempt));
            assert_eq!(used, attempt.len());
            let text = [b"\r\n".as_slice(), &out].concat();
            assert!(!text.windows(5).any(|w| w == b"\r\n.\r\n"), "{:?}", String::from_utf8_lossy(&out));
        }
    }

    proptest! {
        #[test]
        fn backend_sees_the_end_only_where_the_edge_does(
            input in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a')], 0..60),
            split in 0usize..60,
        ) {
            let (whole, used, done) = run(&input);
            // The same in two pieces.
            let split = split.min(input.len());
            let mut f = DataFilter::new();
            let mut out = Vec::new();
            let mut n = f.feed(&input[..split], &mut out);
            if !f.done() { n += f.feed(&input[split..], &mut out); }
            prop_assert_eq!(&out, &whole);
            prop_assert_eq!(n, used);
            // No bare CR or LF reaches the backend.
            for (i, &b) in whole.iter().enumerate() {
                if b == b'\n' { prop_assert!(i > 0 && whole[i - 1] == b'\r'); }
                if b == b'\r' { prop_assert!(whole.get(i + 1) == Some(&b'\n')); }
            }
            // An end of data for the backend, only at the very end, and only when done.
            let text = [b"\r\n".as_slice(), &whole].concat();
            let ends: Vec<usize> = text.windows(5).enumerate().filter(|(_, w)| *w == b"\r\n.\r\n").map(|(i, _)| i).collect();
            if done {
                prop_assert_eq!(ends, vec![text.len() - 5]);
            } else {
                prop_assert!(ends.is_empty());
            }
        }
    }
}
