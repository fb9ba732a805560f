//! The HTTPS certificates: PEM files in one directory, indexed by the DNS
//! names they cover and chosen per handshake (rustls's
//! [`ResolvesServerCert`], installed through Pingora's `set_cert_resolver`).
//!
//! A certificate is `NAME.pem` (chain, then or before its key, in one file)
//! or `NAME.crt` with `NAME.key`. A site may name one (`policy.tls.cert =
//! "NAME"`); otherwise the SNI picks it: the exact name first, then the
//! wildcard one level up. The directory is re-read when a file changes
//! ([`Certs::refresh`], every 2 s and on SIGHUP): a new or renewed
//! certificate is served on the next handshake, with no restart. A file
//! that does not parse is logged and skipped, and the last good version of
//! it keeps serving.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use routing_table::Table;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// One certificate with its key.
#[derive(Debug)]
pub struct Cert {
    /// The file's name without its extension.
    pub name: String,
    /// The DNS names of its subjectAltName (lower case; `*.` for wildcards).
    pub names: Vec<String>,
    /// Its notBefore and notAfter, in seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub key: Arc<CertifiedKey>,
}

impl Cert {
    /// Whether the certificate is valid for `host` (lower case, no port),
    /// by the rules of RFC 6125: a wildcard covers exactly one label.
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            Some(parent) => host.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => n == host,
        })
    }
}

/// What a handshake chose, kept with the connection (Pingora's TLS digest
/// extension) so requests on it can be checked against the certificate.
#[derive(Debug)]
pub struct Handshake {
    pub sni: Option<String>,
    pub cert: Option<Arc<Cert>>,
}

/// When a file was last read: its modification time and length.
type Stamp = (SystemTime, u64);

#[derive(Default)]
struct Index {
    by_name: HashMap<String, (Arc<Cert>, Vec<Stamp>)>,
    exact: HashMap<String, Arc<Cert>>,
    wildcard: HashMap<String, Arc<Cert>>,
}

impl Index {
    fn build(by_name: HashMap<String, (Arc<Cert>, Vec<Stamp>)>) -> Index {
        let mut exact: HashMap<String, Arc<Cert>> = HashMap::new();
        let mut wildcard: HashMap<String, Arc<Cert>> = HashMap::new();
        for (cert, _) in by_name.values() {
            for n in &cert.names {
                let (map, key) = match n.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent),
                    None => (&mut exact, n.as_str()),
                };
                // Two files for one name (a renewal placed beside the old
                // one): the one valid longest wins, then the name's order.
                let better = map.get(key).is_none_or(|old| (cert.not_after, &old.name) > (old.not_after, &cert.name));
                if better {
                    map.insert(key.to_string(), Arc::clone(cert));
                }
            }
        }
        Index { by_name, exact, wildcard }
    }
}

