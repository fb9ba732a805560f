//! The routes the load test owns: backends `lt-b<i>` (each with its own
//! loopback address, so an answer names its backend), and members `lt-m<i>`,
//! each with a database, a site, an SFTP/SSH login `lt-u<i>` and a mailbox
//! login `lt-x<i>`. All names start with `lt-`/`lt_`, so a run against a
//! live edge touches nothing else.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

pub struct Fixture {
    pub backends: usize,
    pub members: usize,
}

impl Fixture {
    pub fn backend(&self, i: usize) -> String {
        format!("lt-b{i}")
    }

    /// Backend `i`'s address: 127.0.100.(i+1).
    pub fn address(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, 100, (i + 1) as u8)
    }

    /// The backend an address belongs to.
    pub fn backend_of(&self, addr: Ipv4Addr) -> Option<usize> {
        let [a, b, c, d] = addr.octets();
        let i = usize::from(d).checked_sub(1)?;
        ((a, b, c) == (127, 0, 100) && i < self.backends).then_some(i)
    }

    pub fn member(&self, i: usize) -> String {
        format!("lt-m{i}")
    }

    pub fn database(&self, i: usize) -> String {
        format!("lt_m{i}_db")
    }

    pub fn site(&self, i: usize) -> String {
        format!("lt-m{i}-site")
    }

    pub fn sftp_user(&self, i: usize) -> String {
        format!("lt-u{i}")
    }

    pub fn mail_user(&self, i: usize) -> String {
        format!("lt-x{i}")
    }

    /// Whether a ledger route is a database (the others are logins).
    pub fn is_database(&self, route: &str) -> bool {
        route.starts_with("lt_m") && route.ends_with("_db")
    }

    /// The backend an identity backend's name (`lt-b<i>`) is.
    pub fn backend_index(&self, name: &str) -> Option<usize> {
        let i: usize = name.strip_prefix("lt-b")?.parse().ok()?;
        (i < self.backends).then_some(i)
    }

    /// Member `i` starts on backend `i % backends`.
    pub fn initial_backend(&self, member: usize) -> usize {
        member % self.backends
    }

    /// One transaction that creates (or resets) every route of the fixture.
    pub fn transaction(&self) -> Value {
        let mut ops = Vec::new();
        for b in 0..self.backends {
            ops.push(json!({"op": "put", "entity": {"kind": "backend", "name": self.backend(b),
                "addresses": [self.address(b).to_string()]}}));
        }
        for m in 0..self.members {
            let b = self.backend(self.initial_backend(m));
            ops.push(json!({"op": "put", "entity": {"kind": "member", "name": self.member(m), "note": "loadtest"}}));
            ops.push(json!({"op": "put", "entity": {"kind": "database", "name": self.database(m),
                "member": self.member(m), "server": b}}));
            ops.push(json!({"op": "put", "entity": {"kind": "site", "name": self.site(m), "member": self.member(m),
                "hosts": [format!("m{m}.lt.test")], "backends": [{"backend": b}]}}));
            ops.push(json!({"op": "put", "entity": {"kind": "sftp_login", "user": self.sftp_user(m),
                "member": self.member(m), "backend": b}}));
            ops.push(json!({"op": "put", "entity": {"kind": "mail_login", "user": self.mail_user(m),
                "member": self.member(m), "backend": b}}));
        }
        json!({"comment": "loadtest fixture", "ops": ops})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_name_their_backend() {
        let f = Fixture { backends: 8, members: 3 };
        for b in 0..8 {
            assert_eq!(f.backend_of(f.address(b)), Some(b));
        }
        assert_eq!(f.backend_of(Ipv4Addr::new(127, 0, 100, 9)), None);
        assert_eq!(f.backend_of(Ipv4Addr::new(127, 0, 0, 1)), None);
        let txn: routing_table::Transaction = serde_json::from_value(f.transaction()).unwrap();
        let applied = routing_table::transaction::apply(&routing_table::Snapshot::empty(), &txn).unwrap();
        assert_eq!(applied.snapshot.counts().databases, 3);
        assert_eq!(applied.snapshot.counts().sftp_logins, 3);
        assert_eq!(applied.snapshot.counts().mail_logins, 3);
        assert_eq!(f.backend_index("lt-b7"), Some(7));
        assert_eq!(f.backend_index("lt-b8"), None);
        assert!(f.is_database(&f.database(2)) && !f.is_database(&f.sftp_user(2)));
    }
}
