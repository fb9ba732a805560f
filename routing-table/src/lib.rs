//! The routing table every Edge listener reads.
//!
//! One immutable [`Snapshot`] per version holds backends, members, sites,
//! mail logins and domains, SFTP logins, databases and extra DNS names, with
//! allocation-free lookups for each protocol ([`Snapshot::site_for_host`],
//! [`Snapshot::mail_backend`], [`Snapshot::recipient`],
//! [`Snapshot::sftp_login`], [`Snapshot::database_server`]).
//!
//! Changes are [`Transaction`]s: validated as a whole by
//! [`transaction::apply`], made durable by a [`Store`] ([`SqliteStore`] by
//! default), then published by the [`Table`]'s single writer through one
//! `ArcSwap`, with the new version sent on a `watch` channel.
//!
//! Entry point: [`Table::open`].

pub mod entity;
pub mod fixtures;
pub mod metrics;
pub mod name;
pub mod sharded;
pub mod snapshot;
pub mod store;
pub mod table;
pub mod transaction;

pub use entity::{
    Backend, BackendState, Database, DnsName, DnsRecord, Entity, EntityKey, Kind, MailDomain, MailLogin, Member,
    Protection, RecordType, SftpLogin, Site,
};
pub use metrics::TableMetrics;
pub use name::Name;
pub use snapshot::{HostMatch, Recipient, Snapshot};
#[cfg(feature = "etcd")]
pub use store::{EtcdConfig, EtcdStore};
pub use store::{Loaded, MemoryStore, SqliteStore, Store, StoreError, Who};
pub use table::{ApplyError, Committed, DryRun, OpenError, Stale, Table};
pub use transaction::{Change, Op, Transaction, TxnError};
