//! Test support: real OpenSSH servers (Debian's `openssh-server`) as SSH
//! backends, each our own `sshd -D -f` on a loopback address of its own
//! with a temporary host key, and a system user to log in as.
#![allow(dead_code)] // each test file uses part of it

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The login the tests use; created once (useradd), password set each run.
pub const USER: &str = "edgetest";
pub const PASSWORD: &str = "edge-test-password-1";

/// Makes sure the test user exists with [`PASSWORD`]. Needs root.
pub fn ensure_user() {
    let exists = Command::new("id").arg(USER).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap().success();
    if !exists {
        let ok = Command::new("useradd")
            .args(["--no-create-home", "--home-dir", "/tmp", "--shell", "/bin/sh", USER])
            .status()
            .expect("useradd (Debian package passwd)");
        // Two tests may race to create it: exists now either way.
        let _ = ok;
    }
    // A home sshd can chdir to (an older run may have made it elsewhere).
    let _ = Command::new("usermod").args(["--home", "/tmp", USER]).stderr(Stdio::null()).status();
    let mut child = Command::new("chpasswd").stdin(Stdio::piped()).spawn().expect("chpasswd");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), format!("{USER}:{PASSWORD}\n").as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "chpasswd failed (the SSH tests run as root)");
    std::fs::create_dir_all("/run/sshd").unwrap(); // sshd's privilege separation directory
}

/// One sshd backend.
pub struct Sshd {
    pub name: String,
    pub ip: String,
    pub port: u16,
    /// Where its sftp sessions start (`internal-sftp -d`), owned by USER.
    pub files: PathBuf,
    pub log: PathBuf,
    child: Child,
}

impl Sshd {
    /// Starts sshd for backend `name` on `ip:port`. It trusts the user CA
    /// in `ca_pub` and sets `BACKEND=<name>` in every session, so a command
    /// can tell which backend ran it. With `pam`, passwords go through PAM
    /// and keyboard-interactive logins are offered (Debian's /etc/pam.d/sshd).
    pub fn start(dir: &Path, name: &str, ip: &str, port: u16, ca_pub: &Path, pam: bool) -> Sshd {
        let d = dir.join(name);
        let files = d.join("files");
        std::fs::create_dir_all(&files).unwrap();
        for p in [dir, &d] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let chown = Command::new("chown").arg(format!("{USER}:")).arg(&files).status().unwrap();
        assert!(chown.success());
        let key = d.join("ssh_host_ed25519_key");
        let keygen = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .expect("ssh-keygen (openssh-client)");
        assert!(keygen.success());
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress {ip}\nHostKey {key}\nPidFile {d}/sshd.pid\nUsePAM {yes_no}\n\
                 PasswordAuthentication yes\nKbdInteractiveAuthentication {yes_no}\nPubkeyAuthentication yes\n\
                 TrustedUserCAKeys {ca}\nAuthorizedKeysFile none\nStrictModes no\nPermitRootLogin no\n\
                 Subsystem sftp internal-sftp -d {files}\nSetEnv BACKEND={name}\nMaxStartups 100:30:200\n\
                 LogLevel VERBOSE\n",
                key = key.display(),
                d = d.display(),
                ca = ca_pub.display(),
                files = files.display(),
                yes_no = if pam { "yes" } else { "no" },
            ),
        )
        .unwrap();
        let log = d.join("sshd.log");
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(&log)
            .stdin(Stdio::null())
            .spawn()
            .expect("sshd (Debian package openssh-server)");
        let sshd = Sshd { name: name.into(), ip: ip.into(), port, files, log, child };
        sshd.wait_listening();
        sshd
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((self.ip.as_str(), self.port)).is_err() {
            assert!(Instant::now() < deadline, "sshd {} not listening; log:\n{}", self.name, self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free on both addresses (the backends share it, as production
/// backends share port 22).
pub fn shared_port(ips: &[&str]) -> u16 {
    loop {
        let probe = std::net::TcpListener::bind((ips[0], 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        if ips[1..].iter().all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok()) {
            return port;
        }
    }
}

/// ssh/sftp/scp options for a test client: no host key prompts, no agent,
/// no config files.
pub fn client_opts() -> Vec<String> {
    ["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Options for a password login through sshpass.
pub fn password_opts() -> Vec<String> {
    let mut o = client_opts();
    o.extend(
        ["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password", "-o", "NumberOfPasswordPrompts=1"]
            .iter()
            .map(|s| s.to_string()),
    );
    o
}
