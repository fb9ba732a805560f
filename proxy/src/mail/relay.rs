//! After login: bytes both ways, unparsed, until either side closes, the
//! session is idle too long, or it is kicked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use super::io::Conn;

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Closed,
    Idle,
    Kicked,
}

/// Bytes relayed each way.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub to_backend: u64,
    pub to_client: u64,
}

/// After one side closed, how long the other may still finish.
const LINGER: Duration = Duration::from_secs(5);

/// Relays until the end; what either side had buffered is passed on first.
pub async fn relay(client: Conn, upstream: Conn, idle: Duration, kick: Arc<Notify>) -> (End, Counts) {
    let (client, client_buf) = client.into_parts();
    let (upstream, upstream_buf) = upstream.into_parts();
    let (client_r, client_w) = tokio::io::split(client);
    let (upstream_r, upstream_w) = tokio::io::split(upstream);
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let touch = || last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    let to_backend = pump(client_r, upstream_w, client_buf, &up, &touch);
    let to_client = pump(upstream_r, client_w, upstream_buf, &down, &touch);
    tokio::pin!(to_backend, to_client);
    let watchdog = async {
        let tick = (idle / 4).min(Duration::from_secs(30));
        loop {
            tokio::time::sleep(tick).await;
            let quiet = start.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if quiet >= idle {
                return;
            }
        }
    };
    let end = tokio::select! {
        _ = &mut to_backend => {
            let _ = tokio::time::timeout(LINGER, &mut to_client).await;
            End::Closed
        }
        _ = &mut to_client => {
            let _ = tokio::time::timeout(LINGER, &mut to_backend).await;
            End::Closed
        }
        () = watchdog => End::Idle,
        () = kick.notified() => End::Kicked,
    };
    (end, Counts { to_backend: up.load(Ordering::Relaxed), to_client: down.load(Ordering::Relaxed) })
}

async fn pump<R, W>(mut from: R, mut to: W, first: Vec<u8>, count: &AtomicU64, touch: &impl Fn()) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if !first.is_empty() {
        to.write_all(&first).await?;
        to.flush().await?;
        count.fetch_add(first.len() as u64, Ordering::Relaxed);
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        touch();
    }
}
