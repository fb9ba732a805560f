//! Moves during the load, through the control socket as an admin makes
//! them: site moves, member moves (every route of the member), backend
//! evacuations. Each database, SSH login and mail login move is entered in the ledger
//! when sent and marked when acknowledged; the answer's change list is
//! checked against what the ledger expected.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proxy::control::client::Client;
use serde_json::{json, Value};

use crate::fixture::Fixture;
use crate::ledger::Ledger;
use crate::report::{micros, record, MovesReport, Percentiles};
use crate::rng::Rng;
use crate::Shared;

pub struct Mover {
    pub client: Client,
    pub rate: f64,
    /// dnsd and its zone: after each acknowledged move, every moved
    /// database is queried once there, at once.
    pub probe: Option<(std::net::SocketAddr, String)>,
}

enum Kind {
    Site,
    Member,
    Evacuate,
}

impl Mover {
    pub async fn run(self, shared: Shared) -> MovesReport {
        let Shared { fixture, ledger, live, stop, seed } = shared;
        let mut report = MovesReport::default();
        let mut ack = micros();
        let mut probe_latency = micros();
        let probe = match &self.probe {
            Some((addr, zone)) => {
                let socket = tokio::net::UdpSocket::bind(("127.0.0.1", 0)).await.ok();
                match socket {
                    Some(s) if s.connect(addr).await.is_ok() => Some((s, zone.clone())),
                    _ => None,
                }
            }
            None => None,
        };
        let mut rng = Rng::new(seed);
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / self.rate.max(0.001)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let kind = match rng.below(10) {
                0..=2 => Kind::Site,
                3..=7 => Kind::Member,
                _ => Kind::Evacuate,
            };
            let sent = Instant::now();
            let (name, result) = self.one(kind, &fixture, &ledger, &mut rng, sent).await;
            match result {
                Ok((acked, moved)) => {
                    if let Some((socket, zone)) = &probe {
                        // Probes go one after another: only the first of a
                        // move is timed from the ack; every one is judged.
                        let dbs = moved.iter().filter(|r| fixture.is_database(r));
                        for (i, db) in dbs.enumerate() {
                            let p = probe_one(socket, zone, db, acked, &fixture, &ledger, &mut rng).await;
                            report.probes += 1;
                            match p {
                                Probe::Correct(d) if i == 0 => record(&mut probe_latency, d),
                                Probe::Correct(_) => {}
                                Probe::Misrouted => report.probe_misrouted += 1,
                                Probe::Failed => report.probe_failed += 1,
                            }
                        }
                    }
                    record(&mut ack, sent.elapsed());
                    report.done += 1;
                    *report.by_kind.entry(name).or_default() += 1;
                    live.moves.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::error!(kind = %name, error = %e, "move failed");
                }
            }
        }
        report.ack_latency = Percentiles::of(&ack);
        report.probe_latency = Percentiles::of(&probe_latency);
        report
    }

    /// Makes one move; returns its kind's name and, if it was acknowledged
    /// as expected, when, with the databases it moved.
    async fn one(
        &self,
        kind: Kind,
        f: &Fixture,
        ledger: &Mutex<Ledger>,
        rng: &mut Rng,
        sent: Instant,
    ) -> (String, Result<(Instant, Vec<String>), String>) {
        let lock = || ledger.lock().map_err(|_| "ledger poisoned".to_string());
        match kind {
            Kind::Site => {
                let m = rng.below(f.members);
                let to = f.backend(rng.below(f.backends));
                let path = format!("/v1/sites/{}/move", f.site(m));
                ("site".into(), self.post(&path, json!({ "to": to })).await.map(|_| (Instant::now(), Vec::new())))
            }
            Kind::Member => {
                let m = rng.below(f.members);
                let (db, user, mail) = (f.database(m), f.sftp_user(m), f.mail_user(m));
                let result = async {
                    let current = lock()?.current(&db).ok_or("unknown database")?;
                    let to = other(rng, f.backends, current);
                    let moved = {
                        let mut l = lock()?;
                        let db_index = l.sent(&db, to, sent).ok_or("unknown database")?;
                        let user_index = l.sent(&user, to, sent).ok_or("unknown sftp login")?;
                        let mail_index = l.sent(&mail, to, sent).ok_or("unknown mail login")?;
                        [(db.clone(), db_index, to), (user.clone(), user_index, to), (mail.clone(), mail_index, to)]
                    };
                    let answer =
                        self.post(&format!("/v1/members/{}/move", f.member(m)), json!({ "to": f.backend(to) })).await;
                    settle(lock()?, f, &moved, answer)
                }
                .await;
                ("member".into(), result)
            }
            Kind::Evacuate => {
                let from = rng.below(f.backends);
                let to = other(rng, f.backends, from);
                let result = async {
                    let affected: Vec<(String, usize, usize)> = {
                        let mut l = lock()?;
                        l.on_backend(from)
                            .into_iter()
                            .filter_map(|db| Some((db.clone(), l.sent(&db, to, sent)?, to)))
                            .collect()
                    };
                    let answer = self
                        .post(&format!("/v1/backends/{}/evacuate", f.backend(from)), json!({ "to": f.backend(to) }))
                        .await;
                    settle(lock()?, f, &affected, answer)
                }
                .await;
                ("evacuate".into(), result)
            }
        }
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        let answer = self.client.post(path, &body).await.map_err(|e| e.to_string())?;
        match answer.error_message() {
            Some(e) => Err(format!("{path}: {e}")),
            None => Ok(answer.body),
        }
    }
}

