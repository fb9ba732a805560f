//! Test support for the mail forwarders: real backends started as our own
//! processes with temporary configs, on loopback addresses of their own:
//! Dovecot (IMAP, POP3; Debian's dovecot-imapd and dovecot-pop3d), an SMTP
//! backend on aiosmtpd (`smtp_backend.py`), and slapd for the LDAP plug-in.
//! Clients are Python's imaplib, poplib and smtplib (`/usr/bin/python3`,
//! Debian's, which has aiosmtpd), swaks and openssl.
#![allow(dead_code)] // each test file uses part of it

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PYTHON: &str = "/usr/bin/python3";

pub use crate::support::free_port;

fn wait_port(ip: &str, port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect((ip, port)).is_err() {
        if Instant::now() > deadline {
            panic!("{what} did not listen on {ip}:{port}; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens `dir` (and its parents up to the temp dir) to other users: the
/// backends drop privileges.
pub fn open_up(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut d = Some(dir);
    while let Some(p) = d {
        if p == Path::new("/tmp") || p == Path::new("/") {
            break;
        }
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
        d = p.parent();
    }
}

/// A self-signed certificate (for backends' TLS) in `dir`.
pub fn cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let (c, k) = (dir.join(format!("{name}-cert.pem")), dir.join(format!("{name}-key.pem")));
    std::fs::write(&c, made.cert.pem()).unwrap();
    std::fs::write(&k, made.signing_key.serialize_pem()).unwrap();
    (c, k)
}

/// One Dovecot backend: IMAP and POP3 on `ip`, users from a passwd-file.
pub struct Dovecot {
    pub name: String,
    pub ip: String,
    pub imap_port: u16,
    pub pop3_port: u16,
    /// TLS from the first byte.
    pub imaps_port: u16,
    pub pop3s_port: u16,
    pub mail: PathBuf,
    pub log: PathBuf,
    child: Child,
}

impl Dovecot {
    /// `users`: (name, password). `proxy_protocol`: the listeners expect a
    /// PROXY header (`haproxy = yes`).
    pub fn start(dir: &Path, name: &str, ip: &str, users: &[(&str, &str)], proxy_protocol: bool) -> Dovecot {
        let d = dir.join(name);
        let mail = d.join("mail");
        std::fs::create_dir_all(d.join("run")).unwrap();
        std::fs::create_dir_all(d.join("state")).unwrap();
        open_up(&d);
        std::fs::create_dir_all(&mail).unwrap();
        std::fs::set_permissions(&mail, std::fs::Permissions::from_mode(0o777)).unwrap();
        let passwd: String = users.iter().map(|(u, p)| format!("{u}:{{PLAIN}}{p}\n")).collect();
        std::fs::write(d.join("passwd"), passwd).unwrap();
        let (cert, key) = cert(&d, name);
        let (imap_port, pop3_port) = (free_port(ip), free_port(ip));
        let (imaps_port, pop3s_port) = (free_port(ip), free_port(ip));
        let log = d.join("dovecot.log");
        let haproxy = if proxy_protocol { "haproxy = yes" } else { "" };
        let conf = format!(
            r#"
base_dir = {d}/run
state_dir = {d}/state
instance_name = edgetest-{name}-{imap_port}
log_path = {log}
info_log_path = {log}
protocols = imap pop3
listen = {ip}
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
haproxy_trusted_networks = 127.0.0.0/8
login_log_format_elements = user=<%u> method=%m rip=%r rport=%{{rport}} lip=%l %c
mail_location = maildir:{mail}/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={mail}/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {imap_port}
    {haproxy}
  }}
  inet_listener imaps {{
    port = {imaps_port}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3_port}
    {haproxy}
  }}
  inet_listener pop3s {{
    port = {pop3s_port}
    ssl = yes
  }}
}}
"#,
            d = d.display(),
            log = log.display(),
            cert = cert.display(),
            key = key.display(),
            mail = mail.display(),
        );
        let conf_path = d.join("dovecot.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("dovecot (Debian packages dovecot-imapd, dovecot-pop3d)");
        wait_port(ip, imap_port, "dovecot imap", &log);
        wait_port(ip, pop3_port, "dovecot pop3", &log);
        wait_port(ip, imaps_port, "dovecot imaps", &log);
        Dovecot { name: name.into(), ip: ip.into(), imap_port, pop3_port, imaps_port, pop3s_port, mail, log, child }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Messages in `user`'s INBOX on this backend, as files.
    pub fn messages(&self, user: &str) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(self.mail.join(user).join(sub)) {
                for e in rd.flatten() {
                    out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One SMTP backend (submission with AUTH, and MX), on aiosmtpd.
pub struct SmtpBackend {
    pub name: String,
    pub ip: String,
    pub submission_port: u16,
    pub mx_port: u16,
    pub out: PathBuf,
    child: Child,
}

impl SmtpBackend {
    /// With `tls_and_proxy`, it offers STARTTLS and expects PROXY headers.
    pub fn start(dir: &Path, name: &str, ip: &str, users: &[(&str, &str)], tls_and_proxy: bool) -> SmtpBackend {
        let out = dir.join(format!("{name}-smtp-out"));
        std::fs::create_dir_all(&out).unwrap();
        let users: serde_json::Map<String, serde_json::Value> =
            users.iter().map(|(u, p)| ((*u).to_string(), serde_json::json!(p))).collect();
        let (submission_port, mx_port) = (free_port(ip), free_port(ip));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_backend.py");
        let mut child = Command::new(PYTHON)
            .args(["-W", "ignore"])
            .arg(script)
            .args([name, ip, &submission_port.to_string(), &mx_port.to_string()])
            .arg(&out)
            .arg(serde_json::Value::Object(users).to_string())
            .args(if tls_and_proxy {
                let (c, k) = cert(dir, &format!("{name}-smtp"));
                vec![c.into_os_string(), k.into_os_string(), "proxy".into()]
            } else {
                vec![]
            })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with aiosmtpd (Debian package python3-aiosmtpd)");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the SMTP backend {name} did not start");
        SmtpBackend { name: name.into(), ip: ip.into(), submission_port, mx_port, out, child }
    }

    /// Messages received so far, as the backend recorded them.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        let mut files: Vec<_> = std::fs::read_dir(&self.out)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files.iter().map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()).collect()
    }
}

impl Drop for SmtpBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// slapd with a temporary mdb database under `dc=example,dc=org`.
pub struct Slapd {
    pub url: String,
    pub log: PathBuf,
    child: Child,
}

pub const LDAP_BASE: &str = "dc=example,dc=org";
pub const LDAP_ADMIN: &str = "cn=admin,dc=example,dc=org";
pub const LDAP_ADMIN_PASSWORD: &str = "admin-secret";

impl Slapd {
    /// `people`: (uid, password, mailHost) under `ou=people`.
    pub fn start(dir: &Path, people: &[(&str, &str, Option<&str>)]) -> Slapd {
        let d = dir.join("slapd");
        std::fs::create_dir_all(d.join("db")).unwrap();
        let conf = format!(
            "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\ninclude /etc/ldap/schema/misc.schema\n\
             pidfile {d}/slapd.pid\nmodulepath /usr/lib/ldap\nmoduleload back_mdb\n\
             database mdb\nsuffix \"{LDAP_BASE}\"\nrootdn \"{LDAP_ADMIN}\"\nrootpw {LDAP_ADMIN_PASSWORD}\n\
             directory {d}/db\n\
             access to attrs=userPassword by anonymous auth by self read by * none\n\
             access to * by * read\n",
            d = d.display()
        );
        let conf_path = d.join("slapd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut ldif = format!(
            "dn: {LDAP_BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
             dn: ou=people,{LDAP_BASE}\nobjectClass: organizationalUnit\nou: people\n\n"
        );
        for (uid, password, host) in people {
            let rdn = uid.replace(',', "\\,");
            ldif.push_str(&format!(
                "dn: uid={rdn},ou=people,{LDAP_BASE}\nobjectClass: inetOrgPerson\nobjectClass: inetLocalMailRecipient\n\
                 uid: {uid}\ncn: {uid}\nsn: {uid}\nmail: {uid}@example.org\nuserPassword: {password}\n"
            ));
            if let Some(h) = host {
                ldif.push_str(&format!("mailHost: {h}\n"));
            }
            ldif.push('\n');
        }
        let ldif_path = d.join("data.ldif");
        std::fs::write(&ldif_path, ldif).unwrap();
        let add = Command::new("slapadd").arg("-f").arg(&conf_path).arg("-l").arg(&ldif_path).output().unwrap();
        assert!(add.status.success(), "slapadd: {}", String::from_utf8_lossy(&add.stderr));
        let port = free_port("127.0.0.1");
        let url = format!("ldap://127.0.0.1:{port}/");
        let log = d.join("slapd.log");
        let child = Command::new("slapd")
            .arg("-f")
            .arg(&conf_path)
            .args(["-h", &url, "-d", "256"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("slapd (Debian package slapd)");
        wait_port("127.0.0.1", port, "slapd", &log);
        Slapd { url: format!("ldap://127.0.0.1:{port}"), log, child }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a Python client script with arguments; returns its output.
pub fn python(script: &str, args: &[&str]) -> Output {
    Command::new(PYTHON).arg("-c").arg(script).args(args).output().expect("python3")
}

/// Runs a Python script that must succeed; returns its stdout.
pub fn python_ok(script: &str, args: &[&str]) -> String {
    let out = python(script, args);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "python failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stdout.into_owned()
}
