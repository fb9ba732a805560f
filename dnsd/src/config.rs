//! The `[dns]` section of `edge.toml` (also read by the standalone `dnsd`):
//! a serde struct that mirrors the file, validated into [`Settings`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::rr::{Name, TSigner};
use serde::Deserialize;

/// The `[dns]` section as written. Every key has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Addresses to answer on, UDP and TCP.
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// The zone origin.
    #[serde(default = "default_zone")]
    pub zone: String,
    /// NS names at the apex; the first is the SOA MNAME.
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// SOA RNAME as a mailbox (`hostmaster@zone`) or a name.
    #[serde(default)]
    pub hostmaster: Option<String>,
    /// TTL of every answer that sets none itself.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    #[serde(default = "default_soa_ttl")]
    pub soa_ttl: u32,
    #[serde(default = "default_refresh")]
    pub refresh: u32,
    #[serde(default = "default_retry")]
    pub retry: u32,
    #[serde(default = "default_expire")]
    pub expire: u32,
    /// SOA MINIMUM: the negative-caching TTL is min(soa_ttl, minimum).
    #[serde(default = "default_minimum")]
    pub minimum: u32,
    /// Added to the table version to make the SOA serial (modulo 2^32), so a
    /// zone taken over from BIND can start above the serial secondaries hold.
    #[serde(default)]
    pub serial_offset: u32,
    /// UDP sockets per address (SO_REUSEPORT), each with its own thread;
    /// 0 = one per CPU.
    #[serde(default)]
    pub udp_sockets: usize,
    #[serde(default = "default_tcp_max_connections")]
    pub tcp_max_connections: usize,
    /// A TCP connection with no complete query for this long is closed.
    #[serde(default = "default_tcp_idle_timeout")]
    pub tcp_idle_timeout_secs: u64,
    /// Addresses or networks allowed to transfer the zone (AXFR/IXFR, TCP).
    #[serde(default)]
    pub allow_transfer: Vec<String>,
    /// Secondaries told of each new version with NOTIFY (`ip:port`).
    #[serde(default)]
    pub notify: Vec<SocketAddr>,
    /// TSIG keys (RFC 8945). A query signed with one gets a signed answer.
    #[serde(default)]
    pub tsig_keys: Vec<crate::tsig::KeyConfig>,
    /// When set, a zone transfer also needs a valid TSIG with this key, and
    /// NOTIFYs are signed with it.
    #[serde(default)]
    pub transfer_key: Option<String>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: default_listen(),
            zone: default_zone(),
            nameservers: Vec::new(),
            hostmaster: None,
            ttl: default_ttl(),
            soa_ttl: default_soa_ttl(),
            refresh: default_refresh(),
            retry: default_retry(),
            expire: default_expire(),
            minimum: default_minimum(),
            serial_offset: 0,
            udp_sockets: 0,
            tcp_max_connections: default_tcp_max_connections(),
            tcp_idle_timeout_secs: default_tcp_idle_timeout(),
            allow_transfer: Vec::new(),
            notify: Vec::new(),
            tsig_keys: Vec::new(),
            transfer_key: None,
        }
    }
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 5300))]
}
fn default_zone() -> String {
    "mayfirst.local".into()
}
fn default_ttl() -> u32 {
    30
}
fn default_soa_ttl() -> u32 {
    30
}
fn default_refresh() -> u32 {
    300
}
fn default_retry() -> u32 {
    60
}
fn default_expire() -> u32 {
    604_800
}
fn default_minimum() -> u32 {
    30
}
fn default_tcp_max_connections() -> usize {
    512
}
fn default_tcp_idle_timeout() -> u64 {
    10
}

/// A network allowed to transfer the zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("`{s}` is not an address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("`{s}`: bad prefix length"))?,
        };
        Ok(Network { addr: canonical(addr), prefix })
    }
}

/// `::ffff:a.b.c.d` → `a.b.c.d`, so one rule covers both socket families.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A checked `[dns]` section.
#[derive(Clone)]
pub struct Settings {
    pub listen: Vec<SocketAddr>,
    pub zone: crate::zone::ZoneParams,
    pub udp_sockets: usize,
    pub tcp_max_connections: usize,
    pub tcp_idle_timeout: Duration,
    pub allow_transfer: Vec<Network>,
    pub notify: Vec<SocketAddr>,
    pub tsig_keys: Vec<TSigner>,
    pub transfer_key: Option<TSigner>,
}

impl std::fmt::Debug for Settings {
    // Keys stay out of logs: only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("zone", &self.zone)
            .field("udp_sockets", &self.udp_sockets)
            .field("tcp_max_connections", &self.tcp_max_connections)
            .field("tcp_idle_timeout", &self.tcp_idle_timeout)
            .field("allow_transfer", &self.allow_transfer)
            .field("notify", &self.notify)
            .field("tsig_keys", &self.tsig_keys.iter().map(|k| k.signer_name().to_string()).collect::<Vec<_>>())
            .field("transfer_key", &self.transfer_key.as_ref().map(|k| k.signer_name().to_string()))
            .finish()
    }
}

impl PartialEq for Settings {
    fn eq(&self, other: &Self) -> bool {
        let keys =
            |s: &Settings| s.tsig_keys.iter().map(|k| (k.signer_name().clone(), k.key().to_vec())).collect::<Vec<_>>();
        self.listen == other.listen
            && self.zone == other.zone
            && self.udp_sockets == other.udp_sockets
            && self.tcp_max_connections == other.tcp_max_connections
            && self.tcp_idle_timeout == other.tcp_idle_timeout
            && self.allow_transfer == other.allow_transfer
            && self.notify == other.notify
            && keys(self) == keys(other)
            && self.transfer_key.as_ref().map(|k| k.signer_name())
                == other.transfer_key.as_ref().map(|k| k.signer_name())
    }
}

