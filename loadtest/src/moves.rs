//! Moves during the load, through the control socket as an admin makes
//! them: site moves, member moves (every route of the member), backend
//! evacuations. Each database move is entered in the ledger when sent and
//! marked when acknowledged; the answer's change list is checked against
//! what the ledger expected.

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
                Ok(()) => {
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
        report
    }

    /// Makes one move; returns its kind's name and whether it was
    /// acknowledged as expected.
    async fn one(
        &self,
        kind: Kind,
        f: &Fixture,
        ledger: &Mutex<Ledger>,
        rng: &mut Rng,
        sent: Instant,
    ) -> (String, Result<(), String>) {
        let lock = || ledger.lock().map_err(|_| "ledger poisoned".to_string());
        match kind {
            Kind::Site => {
                let m = rng.below(f.members);
                let to = f.backend(rng.below(f.backends));
                let path = format!("/v1/sites/{}/move", f.site(m));
                ("site".into(), self.post(&path, json!({ "to": to })).await.map(drop))
            }
            Kind::Member => {
                let m = rng.below(f.members);
                let db = f.database(m);
                let result = async {
                    let current = lock()?.current(&db).ok_or("unknown database")?;
                    let to = other(rng, f.backends, current);
                    let index = lock()?.sent(&db, to, sent).ok_or("unknown database")?;
                    let answer =
                        self.post(&format!("/v1/members/{}/move", f.member(m)), json!({ "to": f.backend(to) })).await;
                    settle(lock()?, f, &[(db.clone(), index, to)], answer)
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
/// exactly those databases there; otherwise withdraws them.
fn settle(
    mut ledger: std::sync::MutexGuard<'_, Ledger>,
    f: &Fixture,
    moved: &[(String, usize, usize)],
    answer: Result<Value, String>,
) -> Result<(), String> {
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
    let servers: BTreeMap<String, String> = body["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["kind"] == "database")
        .filter_map(|c| Some((c["name"].as_str()?.to_string(), c["after"]["server"].as_str()?.to_string())))
        .collect();
    let expected: BTreeMap<String, String> = moved.iter().map(|(db, _, to)| (db.clone(), f.backend(*to))).collect();
    for (db, index, _) in moved {
        ledger.acked(db, *index, acked);
    }
    if servers == expected {
        Ok(())
    } else {
        Err(format!("the edge moved {servers:?}, the load test expected {expected:?}"))
    }
}
