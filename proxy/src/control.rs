//! The control socket: HTTP/1.1 + JSON over a Unix socket, for `edgectl`
//! and `curl --unix-socket`.
//!
//! Each connection's peer is checked with SO_PEERCRED before a byte is read:
//! root, Edge's own uid, and the configured uids/gids are served; anyone
//! else gets 403 and a warning in the log. The API itself is in [`api`].

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::{Access, ControlConfig};

pub mod api;
pub mod client;

pub use api::Api;

/// The peer of one control connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    pub allowed: bool,
}

/// The bound control socket, ready to serve.
pub struct ControlListener {
    listener: UnixListener,
    path: PathBuf,
    config: ControlConfig,
    access: Arc<ArcSwap<Access>>,
}

/// Could not bind the control socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    #[error("control socket {path}: another process is serving it")]
    InUse { path: PathBuf },
    #[error("control socket {path}: exists and is not a socket; not removing it")]
    NotASocket { path: PathBuf },
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl ControlListener {
    /// Binds the socket, replacing a stale one left by a crash (but never a
    /// live one, nor a file that is not a socket), and sets its mode.
    pub async fn bind(config: &ControlConfig) -> Result<Self, BindError> {
        let path = config.socket.clone();
        let io_err = |source| BindError::Io { path: path.clone(), source };
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !meta.file_type().is_socket() {
                return Err(BindError::NotASocket { path });
            }
            if UnixStream::connect(&path).await.is_ok() {
                return Err(BindError::InUse { path });
            }
            std::fs::remove_file(&path).map_err(io_err)?;
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let listener = UnixListener::bind(&path).map_err(io_err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(config.mode)).map_err(io_err)?;
        let access = Arc::new(ArcSwap::from_pointee(config.access.clone()));
        Ok(Self { listener, path, config: config.clone(), access })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the allow-list (SIGHUP) for connections accepted afterwards.
    pub fn access_handle(&self) -> Arc<ArcSwap<Access>> {
        self.access.clone()
    }

    /// Serves until `shutdown` turns true, then lets open requests finish
    /// (up to 5 s) and removes the socket file.
    pub async fn serve(self, api: Arc<Api>, mut shutdown: watch::Receiver<bool>) {
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        let own_uid = own_uid();
        let mut tasks = JoinSet::new();
        loop {
            let permit = tokio::select! {
                p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
                _ = crate::signals::stopped(&mut shutdown) => break,
            };
            let stream = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "control accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = crate::signals::stopped(&mut shutdown) => break,
            };
            let peer = peer_of(&stream, own_uid, &self.access.load());
            if !peer.allowed {
                tracing::warn!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "control socket: peer not allowed");
            }
            let api = api.clone();
            let max_body = self.config.max_body_bytes;
            tasks.spawn(async move {
                let service = service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, std::convert::Infallible>(api.handle(req, peer, max_body).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "control connection ended with an error");
                }
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        // The file first, while the socket still answers: a new edge
        // (an upgrade) waiting for this path then binds its own, and this
        // one never removes that.
        let _ = std::fs::remove_file(&self.path);
        drop(self.listener);
        let _ =
            tokio::time::timeout(Duration::from_secs(5), async { while tasks.join_next().await.is_some() {} }).await;
    }
}

fn peer_of(stream: &UnixStream, own_uid: u32, access: &Access) -> Peer {
    match stream.peer_cred() {
        Ok(cred) => {
            let (uid, gid) = (cred.uid(), cred.gid());
            let allowed = uid == 0 || uid == own_uid || access.uids.contains(&uid) || access.gids.contains(&gid);
            Peer { uid, gid, pid: cred.pid(), allowed }
        }
        Err(e) => {
            tracing::warn!(error = %e, "control socket: no peer credentials");
            Peer { uid: u32::MAX, gid: u32::MAX, pid: None, allowed: false }
        }
    }
}

/// The effective uid of this process (owner of `/proc/self`).
pub fn own_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}
