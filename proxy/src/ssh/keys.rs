//! The edge's SSH keys, kept in `data_dir/ssh` (mode 0600, made on the first
//! start): host keys (`host_ed25519_key`, `host_rsa_key`) presented to every
//! client, the user CA (`user_ca`, with `user_ca.pub` for the backends'
//! `TrustedUserCAKeys`), and the key the edge logs in upstream with, one
//! short-lived certificate per login.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, Certificate, PrivateKey};

pub struct EdgeKeys {
    /// Presented to clients, ed25519 first.
    pub host: Vec<PrivateKey>,
    user_ca: PrivateKey,
    /// Logs in upstream, with a certificate from [`EdgeKeys::certificate`].
    pub upstream: Arc<PrivateKey>,
}

impl EdgeKeys {
    /// Reads the keys in `dir`, making the missing ones.
    pub fn load_or_create(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
        let ed25519 = key_file(&dir.join("host_ed25519_key"), Algorithm::Ed25519)?;
        let rsa = key_file(&dir.join("host_rsa_key"), Algorithm::Rsa { hash: None })?;
        let user_ca = key_file(&dir.join("user_ca"), Algorithm::Ed25519)?;
        let ca_pub = dir.join("user_ca.pub");
        let line = user_ca.public_key().to_openssh().map_err(|e| e.to_string())?;
        if std::fs::read_to_string(&ca_pub).map(|t| t.trim() != line).unwrap_or(true) {
            std::fs::write(&ca_pub, format!("{line} edge-user-ca\n"))
                .map_err(|e| format!("{}: {e}", ca_pub.display()))?;
        }
        let upstream = key_file(&dir.join("upstream_ed25519_key"), Algorithm::Ed25519)?;
        Ok(Self { host: vec![ed25519, rsa], user_ca, upstream: Arc::new(upstream) })
    }

    /// A user certificate for `user` on the upstream key, valid from a
    /// minute ago (clock skew) for `validity`.
    pub fn certificate(&self, user: &str, validity: Duration) -> Result<Certificate, String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
        let mut b = Builder::new_with_random_nonce(
            &mut rand::rng(),
            self.upstream.public_key(),
            now.saturating_sub(60),
            now + validity.as_secs(),
        )
        .map_err(|e| e.to_string())?;
        let err = |e: russh::keys::ssh_key::Error| e.to_string();
        b.cert_type(CertType::User).map_err(err)?;
        b.key_id(format!("edge:{user}")).map_err(err)?;
        b.valid_principal(user).map_err(err)?;
        for ext in ["permit-pty", "permit-user-rc", "permit-port-forwarding"] {
            b.extension(ext, "").map_err(err)?;
        }
        b.sign(&self.user_ca).map_err(err)
    }

    /// The CA line backends put in `TrustedUserCAKeys`.
    pub fn user_ca_public(&self) -> String {
        self.user_ca.public_key().to_openssh().unwrap_or_default()
    }
}

/// Reads an OpenSSH private key, or makes one (mode 0600) if there is none.
fn key_file(path: &Path, algorithm: Algorithm) -> Result<PrivateKey, String> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    match std::fs::read_to_string(path) {
        Ok(text) => PrivateKey::from_openssh(text.as_bytes()).map_err(|e| at(&e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = PrivateKey::random(&mut rand::rng(), algorithm).map_err(|e| at(&e))?;
            let text = key.to_openssh(LineEnding::LF).map_err(|e| at(&e))?;
            let mut file =
                std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| at(&e))?;
            std::io::Write::write_all(&mut file, text.as_bytes()).map_err(|e| at(&e))?;
            file.sync_all().map_err(|e| at(&e))?;
            tracing::info!(path = %path.display(), algorithm = %key.algorithm(), "made a new SSH key");
            Ok(key)
        }
        Err(e) => Err(at(&e)),
    }
}
