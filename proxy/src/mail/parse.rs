//! The mail protocols' parsers: pure functions over bytes, each with
//! property tests and a cargo-fuzz target (`fuzz/fuzz_targets/mail_*.rs`).

pub mod data;
pub mod imap;
pub mod pop3;
pub mod sasl;
pub mod smtp;
