//! NOTIFY (RFC 1996): on every new table version, tell each configured
//! secondary that the zone changed, so it asks for the SOA and transfers at
//! once instead of waiting for its refresh timer. Each NOTIFY is retried
//! until the secondary acknowledges it or the tries run out; a newer version
//! supersedes one still being retried. With a `transfer_key`, each NOTIFY
//! is TSIG-signed with it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, RecordType};
use routing_table::Table;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::config::Settings;
use crate::metrics::DnsMetrics;

const TRIES: u32 = 5;
const FIRST_WAIT: Duration = Duration::from_millis(500);
/// Versions published closer together than this share one NOTIFY.
const COALESCE: Duration = Duration::from_millis(20);

pub async fn run(settings: Arc<Settings>, table: Table, metrics: DnsMetrics, mut shutdown: watch::Receiver<bool>) {
    if settings.notify.is_empty() {
        return;
    }
    let mut versions = table.subscribe();
    let mut rounds: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    loop {
        tokio::select! {
            changed = versions.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
        tokio::time::sleep(COALESCE).await;
        let version = *versions.borrow_and_update();
        let serial = settings.zone.serial(version);
        // The previous round is for an older serial: the new one replaces it.
        for r in rounds.drain(..) {
            r.abort();
        }
        for &target in &settings.notify {
            let (settings, metrics) = (settings.clone(), metrics.clone());
            rounds.push(tokio::spawn(async move {
                let acked = notify_one(&settings, &metrics, target, version).await;
                let result = if acked { "acked" } else { "failed" };
                metrics.notifies.with_label_values(&[result]).inc();
                if acked {
                    tracing::debug!(%target, serial, "notify acknowledged");
                } else {
                    tracing::warn!(%target, serial, "notify not acknowledged");
                }
            }));
        }
    }
}

/// Sends NOTIFY for table `version` to `target` until it answers; true if
/// it did.
async fn notify_one(settings: &Settings, metrics: &DnsMetrics, target: SocketAddr, version: u64) -> bool {
    let bind: SocketAddr = if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let Ok(socket) = UdpSocket::bind(bind).await else { return false };
    if socket.connect(target).await.is_err() {
        return false;
    }
    let id: u16 = rand_id(settings.zone.serial(version), target);
    let mut msg = Message::new(id, MessageType::Query, OpCode::Notify);
    msg.metadata.authoritative = true;
    let mut q = Query::query(settings.zone.origin.clone(), RecordType::SOA);
    q.set_query_class(DNSClass::IN);
    msg.queries.push(q);
    msg.answers.push(settings.zone.soa(version));
    let bytes = match &settings.transfer_key {
        Some(key) => crate::tsig::sign_request(key, msg),
        None => msg.to_vec().ok(),
    };
    let Some(bytes) = bytes else { return false };
    let mut wait = FIRST_WAIT;
    let mut buf = [0u8; 512];
    for _ in 0..TRIES {
        if socket.send(&bytes).await.is_err() {
            return false;
        }
        metrics.notifies.with_label_values(&["sent"]).inc();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            if n >= 4 && buf[..2] == id.to_be_bytes() && buf[2] & 0x80 != 0 {
                return true;
            }
        }
        wait *= 2;
    }
    false
}

/// A message ID that differs per serial and target (not a secret: NOTIFY
/// only prompts the secondary to check the SOA with us).
fn rand_id(serial: u32, target: SocketAddr) -> u16 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one((serial, target)) as u16
}
