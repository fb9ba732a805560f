//! dnsd: the internal authoritative DNS server of Edge.
//!
//! Every answer is read from the routing-table snapshot current when the
//! query arrives (one snapshot per query, so an answer and its SOA never mix
//! versions), so moving a database is visible on the next query with no zone
//! file and no reload. The wire format is hickory-dns's (`hickory-proto`);
//! the request handling, the UDP and TCP loops, zone transfers and NOTIFY are
//! ours, for the reasons in `docs/dns.md`.
//!
//! - [`zone`]: which names exist and what they hold, over a snapshot;
//! - [`answer`]: one query in, one answer out;
//! - [`server`]: UDP sockets (SO_REUSEPORT, a thread each) and TCP;
//! - [`transfer`]: AXFR to secondaries; [`notify`]: NOTIFY on each version;
//!   [`tsig`]: signed queries, answers, transfers and NOTIFYs;
//! - [`import`]: a BIND zone file into one table transaction ([`zonefile`]
//!   reads the file).

pub mod answer;
pub mod cache;
pub mod config;
pub mod import;
pub mod metrics;
pub mod notify;
pub mod server;
pub mod transfer;
pub mod tsig;
pub mod zone;
pub mod zonefile;

pub use config::{DnsConfig, Settings};
pub use metrics::DnsMetrics;
pub use server::{BindError, Dnsd};
