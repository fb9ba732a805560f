//! Live stream sessions by user (SSH, IMAP, POP3, submission), and login
//! holds.
//!
//! A session keeps the backend it chose at login to its end. After a move,
//! `--kick` closes the sessions of the moved users that are still on a
//! backend the table no longer routes them to, so their clients reconnect
//! to the new one; `edgectl sessions USER` lists them. `--hold SECONDS`
//! makes new logins of the moved users wait (up to the hold) until the move
//! is committed, so none lands on the old backend while it is switched.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use routing_table::store::now_ms;
use serde::Serialize;

/// What `edgectl sessions` shows of one session.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub id: u64,
    pub protocol: &'static str,
    pub user: String,
    pub backend: String,
    pub client: SocketAddr,
    /// Login time, ms since the Unix epoch.
    pub started_ms: u64,
}

/// Closes one session (asynchronously; returns at once).
pub type Kick = Box<dyn Fn() + Send + Sync>;

struct Entry {
    info: SessionInfo,
    kick: Kick,
}

/// The registry. Cheap to share (`Arc`).
#[derive(Default)]
pub struct Sessions {
    by_user: Mutex<HashMap<String, Vec<Entry>>>,
    next_id: AtomicU64,
    holds: Mutex<HashMap<String, Hold>>,
}

/// A hold on one user's new logins.
#[derive(Clone)]
struct Hold {
    until: Instant,
    released: watch::Receiver<bool>,
}

/// Holds logins until dropped (or until its deadline).
pub struct HoldGuard {
    sessions: Arc<Sessions>,
    users: Vec<String>,
    release: watch::Sender<bool>,
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let _ = self.release.send(true);
        let mut holds = self.sessions.holds.lock().unwrap_or_else(|p| p.into_inner());
        for u in &self.users {
            if holds.get(u).is_some_and(|h| h.released.same_channel(&self.release.subscribe())) {
                holds.remove(u);
            }
        }
    }
}

/// Removes its session from the registry when dropped (the session ended).
pub struct Registered {
    sessions: Arc<Sessions>,
    user: String,
    id: u64,
}

impl Sessions {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Records a session that logged in as `user` on `backend`.
    pub fn register(
        self: &Arc<Self>,
        protocol: &'static str,
        user: &str,
        backend: &str,
        client: SocketAddr,
        kick: Kick,
    ) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let info = SessionInfo {
            id,
            protocol,
            user: user.to_string(),
            backend: backend.to_string(),
            client,
            started_ms: now_ms(),
        };
        self.lock().entry(user.to_string()).or_default().push(Entry { info, kick });
        Registered { sessions: self.clone(), user: user.to_string(), id }
    }

    /// The live sessions of `user`, or of everyone.
    pub fn list(&self, user: Option<&str>) -> Vec<SessionInfo> {
        let map = self.lock();
        let mut out: Vec<SessionInfo> = match user {
            Some(u) => map.get(u).into_iter().flatten().map(|e| e.info.clone()).collect(),
            None => map.values().flatten().map(|e| e.info.clone()).collect(),
        };
        out.sort_by_key(|s| s.id);
        out
    }

    /// Closes `user`'s sessions of `protocol` that are not on `keep` (all of
    /// them when `keep` is `None`); returns how many.
    pub fn kick(&self, protocol: &str, user: &str, keep: Option<&str>) -> usize {
        let map = self.lock();
        let mut n = 0;
        for e in map.get(user).into_iter().flatten() {
            if e.info.protocol == protocol && keep != Some(e.info.backend.as_str()) {
                (e.kick)();
                n += 1;
            }
        }
        n
    }

    /// Holds new logins of `users` until the guard is dropped, for at most
    /// `limit`.
    pub fn hold(self: &Arc<Self>, users: Vec<String>, limit: Duration) -> HoldGuard {
        let (release, released) = watch::channel(false);
        let until = Instant::now() + limit;
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        for u in &users {
            holds.insert(u.clone(), Hold { until, released: released.clone() });
        }
        HoldGuard { sessions: self.clone(), users, release }
    }

    /// Waits while `user`'s logins are held; returns how long it waited.
    pub async fn wait_hold(&self, user: &str) -> Duration {
        let hold = self.holds.lock().unwrap_or_else(|p| p.into_inner()).get(user).cloned();
        let Some(Hold { until, mut released }) = hold else { return Duration::ZERO };
        let start = Instant::now();
        let left = until.saturating_duration_since(start);
        let _ = tokio::time::timeout(left, released.wait_for(|r| *r)).await;
        start.elapsed()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Entry>>> {
        self.by_user.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut map = self.sessions.lock();
        if let Some(list) = map.get_mut(&self.user) {
            list.retain(|e| e.info.id != self.id);
            if list.is_empty() {
                map.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn kick_closes_only_sessions_off_the_new_backend_and_drop_unregisters() {
        let sessions = Sessions::new();
        let kicked = Arc::new(AtomicUsize::new(0));
        let counter = |k: &Arc<AtomicUsize>| -> Kick {
            let k = k.clone();
            Box::new(move || {
                k.fetch_add(1, Ordering::SeqCst);
            })
        };
        let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let a = sessions.register("ssh", "alice", "mosh12", addr, counter(&kicked));
        let _b = sessions.register("ssh", "alice", "mosh40", addr, counter(&kicked));
        let _c = sessions.register("ssh", "bob", "mosh12", addr, counter(&kicked));
        assert_eq!(sessions.list(Some("alice")).len(), 2);
        assert_eq!(sessions.list(None).len(), 3);
        assert_eq!(sessions.kick("ssh", "alice", Some("mosh40")), 1);
        assert_eq!(kicked.load(Ordering::SeqCst), 1);
        assert_eq!(sessions.kick("imap", "alice", None), 0);
        drop(a);
        assert_eq!(sessions.list(Some("alice")).iter().map(|s| s.backend.as_str()).collect::<Vec<_>>(), ["mosh40"]);
    }

    #[tokio::test]
    async fn a_hold_delays_logins_until_released_or_its_deadline() {
        let sessions = Sessions::new();
        assert_eq!(sessions.wait_hold("alice").await, Duration::ZERO);
        let guard = sessions.hold(vec!["alice".into()], Duration::from_secs(10));
        let waiter = tokio::spawn({
            let s = sessions.clone();
            async move { s.wait_hold("alice").await }
        });
        assert_eq!(sessions.wait_hold("bob").await, Duration::ZERO, "others are not held");
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(guard);
        let waited = waiter.await.unwrap();
        assert!(waited >= Duration::from_millis(150) && waited < Duration::from_secs(5), "{waited:?}");
        assert_eq!(sessions.wait_hold("alice").await, Duration::ZERO, "released");
        let _forgotten = sessions.hold(vec!["carol".into()], Duration::from_millis(100));
        let waited = sessions.wait_hold("carol").await;
        assert!(waited >= Duration::from_millis(80) && waited < Duration::from_secs(2), "deadline: {waited:?}");
    }
}
