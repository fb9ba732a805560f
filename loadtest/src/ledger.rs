//! Where each route should be, over time: the judge of every answer.
//!
//! Each move is recorded with when its request was sent and when its
//! acknowledgement arrived. A request that started at `start` and was
//! answered at `end` may be served by:
//! - the backend of the last move acknowledged before `start` (or the initial
//!   one), and
//! - the target of any move sent before `end` and not acknowledged before
//!   `start` (the table may have switched while the request was in flight).
//!
//! Anything else is **misrouted**: in particular, an answer from the old
//! backend to a request that started after the move was acknowledged.

use std::collections::HashMap;
use std::time::Instant;

/// One route's move: sent at, acknowledged at (`None` while in flight), to.
#[derive(Debug, Clone, Copy)]
struct Move {
    sent: Instant,
    acked: Option<Instant>,
    to: usize,
    /// A request started after the ack has been answered by `to`.
    seen: bool,
}

#[derive(Debug, Default)]
pub struct Ledger {
    /// Route name → its initial backend and moves, in the order sent.
    routes: HashMap<String, (usize, Vec<Move>)>,
}

/// The verdict on one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Correct,
    Misrouted { expected: usize },
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// A route and where it starts.
    pub fn add(&mut self, route: &str, backend: usize) {
        self.routes.insert(route.to_string(), (backend, Vec::new()));
    }

    /// Where a route is now, by the last move sent.
    pub fn current(&self, route: &str) -> Option<usize> {
        let (initial, moves) = self.routes.get(route)?;
        Some(moves.last().map_or(*initial, |m| m.to))
    }

    /// Routes whose current backend is `backend`.
    pub fn on_backend(&self, backend: usize) -> Vec<String> {
        let mut out: Vec<String> = self.routes.keys().filter(|r| self.current(r) == Some(backend)).cloned().collect();
        out.sort();
        out
    }

    /// A move of `route` to `to`, sent now; returns its index for [`Ledger::acked`].
    pub fn sent(&mut self, route: &str, to: usize, at: Instant) -> Option<usize> {
        let (_, moves) = self.routes.get_mut(route)?;
        moves.push(Move { sent: at, acked: None, to, seen: false });
        Some(moves.len() - 1)
    }

    pub fn acked(&mut self, route: &str, index: usize, at: Instant) {
        if let Some(m) = self.routes.get_mut(route).and_then(|(_, moves)| moves.get_mut(index)) {
            m.acked = Some(at);
        }
    }

    /// A move the edge refused: forget it (the route stays where it was).
    pub fn withdrawn(&mut self, route: &str, index: usize) {
        if let Some((_, moves)) = self.routes.get_mut(route) {
            if index + 1 == moves.len() {
                moves.pop();
            }
        }
    }

    /// Judges an answer from `got` to a request for `route` started at
    /// `start` and answered at `end`. `None` for a route it does not know.
    pub fn judge(&self, route: &str, start: Instant, end: Instant, got: usize) -> Option<Verdict> {
        let (initial, moves) = self.routes.get(route)?;
        let expected = moves.iter().rev().find(|m| m.acked.is_some_and(|a| a <= start)).map_or(*initial, |m| m.to);
        if got == expected {
            return Some(Verdict::Correct);
        }
        let in_flight = moves.iter().any(|m| m.to == got && m.sent <= end && m.acked.is_none_or(|a| a > start));
        Some(if in_flight { Verdict::Correct } else { Verdict::Misrouted { expected } })
    }

    /// Judges an answer, and if it is the first answer from a move's new
    /// backend to a request started after that move's ack, also returns the
    /// time from the ack to the answer.
    pub fn observe(
        &mut self,
        route: &str,
        start: Instant,
        end: Instant,
        got: usize,
    ) -> Option<(Verdict, Option<std::time::Duration>)> {
        let verdict = self.judge(route, start, end, got)?;
        let (_, moves) = self.routes.get_mut(route)?;
        let latest = moves.iter_mut().rev().find(|m| m.acked.is_some_and(|a| a <= start));
        let first = match latest {
            Some(m) if m.to == got && !m.seen => {
                m.seen = true;
                m.acked.map(|a| end.saturating_duration_since(a))
            }
            _ => None,
        };
        Some((verdict, first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_old_backend_after_the_ack_is_misrouted() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut l = Ledger::new();
        l.add("db1", 0);
        // Before any move: backend 0 only.
        assert_eq!(l.judge("db1", at(1), at(2), 0), Some(Verdict::Correct));
        assert_eq!(l.judge("db1", at(1), at(2), 1), Some(Verdict::Misrouted { expected: 0 }));
        // A move to 1, sent at 10, acknowledged at 20.
        let i = l.sent("db1", 1, at(10)).unwrap();
        // While in flight, either backend is right for a request answered after 10.
        assert_eq!(l.judge("db1", at(5), at(12), 1), Some(Verdict::Correct));
        assert_eq!(l.judge("db1", at(5), at(12), 0), Some(Verdict::Correct));
        // Answered before the move was even sent: only the old one.
        assert_eq!(l.judge("db1", at(5), at(8), 1), Some(Verdict::Misrouted { expected: 0 }));
        l.acked("db1", i, at(20));
        // Started after the ack: the old backend is misrouted.
        assert_eq!(l.judge("db1", at(21), at(22), 0), Some(Verdict::Misrouted { expected: 1 }));
        assert_eq!(l.judge("db1", at(21), at(22), 1), Some(Verdict::Correct));
        // Started before the ack: either.
        assert_eq!(l.judge("db1", at(15), at(22), 0), Some(Verdict::Correct));
        assert_eq!(l.current("db1"), Some(1));
        assert_eq!(l.on_backend(1), vec!["db1".to_string()]);
        // The first answer from the new backend after the ack is timed once.
        assert_eq!(l.observe("db1", at(21), at(25), 1), Some((Verdict::Correct, Some(Duration::from_millis(5)))));
        assert_eq!(l.observe("db1", at(22), at(26), 1), Some((Verdict::Correct, None)));
        assert_eq!(l.judge("nope", at(1), at(2), 0), None);
    }

    #[test]
    fn a_refused_move_is_forgotten() {
        let t0 = Instant::now();
        let mut l = Ledger::new();
        l.add("db1", 0);
        let i = l.sent("db1", 3, t0).unwrap();
        l.withdrawn("db1", i);
        assert_eq!(l.current("db1"), Some(0));
        assert_eq!(l.judge("db1", t0, t0 + Duration::from_millis(1), 3), Some(Verdict::Misrouted { expected: 0 }));
    }
}
