//! The authentication plug-in, consulted before routing a mail login.
//!
//! - [`PassThrough`] (the default): the edge does not check passwords; the
//!   backend's answer to the replayed login is the client's answer.
//! - [`Ldap`]: the edge binds to LDAP as the user (directly, or after a
//!   search) and refuses a wrong password without asking a backend. With
//!   `route_attribute`, a user the table does not know is routed by that
//!   attribute of their entry (cached for `cache_secs`).
//!
//! Credentials are never logged.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

use super::config::LdapConfig;
use super::parse::sasl::Credentials;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The plug-in's answer for one login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not checked here: the backend decides.
    Backend,
    /// Checked and right (the backend still checks the replayed login).
    Accepted,
    /// Wrong user or password: refused without asking a backend.
    Rejected,
    /// The directory could not be asked: a temporary failure.
    Unavailable(String),
}

pub trait AuthPlugin: Send + Sync {
    fn check<'a>(&'a self, credentials: &'a Credentials) -> BoxFuture<'a, Verdict>;
    /// A backend name for a user the table has no mail login for.
    fn route<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Option<String>>;
}

pub struct PassThrough;

impl AuthPlugin for PassThrough {
    fn check<'a>(&'a self, _: &'a Credentials) -> BoxFuture<'a, Verdict> {
        Box::pin(async { Verdict::Backend })
    }
    fn route<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async { None })
    }
}

const CACHE_MAX: usize = 10_000;
const INVALID_CREDENTIALS: u32 = 49;

pub struct Ldap {
    config: LdapConfig,
    bind_password: Option<String>,
    /// user → (when looked up, backend name).
    routes: Mutex<HashMap<String, (Instant, Option<String>)>>,
}

type LdapResult<T> = Result<T, ldap3::LdapError>;

impl Ldap {
    pub fn new(config: LdapConfig) -> Result<Ldap, String> {
        let bind_password = match &config.bind_password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("mail.auth.bind_password_file {}: {e}", path.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            None => None,
        };
        Ok(Ldap { config, bind_password, routes: Mutex::default() })
    }

    async fn connect(&self) -> LdapResult<ldap3::Ldap> {
        let settings = LdapConnSettings::new().set_conn_timeout(self.timeout());
        let (conn, ldap) = LdapConnAsync::with_settings(settings, &self.config.url).await?;
        ldap3::drive!(conn);
        Ok(ldap)
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    /// Binds as the configured searcher (or anonymously).
    async fn bind_searcher(&self, ldap: &mut ldap3::Ldap) -> LdapResult<()> {
        if let (Some(dn), Some(pw)) = (&self.config.bind_dn, &self.bind_password) {
            ldap.simple_bind(dn, pw).await?.success()?;
        }
        Ok(())
    }

    /// The user's entry: its DN and route attribute. `None`: no such user
    /// (or more than one match).
    async fn find(&self, ldap: &mut ldap3::Ldap, user: &str) -> LdapResult<Option<(String, Option<String>)>> {
        let attrs: Vec<&str> = self.config.route_attribute.iter().map(String::as_str).collect();
        let attrs = if attrs.is_empty() { vec!["1.1"] } else { attrs };
        let (base, scope, filter) = match (&self.config.user_dn, &self.config.base, &self.config.filter) {
            (Some(dn), ..) => {
                (dn.replace("{user}", &ldap3::dn_escape(user)), Scope::Base, "(objectClass=*)".to_string())
            }
            (None, Some(base), Some(filter)) => {
                (base.clone(), Scope::Subtree, filter.replace("{user}", &ldap3::ldap_escape(user)))
            }
            _ => return Ok(None),
        };
        let search = ldap.with_timeout(self.timeout()).search(&base, scope, &filter, attrs).await?;
        if search.1.rc == 32 {
            return Ok(None); // noSuchObject
        }
        let (mut entries, _) = search.success()?;
        if entries.len() != 1 {
            return Ok(None);
        }
        let entry = SearchEntry::construct(entries.remove(0));
        let route = self
            .config
            .route_attribute
            .as_ref()
            .and_then(|a| entry.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(a)))
            .and_then(|(_, v)| v.first().cloned());
        Ok(Some((entry.dn, route)))
    }

    fn remember(&self, user: &str, route: Option<String>) {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if routes.len() >= CACHE_MAX {
            let ttl = Duration::from_secs(self.config.cache_secs);
            routes.retain(|_, (at, _)| at.elapsed() < ttl);
            if routes.len() >= CACHE_MAX {
                routes.clear();
            }
        }
        routes.insert(user.to_string(), (Instant::now(), route));
    }

    async fn check_inner(&self, credentials: &Credentials) -> LdapResult<Verdict> {
        // An empty password is an unauthenticated bind, which LDAP servers
        // answer with success: never let it through.
        let Ok(password) = std::str::from_utf8(&credentials.password) else { return Ok(Verdict::Rejected) };
        if password.is_empty() {
            return Ok(Verdict::Rejected);
        }
        let mut ldap = self.connect().await?;
        let dn = match &self.config.user_dn {
            Some(template) => template.replace("{user}", &ldap3::dn_escape(&credentials.user)),
            None => {
                self.bind_searcher(&mut ldap).await?;
                match self.find(&mut ldap, &credentials.user).await? {
                    Some((dn, route)) => {
                        self.remember(&credentials.user, route);
                        dn
                    }
                    None => return Ok(Verdict::Rejected),
                }
            }
        };
        let bound = ldap.with_timeout(self.timeout()).simple_bind(&dn, password).await?;
        let verdict = match bound.rc {
            0 => Verdict::Accepted,
            INVALID_CREDENTIALS => Verdict::Rejected,
            rc => Verdict::Unavailable(format!("LDAP bind answered {rc}: {}", bound.text)),
        };
        // Bound as the user: read the route from their own entry.
        if verdict == Verdict::Accepted && self.config.user_dn.is_some() && self.config.route_attribute.is_some() {
            if let Some((_, route)) = self.find(&mut ldap, &credentials.user).await? {
                self.remember(&credentials.user, route);
            }
        }
        let _ = ldap.unbind().await;
        Ok(verdict)
    }

    async fn route_inner(&self, user: &str) -> LdapResult<Option<String>> {
        let mut ldap = self.connect().await?;
        self.bind_searcher(&mut ldap).await?;
        let found = self.find(&mut ldap, user).await?;
        let _ = ldap.unbind().await;
        let route = found.and_then(|(_, route)| route);
        self.remember(user, route.clone());
        Ok(route)
    }
}

impl AuthPlugin for Ldap {
    fn check<'a>(&'a self, credentials: &'a Credentials) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout() * 3, self.check_inner(credentials)).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => Verdict::Unavailable(format!("LDAP: {e}")),
                Err(_) => Verdict::Unavailable("LDAP: timed out".into()),
            }
        })
    }

    fn route<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            self.config.route_attribute.as_ref()?;
            {
                let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((at, route)) = routes.get(user) {
                    if at.elapsed() < Duration::from_secs(self.config.cache_secs) {
                        return route.clone();
                    }
                }
            }
            match tokio::time::timeout(self.timeout() * 2, self.route_inner(user)).await {
                Ok(Ok(route)) => route,
                Ok(Err(e)) => {
                    tracing::warn!(user, error = %e, "mail: LDAP route lookup failed");
                    None
                }
                Err(_) => None,
            }
        })
    }
}