impl Eq for Settings {}

impl DnsConfig {
    /// Checks every key; the error names the key (`dns.zone`) and says why.
    pub fn validate(&self) -> Result<Settings, (&'static str, String)> {
        let origin = fqdn(&self.zone).map_err(|e| ("dns.zone", e))?;
        let nameservers = if self.nameservers.is_empty() {
            vec![fqdn(&format!("ns1.{}", self.zone)).map_err(|e| ("dns.zone", e))?]
        } else {
            self.nameservers.iter().map(|n| fqdn(n)).collect::<Result<_, _>>().map_err(|e| ("dns.nameservers", e))?
        };
        let hostmaster = match &self.hostmaster {
            None => fqdn(&format!("hostmaster.{}", self.zone)).map_err(|e| ("dns.zone", e))?,
            Some(h) => {
                // `user@example.org` → `user.example.org`.
                let name = match h.split_once('@') {
                    Some((local, domain)) if !local.contains('.') => format!("{local}.{domain}"),
                    Some(_) => {
                        return Err(("dns.hostmaster", format!("`{h}`: a dot in the local part cannot be written")))
                    }
                    None => h.clone(),
                };
                fqdn(&name).map_err(|e| ("dns.hostmaster", e))?
            }
        };
        if self.listen.is_empty() {
            return Err(("dns.listen", "needs at least one address".into()));
        }
        for (key, value) in [("dns.refresh", self.refresh), ("dns.retry", self.retry), ("dns.expire", self.expire)] {
            if value > i32::MAX as u32 {
                return Err((key, format!("{value} is above 2147483647")));
            }
        }
        if self.tcp_max_connections == 0 {
            return Err(("dns.tcp_max_connections", "must be at least 1".into()));
        }
        if self.tcp_idle_timeout_secs == 0 {
            return Err(("dns.tcp_idle_timeout_secs", "must be at least 1".into()));
        }
        let allow_transfer = self
            .allow_transfer
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| ("dns.allow_transfer", e))?;
        let tsig_keys: Vec<TSigner> =
            self.tsig_keys.iter().map(|k| k.signer()).collect::<Result<_, _>>().map_err(|e| ("dns.tsig_keys", e))?;
        let transfer_key = match &self.transfer_key {
            None => None,
            Some(name) => {
                let want = fqdn(name).map_err(|e| ("dns.transfer_key", e))?;
                let key = tsig_keys.iter().find(|k| k.signer_name().to_lowercase() == want);
                Some(key.cloned().ok_or(("dns.transfer_key", format!("`{name}` is not in dns.tsig_keys")))?)
            }
        };
        let udp_sockets = match self.udp_sockets {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Ok(Settings {
            listen: self.listen.clone(),
            zone: crate::zone::ZoneParams {
                origin,
                nameservers,
                hostmaster,
                ttl: self.ttl,
                soa_ttl: self.soa_ttl,
                refresh: self.refresh,
                retry: self.retry,
                expire: self.expire,
                minimum: self.minimum,
                serial_offset: self.serial_offset,
            },
            udp_sockets,
            tcp_max_connections: self.tcp_max_connections,
            tcp_idle_timeout: Duration::from_secs(self.tcp_idle_timeout_secs),
            allow_transfer,
            notify: self.notify.clone(),
            tsig_keys,
            transfer_key,
        })
    }
}

/// A lowercase, fully qualified name.
pub(crate) fn fqdn(text: &str) -> Result<Name, String> {
    let text = text.trim_end_matches('.');
    if text.is_empty() {
        return Err("is empty".into());
    }
    let name = Name::from_ascii(format!("{text}.")).map_err(|e| format!("`{text}` is not a DNS name: {e}"))?;
    Ok(name.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_by_prefix_and_family() {
        let n: Network = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: Network = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()) && !one.contains("127.0.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("mosh1".parse::<Network>().is_err());
    }

    #[test]
    fn defaults_validate_and_bad_keys_are_named() {
        let s = DnsConfig::default().validate().unwrap();
        assert_eq!(s.zone.origin.to_ascii(), "mayfirst.local.");
        assert_eq!(s.zone.nameservers[0].to_ascii(), "ns1.mayfirst.local.");
        assert_eq!(s.zone.hostmaster.to_ascii(), "hostmaster.mayfirst.local.");
        let bad = DnsConfig { zone: "bad..zone".into(), ..DnsConfig::default() };
        assert_eq!(bad.validate().unwrap_err().0, "dns.zone");
        let bad = DnsConfig { allow_transfer: vec!["nope".into()], ..DnsConfig::default() };
        assert_eq!(bad.validate().unwrap_err().0, "dns.allow_transfer");
        let key = |secret: &str| crate::tsig::KeyConfig {
            name: "xfr".into(),
            algorithm: "hmac-sha256".into(),
            secret: secret.into(),
        };
        let bad = DnsConfig { tsig_keys: vec![key("not base64!")], ..DnsConfig::default() };
        assert_eq!(bad.validate().unwrap_err().0, "dns.tsig_keys");
        let good = DnsConfig {
            tsig_keys: vec![key("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0")],
            transfer_key: Some("other".into()),
            ..DnsConfig::default()
        };
        assert_eq!(good.validate().unwrap_err().0, "dns.transfer_key");
        let good = DnsConfig { transfer_key: Some("XFR.".into()), ..good };
        assert!(good.validate().unwrap().transfer_key.is_some());
        let mail = DnsConfig { hostmaster: Some("admin@mayfirst.org".into()), ..DnsConfig::default() };
        assert_eq!(mail.validate().unwrap().zone.hostmaster.to_ascii(), "admin.mayfirst.org.");
    }
}
