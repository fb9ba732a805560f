//! Backend host keys, pinned per backend name in `data_dir/ssh/known_hosts`
//! (`<backend> <key type> <base64>` per line). With trust on first use, the
//! first key a backend shows is written there; after that, any other key is
//! refused (the login fails and the mismatch is logged). Without it, only
//! keys an admin put in the file are accepted.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use russh::keys::PublicKey;

pub struct KnownHosts {
    path: PathBuf,
    tofu: bool,
    keys: Mutex<HashMap<String, Vec<PublicKey>>>,
}

/// What checking a backend's key found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Known,
    /// First seen and now pinned (trust on first use).
    Pinned,
    Unknown,
    Mismatch,
}

impl KnownHosts {
    pub fn open(path: &Path, tofu: bool) -> Result<Self, String> {
        let mut keys: HashMap<String, Vec<PublicKey>> = HashMap::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let (name, key) = line
                        .split_once(char::is_whitespace)
                        .ok_or_else(|| format!("{}:{}: expected `<backend> <key>`", path.display(), n + 1))?;
                    let key = PublicKey::from_openssh(key.trim())
                        .map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
                    keys.entry(name.to_string()).or_default().push(key);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        Ok(Self { path: path.into(), tofu, keys: Mutex::new(keys) })
    }

    /// Checks `key` for `backend`, pinning it when first seen and allowed.
    pub fn check(&self, backend: &str, key: &PublicKey) -> Verdict {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        match keys.get(backend) {
            Some(known) if known.iter().any(|k| k.key_data() == key.key_data()) => Verdict::Known,
            Some(_) => Verdict::Mismatch,
            None if !self.tofu => Verdict::Unknown,
            None => {
                let line = match key.to_openssh() {
                    Ok(l) => format!("{backend} {l}\n"),
                    Err(_) => return Verdict::Unknown,
                };
                let written = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|()| f.sync_all()));
                if let Err(e) = written {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot pin a backend host key");
                    return Verdict::Unknown;
                }
                keys.insert(backend.to_string(), vec![key.clone()]);
                Verdict::Pinned
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::{Algorithm, PrivateKey};

    fn key() -> PublicKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap().public_key().clone()
    }

    #[test]
    fn first_key_is_pinned_then_only_it_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let (k1, k2) = (key(), key());
        let known = KnownHosts::open(&path, true).unwrap();
        assert_eq!(known.check("b1", &k1), Verdict::Pinned);
        assert_eq!(known.check("b1", &k1), Verdict::Known);
        assert_eq!(known.check("b1", &k2), Verdict::Mismatch);
        assert_eq!(known.check("b2", &k2), Verdict::Pinned);
        // The pins survive a restart, and without trust on first use an
        // unknown backend is refused.
        let reopened = KnownHosts::open(&path, false).unwrap();
        assert_eq!(reopened.check("b1", &k1), Verdict::Known);
        assert_eq!(reopened.check("b1", &k2), Verdict::Mismatch);
        assert_eq!(reopened.check("b3", &k1), Verdict::Unknown);
        assert!(std::fs::read_to_string(&path).unwrap().lines().count() == 2);
    }

    #[test]
    fn a_damaged_file_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, "# comment\n\nb1 ssh-ed25519 not-base64\n").unwrap();
        let err = KnownHosts::open(&path, true).err().unwrap();
        assert!(err.contains("known_hosts:3"), "{err}");
    }
}
