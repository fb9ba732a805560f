//! The Edge process: every listener reads one routing table.
//!
//! - [`app::Edge`]: opens the store and the [`routing_table::Table`], seeds a
//!   first start, binds the listeners and serves (entry point:
//!   [`app::Edge::start`], then [`app::Edge::serve`]).
//! - [`control`]: the control socket (HTTP/JSON over a Unix socket) and its
//!   client, used by `edgectl`.
//! - [`admin`]: Prometheus `/metrics`.
//! - [`config`]: `edge.toml`, checked into [`config::Config`].
//! - [`ssh`]: the SFTP/SSH forwarder; [`mail`]: the IMAP, POP3, submission
//!   and MX forwarders; [`sessions`]: their live sessions by user
//!   (`edgectl sessions`, `--kick`, `--hold`); [`limits`]: their per-client
//!   limits.
//! - dnsd (its own crate) answers from the same table.
//!
//! Later services (the HTTP proxy) plug into [`app::Edge`] and read the
//! same table.

pub mod admin;
pub mod app;
pub mod config;
pub mod control;
pub mod demo;
pub mod edgectl;
pub mod files;
pub mod http;
pub mod limits;
pub mod mail;
pub mod proxy_protocol;
pub mod sessions;
pub mod signals;
pub mod ssh;

pub use app::Edge;
pub use config::Config;
