//! Per-site limits on each client address (pingora-limits: a count-min
//! sketch per one-second window for the request rate, in-flight counters
//! for concurrency), and the cap on requests a site `under_attack` sends to
//! its backends at once. The sketches have a fixed size, so memory does not
//! grow with the number of clients or sites.

use std::net::IpAddr;
use std::time::Duration;

use pingora_limits::inflight::{Guard, Inflight};
use pingora_limits::rate::Rate;
use routing_table::{Protection, Site};

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over the site's requests per second for one client.
    Rate,
    /// Over the site's concurrent requests for one client.
    Concurrency,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Rate => "rate",
            Refusal::Concurrency => "concurrency",
        }
    }
}

/// The limits a site `under_attack` gets when its own are looser (or unset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnderAttack {
    pub requests_per_sec: u32,
    pub concurrent_per_ip: u32,
    /// Requests of the site at the backends at once (cache misses and
    /// revalidations); the rest get stale copies, or 503.
    pub backend_concurrency: u32,
}

pub struct Limiter {
    rate: Rate,
    inflight: Inflight,
    backend: Inflight,
    pub under_attack: UnderAttack,
}

impl Limiter {
    pub fn new(under_attack: UnderAttack) -> Limiter {
        Limiter {
            rate: Rate::new(Duration::from_secs(1)),
            inflight: Inflight::new(),
            backend: Inflight::new(),
            under_attack,
        }
    }

    /// The site's limits for one client, tightened when it is under attack.
    fn limits(&self, site: &Site) -> (Option<u32>, Option<u32>) {
        let own = &site.policy.limits;
        if site.protection != Protection::UnderAttack {
            return (own.requests_per_sec, own.concurrent_per_ip);
        }
        let tight = |own: Option<u32>, attack: u32| Some(own.map_or(attack, |o| o.min(attack)));
        (
            tight(own.requests_per_sec, self.under_attack.requests_per_sec),
            tight(own.concurrent_per_ip, self.under_attack.concurrent_per_ip),
        )
    }

    /// Counts a request of `client` to `site`; `Err` when it is over a
    /// limit. The guard, kept for the request's life, counts it in flight.
    pub fn admit(&self, site: &Site, client: IpAddr) -> Result<Option<Guard>, Refusal> {
        let (rate, concurrent) = self.limits(site);
        let key = (&*site.name, client);
        if let Some(limit) = rate {
            if self.rate.observe(&key, 1) > limit as isize {
                return Err(Refusal::Rate);
            }
        }
        match concurrent {
            Some(limit) => {
                let (guard, now) = self.inflight.incr(key, 1);
                if now > limit as isize {
                    return Err(Refusal::Concurrency);
                }
                Ok(Some(guard))
            }
            None => Ok(None),
        }
    }

    /// For a site under attack, counts one request going to its backends;
    /// `None` when the site already has as many there as allowed.
    pub fn to_backend(&self, site: &Site) -> Option<Option<Guard>> {
        if site.protection != Protection::UnderAttack {
            return Some(None);
        }
        let (guard, now) = self.backend.incr(&*site.name, 1);
        (now <= self.under_attack.backend_concurrency as isize).then_some(Some(guard))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(json: serde_json::Value) -> Site {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn rate_and_concurrency_per_client_and_tighter_under_attack() {
        let l = Limiter::new(UnderAttack { requests_per_sec: 3, concurrent_per_ip: 1, backend_concurrency: 2 });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s = site(serde_json::json!({"name": "s", "hosts": ["s.test"], "backends": [],
            "policy": {"limits": {"requests_per_sec": 5, "concurrent_per_ip": 2}}}));
        let kept: Vec<_> = (0..5).map(|_| l.admit(&s, a)).collect();
        assert_eq!(kept.iter().filter(|r| r.is_ok()).count(), 2, "two at once");
        drop(kept);
        assert_eq!(l.admit(&s, a).err(), Some(Refusal::Rate), "sixth in the second");
        assert!(l.admit(&s, b).is_ok(), "another client has its own count");
        // Under attack: 3 per second at most, one at a time.
        let attacked = site(serde_json::json!({"name": "t", "hosts": ["t.test"], "backends": [],
            "protection": "under_attack"}));
        let first = l.admit(&attacked, a).unwrap();
        assert_eq!(l.admit(&attacked, a).err(), Some(Refusal::Concurrency));
        drop(first);
        assert!(l.admit(&attacked, a).is_ok());
        assert_eq!(l.admit(&attacked, a).err(), Some(Refusal::Rate));
        // Its backends get two requests at once.
        let (x, y) = (l.to_backend(&attacked), l.to_backend(&attacked));
        assert!(x.is_some() && y.is_some());
        assert!(l.to_backend(&attacked).is_none());
        drop(x);
        assert!(l.to_backend(&attacked).is_some());
        assert!(matches!(l.to_backend(&s), Some(None)), "no cap when not under attack");
    }
}