/// The certificate directory, indexed.
pub struct Certs {
    dir: PathBuf,
    /// Served to clients without SNI, or whose name no certificate covers.
    default: Option<String>,
    table: Table,
    index: ArcSwap<Index>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Certs {
    /// Reads `dir` (made, 0700, when missing). `default` names the
    /// certificate for clients without SNI; without it, the first by name.
    pub fn load(dir: &Path, default: Option<String>, table: Table) -> Result<Arc<Certs>, String> {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let certs =
            Arc::new(Certs { dir: dir.to_path_buf(), default, table, index: ArcSwap::from_pointee(Index::default()) });
        certs.refresh()?;
        if let Some(name) = &certs.default {
            if !certs.index.load().by_name.contains_key(name) {
                return Err(format!("{}: no certificate `{name}` (default_cert)", dir.display()));
            }
        }
        Ok(certs)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// One certificate by its file name.
    pub fn get(&self, name: &str) -> Option<Arc<Cert>> {
        self.index.load().by_name.get(name).map(|(c, _)| Arc::clone(c))
    }

    /// Every certificate, by name.
    pub fn list(&self) -> Vec<Arc<Cert>> {
        let mut all: Vec<_> = self.index.load().by_name.values().map(|(c, _)| Arc::clone(c)).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Re-reads the files that changed since the last read. A file that
    /// fails keeps its last good version (or stays out); returns how many
    /// files changed, or the error of reading the directory itself.
    pub fn refresh(&self) -> Result<usize, String> {
        let old = self.index.load();
        let mut files: HashMap<String, Vec<PathBuf>> = HashMap::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let (Some(stem), Some(ext)) = (path.file_stem().and_then(|s| s.to_str()), path.extension()) else {
                continue;
            };
            if ext == "pem" || ext == "crt" {
                files.entry(stem.to_string()).or_default().push(path.clone());
            }
        }
        let mut next = HashMap::new();
        let mut changed = 0;
        for (name, mut paths) in files {
            paths.sort();
            // A `.crt` takes its key from the `.key` beside it.
            let key_path =
                paths.iter().find(|p| p.extension().is_some_and(|e| e == "crt")).map(|p| p.with_extension("key"));
            let cert_path = key_path.as_ref().map_or(paths[0].clone(), |k| k.with_extension("crt"));
            let stamps: Vec<Stamp> =
                std::iter::once(&cert_path).chain(key_path.as_ref()).filter_map(|p| stamp(p)).collect();
            if let Some((cert, was)) = old.by_name.get(&name) {
                if *was == stamps {
                    next.insert(name, (Arc::clone(cert), stamps));
                    continue;
                }
            }
            changed += 1;
            match read_cert(&name, &cert_path, key_path.as_deref()) {
                Ok(cert) => {
                    tracing::info!(cert = %name, names = ?cert.names, "https: certificate loaded");
                    next.insert(name, (Arc::new(cert), stamps));
                }
                Err(e) => {
                    tracing::error!(cert = %name, error = %e, "https: certificate not loaded; its last good version (if any) stays");
                    if let Some((cert, _)) = old.by_name.get(&name) {
                        // Keep it, with the new stamps: the error is logged
                        // once per change of the file, not every refresh.
                        next.insert(name, (Arc::clone(cert), stamps));
                    }
                }
            }
        }
        let removed = old.by_name.keys().filter(|n| !next.contains_key(*n)).count();
        if changed + removed > 0 {
            self.index.store(Arc::new(Index::build(next)));
        }
        Ok(changed + removed)
    }

    /// The certificate for a handshake with this SNI (lower case).
    pub fn choose(&self, sni: Option<&str>) -> Option<Arc<Cert>> {
        let index = self.index.load();
        if let Some(sni) = sni {
            let snapshot = self.table.load();
            let named = snapshot.site_for_host(sni).and_then(|m| m.site.policy.tls.cert.clone());
            if let Some((cert, _)) = named.and_then(|n| index.by_name.get(&*n)) {
                return Some(Arc::clone(cert));
            }
            if let Some(cert) = index.exact.get(sni) {
                return Some(Arc::clone(cert));
            }
            if let Some(cert) = sni.split_once('.').and_then(|(_, parent)| index.wildcard.get(parent)) {
                return Some(Arc::clone(cert));
            }
        }
        match &self.default {
            Some(name) => index.by_name.get(name).map(|(c, _)| Arc::clone(c)),
            None => index.by_name.iter().min_by(|a, b| a.0.cmp(b.0)).map(|(_, (c, _))| Arc::clone(c)),
        }
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reads one certificate: the chain from `cert_path`, the key from
/// `key_path` or the same file; checks that they match.
fn read_cert(name: &str, cert_path: &Path, key_path: Option<&Path>) -> Result<Cert, String> {
    let shown = |p: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", p.display());
    let pem = std::fs::read(cert_path).map_err(|e| shown(cert_path, &e))?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>().map_err(|e| shown(cert_path, &e))?;
    let Some(leaf) = chain.first() else { return Err(shown(cert_path, &"no certificate in the file")) };
    let key_path = key_path.unwrap_or(cert_path);
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| shown(key_path, &e))?;
    let (names, not_before, not_after) = leaf_names(leaf).map_err(|e| shown(cert_path, &e))?;
    if names.is_empty() {
        return Err(shown(cert_path, &"the certificate names no DNS name (subjectAltName)"));
    }
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| shown(key_path, &e))?;
    let key = CertifiedKey::new(chain, signing);
    key.keys_match().map_err(|e| shown(key_path, &format!("the key does not match the certificate ({e})")))?;
    Ok(Cert { name: name.to_string(), names, not_before, not_after, key: Arc::new(key) })
}

/// The subjectAltName DNS names (lower case), the notBefore and the
/// notAfter of a certificate.
pub fn leaf_names(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64, i64), String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(n) = n {
                names.push(n.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    Ok((names, cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp()))
}

/// The rustls resolver: the SNI's certificate, else the default.
#[derive(Debug)]
pub struct Resolver(pub Arc<Certs>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(|s| s.to_ascii_lowercase());
        self.0.choose(sni.as_deref()).map(|c| Arc::clone(&c.key))
    }
}

/// Makes a local CA (`ca.pem`, `ca.key` in `ca_dir`) and a certificate
/// signed by it for `names` (`NAME.pem` in the certificate directory), for a
/// first run without certificates. `curl --cacert ca.pem` then verifies
/// the edge. Returns the path of the CA certificate.
pub fn make_self_signed(ca_dir: &Path, cert_dir: &Path, name: &str, names: &[String]) -> Result<PathBuf, String> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let err = |e: rcgen::Error| e.to_string();
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "Edge local CA (self-signed, first run)");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = CertifiedIssuer::self_signed(ca, ca_key).map_err(err)?;
    let mut leaf = CertificateParams::new(names.to_vec()).map_err(err)?;
    leaf.distinguished_name.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
    let leaf_key = KeyPair::generate().map_err(err)?;
    let cert = leaf.signed_by(&leaf_key, &issuer).map_err(err)?;
    let ca_path = ca_dir.join("ca.pem");
    crate::files::write_whole(ca_dir, "ca.key", &ca_key_pem, 0o600)?;
    crate::files::write_whole(ca_dir, "ca.pem", &issuer.pem(), 0o644)?;
    let chain = format!("{}{}{}", cert.pem(), issuer.pem(), leaf_key.serialize_pem());
    crate::files::write_whole(cert_dir, &format!("{name}.pem"), &chain, 0o600)?;
    Ok(ca_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Cert {
        let made = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(made.signing_key.serialize_pem().as_bytes()).unwrap();
        let signing = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
        let (names, not_before, not_after) = leaf_names(made.cert.der()).unwrap();
        Cert {
            name: "t".into(),
            names,
            not_before,
            not_after,
            key: Arc::new(CertifiedKey::new(vec![made.cert.der().clone()], signing)),
        }
    }

    #[test]
    fn a_wildcard_covers_one_label() {
        let c = cert(&["*.example.org", "example.org"]);
        assert!(c.covers("www.example.org"));
        assert!(c.covers("example.org"));
        assert!(!c.covers("a.b.example.org"));
        assert!(!c.covers("example.net"));
        assert!(!c.covers(".example.org"));
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default_and_files_reload() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = routing_table::TableMetrics::unregistered().unwrap();
        let table = Table::open(Box::new(routing_table::MemoryStore::new()), metrics).unwrap();
        let write = |name: &str, names: &[&str]| {
            let made =
                rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
            let text = format!("{}{}", made.cert.pem(), made.signing_key.serialize_pem());
            std::fs::write(dir.path().join(format!("{name}.pem")), text).unwrap();
        };
        write("a", &["a.example.org"]);
        write("wild", &["*.example.org"]);
        let certs = Certs::load(dir.path(), Some("a".into()), table).unwrap();
        assert_eq!(certs.choose(Some("a.example.org")).unwrap().name, "a");
        assert_eq!(certs.choose(Some("b.example.org")).unwrap().name, "wild");
        assert_eq!(certs.choose(Some("x.b.example.org")).unwrap().name, "a", "default");
        assert_eq!(certs.choose(None).unwrap().name, "a");
        // A broken rewrite keeps the last good version.
        std::fs::write(dir.path().join("wild.pem"), "not a certificate").unwrap();
        certs.refresh().unwrap();
        assert_eq!(certs.choose(Some("b.example.org")).unwrap().name, "wild");
        // A new file is picked up; a removed one goes.
        write("b", &["b.example.org"]);
        std::fs::remove_file(dir.path().join("wild.pem")).unwrap();
        assert_eq!(certs.refresh().unwrap(), 2);
        assert_eq!(certs.choose(Some("b.example.org")).unwrap().name, "b");
        assert_eq!(certs.choose(Some("c.example.org")).unwrap().name, "a");
    }

    #[test]
    fn a_key_that_does_not_match_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let one = rcgen::generate_simple_self_signed(vec!["a.example.org".to_string()]).unwrap();
        let two = rcgen::generate_simple_self_signed(vec!["a.example.org".to_string()]).unwrap();
        std::fs::write(dir.path().join("a.crt"), one.cert.pem()).unwrap();
        std::fs::write(dir.path().join("a.key"), two.signing_key.serialize_pem()).unwrap();
        let e = read_cert("a", &dir.path().join("a.crt"), Some(&dir.path().join("a.key"))).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
    }
}