/// A backend other than `not` (there are at least two).
fn other(rng: &mut Rng, backends: usize, not: usize) -> usize {
    (not + 1 + rng.below(backends - 1)) % backends
}

/// Marks the ledger's moves acknowledged if the edge's change list moved
/// exactly those databases, SSH and mail logins there; otherwise withdraws
/// them.
fn settle(
    mut ledger: std::sync::MutexGuard<'_, Ledger>,
    f: &Fixture,
    moved: &[(String, usize, usize)],
    answer: Result<Value, String>,
) -> Result<(Instant, Vec<String>), String> {
    let acked = Instant::now();
    let body = match answer {
        Ok(b) => b,
        Err(e) => {
            for (db, index, _) in moved.iter().rev() {
                ledger.withdrawn(db, *index);
            }
            return Err(e);
        }
    };
    // Where each moved database (its server) and login (its backend) went.
    let servers: BTreeMap<String, String> = body["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let to = match c["kind"].as_str()? {
                "database" => c["after"]["server"].as_str()?,
                "sftp_login" | "mail_login" => c["after"]["backend"].as_str()?,
                _ => return None,
            };
            Some((c["name"].as_str()?.to_string(), to.to_string()))
        })
        .collect();
    let expected: BTreeMap<String, String> = moved.iter().map(|(db, _, to)| (db.clone(), f.backend(*to))).collect();
    for (db, index, _) in moved {
        ledger.acked(db, *index, acked);
    }
    if servers == expected {
        Ok((acked, moved.iter().map(|(db, _, _)| db.clone()).collect()))
    } else {
        Err(format!("the edge moved {servers:?}, the load test expected {expected:?}"))
    }
}

enum Probe {
    Correct(Duration),
    Misrouted,
    Failed,
}

/// Queries `db` once, right after a move's ack, and judges the answer.
#[allow(clippy::too_many_arguments)]
async fn probe_one(
    socket: &tokio::net::UdpSocket,
    zone: &str,
    db: &str,
    acked: Instant,
    fixture: &Fixture,
    ledger: &Mutex<Ledger>,
    rng: &mut Rng,
) -> Probe {
    let id = rng.next_u64() as u16;
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    let exchange = async {
        socket.send(&crate::dns::query(id, &format!("{db}.mysql.{zone}"))).await.ok()?;
        loop {
            let n = socket.recv(&mut buf).await.ok()?;
            if n >= 2 && buf[..2] == id.to_be_bytes() {
                return crate::dns::backend_in(&buf[..n], fixture);
            }
        }
    };
    let Ok(Some(got)) = tokio::time::timeout(Duration::from_secs(1), exchange).await else {
        tracing::warn!(%db, "probe after a move failed");
        return Probe::Failed;
    };
    let end = Instant::now();
    let verdict = ledger.lock().ok().and_then(|l| l.judge(db, start, end, got));
    match verdict {
        Some(crate::ledger::Verdict::Correct) => Probe::Correct(end - acked),
        _ => {
            tracing::error!(%db, got, "probe right after the ack reached the wrong backend");
            Probe::Misrouted
        }
    }
}
