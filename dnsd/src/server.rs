//! The listeners: on each address, several UDP sockets sharing the port
//! (SO_REUSEPORT, so the kernel spreads queries) each served by its own
//! thread, and one TCP listener (pipelined queries, a connection limit, an
//! idle timeout, zone transfers).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use routing_table::Table;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::answer::{answer, Outcome, Peer, Transport, MAX_UDP_PAYLOAD};
use crate::cache::AnswerCache;
use crate::config::Settings;
use crate::metrics::DnsMetrics;

/// How often a blocked UDP thread wakes to check for shutdown.
const UDP_WAKE: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
#[error("dns listener {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: io::Error,
}

/// dnsd with every socket bound, not yet serving.
pub struct Dnsd {
    settings: Arc<Settings>,
    table: Table,
    metrics: DnsMetrics,
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    addrs: Vec<SocketAddr>,
}

impl Dnsd {
    /// Binds every configured address, UDP and TCP on the same port (a port
    /// of 0 picks one free port for both).
    pub async fn bind(settings: Settings, table: Table, metrics: DnsMetrics) -> Result<Dnsd, BindError> {
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        let mut addrs = Vec::new();
        for &want in &settings.listen {
            let err = |source| BindError { addr: want, source };
            // With port 0, the kernel picks a free UDP port, which TCP may
            // hold (a client's ephemeral port): then pick another, a few
            // times. A port given explicitly is tried once.
            let tries = if want.port() == 0 { 8 } else { 1 };
            let mut attempt = 0;
            let (sockets, listener, addr) = loop {
                attempt += 1;
                let first = udp_socket(want).map_err(err)?;
                let addr = first.local_addr().map_err(err)?;
                let mut sockets = vec![first];
                for _ in 1..settings.udp_sockets {
                    sockets.push(udp_socket(addr).map_err(err)?);
                }
                match tcp_listener(addr) {
                    Ok(listener) => break (sockets, listener, addr),
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < tries => continue,
                    Err(e) => return Err(err(e)),
                }
            };
            udp.extend(sockets);
            tcp.push(listener);
            addrs.push(addr);
        }
        Ok(Dnsd { settings: Arc::new(settings), table, metrics, udp, tcp, addrs })
    }

    /// The bound addresses (UDP and TCP share each).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Serves until `shutdown` turns true.
    pub async fn serve(self, shutdown: watch::Receiver<bool>) {
        tracing::info!(addrs = ?self.addrs, zone = %self.settings.zone.origin, udp_sockets = self.udp.len() / self.addrs.len().max(1), "dns listening");
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, socket) in self.udp.into_iter().enumerate() {
            let (settings, table, metrics, stop) =
                (self.settings.clone(), self.table.clone(), self.metrics.clone(), stop.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || serve_udp(socket, &settings, &table, &metrics, &stop));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => tracing::error!(error = %e, "could not start a DNS UDP thread"),
            }
        }
        let limit = Arc::new(Semaphore::new(self.settings.tcp_max_connections));
        let mut tcp_tasks = Vec::new();
        for listener in self.tcp {
            let ctx = TcpContext {
                settings: self.settings.clone(),
                table: self.table.clone(),
                metrics: self.metrics.clone(),
                limit: limit.clone(),
            };
            tcp_tasks.push(tokio::spawn(accept_tcp(listener, ctx, shutdown.clone())));
        }
        let notifier = tokio::spawn(crate::notify::run(
            self.settings.clone(),
            self.table.clone(),
            self.metrics.clone(),
            shutdown.clone(),
        ));
        let mut stopping = shutdown;
        while !*stopping.borrow_and_update() {
            if stopping.changed().await.is_err() {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for t in tcp_tasks {
            let _ = t.await;
        }
        notifier.abort();
        let _ = tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join()))).await;
        tracing::info!("dns stopped");
    }
}

/// A TCP listener; on IPv6 addresses v6 only, so `0.0.0.0:53` and `[::]:53`
/// can both be listed, as with the UDP sockets.
fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    // Room for bursts while the thread is busy.
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    socket.set_read_timeout(Some(UDP_WAKE))?;
    Ok(socket.into())
}

fn serve_udp(socket: UdpSocket, settings: &Settings, table: &Table, metrics: &DnsMetrics, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(MAX_UDP_PAYLOAD.into());
    let mut cache = AnswerCache::new();
    let mut recorder = metrics.recorder("udp");
    while !stop.load(Ordering::Relaxed) {
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                recorder.flush();
                continue;
            }
            // ICMP errors from earlier sends surface here; keep serving.
            Err(_) => continue,
        };
        let started = Instant::now();
        let peer = Peer { ip: from.ip(), transport: Transport::Udp };
        if let Some(summary) = cache.answer_udp(settings, &table.load(), &buf[..len], peer, &mut out) {
            let _ = socket.send_to(&out, from);
            recorder.record(summary.qtype, summary.rcode, summary.truncated, started.elapsed().as_secs_f64());
        }
    }
}

#[derive(Clone)]
struct TcpContext {
    settings: Arc<Settings>,
    table: Table,
    metrics: DnsMetrics,
    limit: Arc<Semaphore>,
}

async fn accept_tcp(listener: TcpListener, ctx: TcpContext, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, from) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(got) => got,
                Err(e) => {
                    tracing::warn!(error = %e, "dns tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = ctx.limit.clone().try_acquire_owned() else {
            ctx.metrics.tcp_refused.inc();
            drop(stream);
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            ctx.metrics.tcp_connections.inc();
            if let Err(e) = serve_tcp(stream, from, &ctx).await {
                tracing::debug!(%from, error = %e, "dns tcp connection ended");
            }
            ctx.metrics.tcp_connections.dec();
            drop(permit);
        });
    }
}

/// Answers length-prefixed queries in order until the client closes, sends
/// garbage framing, or stays idle past the timeout.
async fn serve_tcp(stream: TcpStream, from: SocketAddr, ctx: &TcpContext) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut recorder = ctx.metrics.recorder("tcp");
    let mut buf = Vec::new();
    loop {
        let idle = ctx.settings.tcp_idle_timeout;
        let len = match tokio::time::timeout(idle, read.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        buf.resize(len, 0);
        match tokio::time::timeout(idle, read.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        let started = Instant::now();
        let snap = ctx.table.snapshot();
        let peer = Peer { ip: from.ip(), transport: Transport::Tcp };
        let (outcome, summary) = answer(&ctx.settings, &snap, &buf, peer);
        match outcome {
            Outcome::Reply(reply) => {
                recorder.record(summary.qtype, summary.rcode, false, started.elapsed().as_secs_f64());
                write_framed(&mut write, &reply, idle).await?;
            }
            Outcome::Drop => {}
            Outcome::Transfer(query, signed) => {
                recorder.record(summary.qtype, summary.rcode, false, started.elapsed().as_secs_f64());
                let result = crate::transfer::send(&ctx.settings.zone, &snap, &query, signed, &mut write, idle).await;
                let label = if result.is_ok() { "done" } else { "failed" };
                ctx.metrics.transfers.with_label_values(&[label]).inc();
                tracing::info!(%from, serial = ctx.settings.zone.serial(snap.version()), result = label, "zone transfer");
                result?;
            }
        }
    }
}

/// Writes one length-prefixed message; a client that does not read it
/// within `limit` loses the connection.
pub(crate) async fn write_framed<W: AsyncWriteExt + Unpin>(w: &mut W, msg: &[u8], limit: Duration) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("message over 65535 bytes"))?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    tokio::time::timeout(limit, w.write_all(&framed))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client not reading"))?
}
