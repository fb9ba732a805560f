//! The mail forwarders against real backends: two Dovecots (IMAP, POP3)
//! and two aiosmtpd SMTP servers (submission, MX), on 127.0.0.31 and
//! 127.0.0.32, started by the test as its own processes; slapd for the
//! LDAP plug-in. Clients: Python's imaplib, poplib and smtplib, raw
//! sockets for what those libraries cannot send, and swaks.
//!
//! b1 is reached in plaintext and learns the client's address natively
//! (IMAP ID, POP3 and SMTP XCLIENT); b2 through STARTTLS with a PROXY v2
//! header.

#[path = "support/mail.rs"]
mod mail;
#[path = "support/edge.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use mail::{free_port, python_ok, Dovecot, Slapd, SmtpBackend};
use proxy::control::client::Client;
use serde_json::{json, Value};
use support::{eventually, EdgeProcess};

const USERS: [(&str, &str); 5] =
    [("alice", "alice-pw"), ("bob", "bob pw \"quoted\""), ("carol", "carol-pw"), ("dan", "dan-pw"), ("pre", "pre-pw")];

struct Ports {
    imap: u16,
    imaps: u16,
    pop3: u16,
    pop3s: u16,
    submission: u16,
    submissions: u16,
    mx: u16,
}

struct World {
    _dir: tempfile::TempDir,
    _edge: EdgeProcess,
    client: Client,
    config: PathBuf,
    ports: Ports,
    admin: u16,
    /// The edge's (self-signed) mail certificate, for clients to verify.
    ca: PathBuf,
    dovecot: Vec<Dovecot>,
    smtp: Vec<SmtpBackend>,
}

impl World {
    async fn start(extra: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let dovecot = vec![
            Dovecot::start(d, "b1", "127.0.0.31", &USERS, false),
            Dovecot::start(d, "b2", "127.0.0.32", &USERS, true),
        ];
        let smtp = vec![
            SmtpBackend::start(d, "b1", "127.0.0.31", &USERS, false),
            SmtpBackend::start(d, "b2", "127.0.0.32", &USERS, true),
        ];
        let p = || free_port("127.0.0.1");
        let admin = free_port("127.0.0.1");
        let ports = Ports { imap: p(), imaps: p(), pop3: p(), pop3s: p(), submission: p(), submissions: p(), mx: p() };
        let backend = |i: usize| {
            format!(
                "imap_port = {}\npop3_port = {}\nsubmission_port = {}\nmx_port = {}\n",
                dovecot[i].imap_port, dovecot[i].pop3_port, smtp[i].submission_port, smtp[i].mx_port
            )
        };
        let l = |port: u16| format!("[\"127.0.0.1:{port}\"]");
        let config = d.join("edge.toml");
        std::fs::write(
            &config,
            format!(
                "[edge]\ndata_dir = \"{d}/var\"\n[store]\nseed = \"\"\n[control]\nsocket = \"{d}/var/control.sock\"\n\
                 [admin]\nlisten = \"127.0.0.1:{admin}\"\n[log]\nlevel = \"info\"\n\
                 [mail]\nhostname = \"mail.test\"\nimap = {}\nimaps = {}\npop3 = {}\npop3s = {}\n\
                 submission = {}\nsubmissions = {}\nmx = {}\n{}{extra}\n\
                 [mail.backends.b1]\n{}\n[mail.backends.b2]\ntls = \"starttls\"\nclient_address = \"proxy\"\n{}\n\
                 [mail.backends.b1tls]\ntls = \"tls\"\nimap_port = {}\npop3_port = {}\n",
                l(ports.imap),
                l(ports.imaps),
                l(ports.pop3),
                l(ports.pop3s),
                l(ports.submission),
                l(ports.submissions),
                l(ports.mx),
                if extra.contains("login_timeout_secs") { "" } else { "login_timeout_secs = 20\n" },
                backend(0),
                backend(1),
                dovecot[0].imaps_port,
                dovecot[0].pop3s_port,
                d = d.display(),
            ),
        )
        .unwrap();
        let socket = d.join("var/control.sock");
        let mut edge = EdgeProcess::spawn(&config, &socket);
        edge.ready().await;
        let client = Client::new(&socket);
        let txn = json!({"ops": [
            {"op": "put", "entity": {"kind": "backend", "name": "b1", "addresses": ["127.0.0.31"]}},
            {"op": "put", "entity": {"kind": "backend", "name": "b2", "addresses": ["127.0.0.32"]}},
            {"op": "put", "entity": {"kind": "member", "name": "m"}},
            {"op": "put", "entity": {"kind": "mail_login", "user": "alice", "member": "m", "backend": "b1"}},
            {"op": "put", "entity": {"kind": "mail_login", "user": "bob", "backend": "b2"}},
            // b1's Dovecot again, through its implicit-TLS ports.
            {"op": "put", "entity": {"kind": "backend", "name": "b1tls", "addresses": ["127.0.0.31"]}},
            {"op": "put", "entity": {"kind": "mail_login", "user": "dan", "backend": "b1tls"}},
            {"op": "put", "entity": {"kind": "mail_domain", "domain": "a.example", "member": "m", "backend": "b1",
                "overrides": {"bob": "b2"}}},
        ]});
        let a = client.post("/v1/transactions", &txn).await.unwrap();
        assert_eq!(a.status, 200, "{:?}", a.body);
        let ca = d.join("var/mail/cert.pem");
        World { _dir: dir, _edge: edge, client, config, ports, admin, ca, dovecot, smtp }
    }

    fn args(&self) -> Vec<String> {
        let p = &self.ports;
        [p.imap, p.imaps, p.pop3, p.pop3s, p.submission, p.submissions, p.mx]
            .iter()
            .map(u16::to_string)
            .chain([self.ca.display().to_string()])
            .collect()
    }

    /// Runs a client script with the ports and CA as `sys.argv[1:9]`.
    fn run(&self, script: &str) -> Value {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = python_ok(&format!("{PRELUDE}\n{script}"), &args);
        serde_json::from_str(out.lines().last().unwrap_or("null")).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    fn edgectl(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_edgectl")).arg("--config").arg(&self.config).args(args).output().unwrap()
    }
}

/// Shared by every client script: ports, a verifying TLS context, and a
/// raw line-oriented client for what the libraries will not send.
const PRELUDE: &str = r#"
import imaplib, poplib, smtplib, socket, ssl, sys, json, base64, time
IMAP, IMAPS, POP3, POP3S, SUB, SUBS, MX = (int(a) for a in sys.argv[1:8])
CTX = ssl.create_default_context(cafile=sys.argv[8])
out = {}

class Raw:
    def __init__(self, port, tls=False):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if tls:
            self.sock = CTX.wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""
        self.greeting = self.line()
    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())
    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()
    def until(self, prefix):
        lines = []
        while True:
            l = self.line()
            lines.append(l)
            if l.startswith(prefix):
                return lines
    def starttls(self):
        assert self.buf == b"", self.buf
        self.sock = CTX.wrap_socket(self.sock, server_hostname="localhost")
    def closed(self):
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, socket.timeout):
            return True
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_and_pop3_logins_go_to_the_users_backend() {
    let w = World::start("").await;
    let out = w.run(
        r#"
m = imaplib.IMAP4("localhost", IMAP)
out["caps_plain"] = sorted(m.capabilities)
try:
    m.login("alice", "alice-pw")
except imaplib.IMAP4.error as e:
    out["plain_login"] = str(e)
m.starttls(ssl_context=CTX)
out["alice_login"] = m.login("alice", "alice-pw")[0]
out["alice_port"] = m.sock.getsockname()[1]
m.append("INBOX", None, None, b"Subject: via edge\r\n\r\nhello alice\r\n")
out["alice_count"] = int(m.select("INBOX")[1][0])
m.logout()

m = imaplib.IMAP4_SSL("localhost", IMAPS, ssl_context=CTX)
out["bob_login"] = m.login("bob", 'bob pw "quoted"')[0]
out["bob_port"] = m.sock.getsockname()[1]
m.append("INBOX", None, None, b"Subject: for bob\r\n\r\nhello bob\r\n")
m.logout()

m = imaplib.IMAP4_SSL("localhost", IMAPS, ssl_context=CTX)
out["authenticate"] = m.authenticate("PLAIN", lambda _: b"\0alice\0alice-pw")[0]
out["after_auth_count"] = int(m.select("INBOX")[1][0])
m.logout()

m = imaplib.IMAP4_SSL("localhost", IMAPS, ssl_context=CTX)
out["dan_login"] = m.login("dan", "dan-pw")[0]
m.logout()
p = poplib.POP3_SSL("localhost", POP3S, context=CTX)
p.user("dan")
out["dan_pop"] = p.pass_("dan-pw").decode()
p.quit()

for user, pw in [("alice", "wrong"), ("nobody", "x")]:
    m = imaplib.IMAP4_SSL("localhost", IMAPS, ssl_context=CTX)
    try:
        m.login(user, pw)
        out["failed_" + user] = "logged in?!"
    except imaplib.IMAP4.error as e:
        out["failed_" + user] = str(e)
    m.logout()

# Literals: synchronising ({n} waits for "+") and LITERAL+ ({n+}); SASL-IR.
r = Raw(IMAPS, tls=True)
r.send("a1 LOGIN {5}\r\n")
out["continuation"] = r.line()
r.send('alice {8+}\r\nalice-pw\r\n')
out["literal_login"] = r.until("a1 ")[-1]
r.send("a2 LOGOUT\r\n")
r.until("a2 ")
r = Raw(IMAPS, tls=True)
r.send("b1 AUTHENTICATE PLAIN " + base64.b64encode(b"\0alice\0alice-pw").decode() + "\r\n")
out["sasl_ir"] = r.until("b1 ")[-1]
r = Raw(IMAPS, tls=True)
r.send("c1 AUTHENTICATE PLAIN\r\n")
out["cancel_prompt"] = r.line()
r.send("*\r\n")
out["cancel"] = r.until("c1 ")[-1]
r.send("c2 AUTHENTICATE PLAIN " + base64.b64encode(b"admin\0alice\0alice-pw").decode() + "\r\n")
out["authzid"] = r.until("c2 ")[-1]
r.send("c3 SELECT INBOX\r\n")
out["select_before_login"] = r.until("c3 ")[-1]

# STARTTLS with a command pipelined in plaintext: it is discarded.
r = Raw(IMAP)
r.send("d1 STARTTLS\r\nd2 LOGIN alice alice-pw\r\n")
out["starttls"] = r.until("d1 ")[-1]
r.buf = b""
r.starttls()
r.send("d3 NOOP\r\n")
out["after_injection"] = r.until("d3 ")

# POP3 STLS with USER pipelined in plaintext: discarded, so after TLS a
# PASS has no user to go with.
r = Raw(POP3)
r.send("STLS\r\nUSER alice\r\n")
out["pop_stls"] = r.line()
r.buf = b""
r.starttls()
r.send("PASS alice-pw\r\n")
out["pop_after_injection"] = r.line()

# POP3: STLS then USER/PASS; implicit TLS with AUTH PLAIN (SASL-IR).
p = poplib.POP3("localhost", POP3)
out["pop_caps_plain"] = sorted(p.capa())
p.stls(context=CTX)
p.user("alice")
out["pop_pass"] = p.pass_("alice-pw").decode()
out["pop_stat"] = p.stat()[0]
p.quit()
p = poplib.POP3_SSL("localhost", POP3S, context=CTX)
out["pop_auth"] = p._shortcmd("AUTH PLAIN " + base64.b64encode(b'\0bob\0bob pw "quoted"').decode()).decode()
out["pop_bob_stat"] = p.stat()[0]
p.quit()
for user, pw in [("alice", "wrong"), ("nobody", "x")]:
    p = poplib.POP3_SSL("localhost", POP3S, context=CTX)
    p.user(user)
    try:
        p.pass_(pw)
        out["pop_failed_" + user] = "logged in?!"
    except poplib.error_proto as e:
        out["pop_failed_" + user] = str(e)
print(json.dumps(out))
"#,
    );
    let s = |k: &str| out[k].as_str().unwrap_or_default().to_string();
    assert!(out["caps_plain"].to_string().contains("LOGINDISABLED"), "{out}");
    assert!(s("pop_stls").starts_with("+OK"), "{out}");
    assert!(s("pop_after_injection").starts_with("-ERR"), "the pipelined USER was discarded: {out}");
    assert!(s("plain_login").contains("LOGINDISABLED") || s("plain_login").contains("PRIVACYREQUIRED"), "{out}");
    assert_eq!(s("alice_login"), "OK");
    assert_eq!(out["alice_count"], 1);
    assert_eq!(s("bob_login"), "OK");
    assert_eq!(s("authenticate"), "OK");
    assert_eq!(out["after_auth_count"], 1);
    // The mailboxes are where the table says, and only there.
    assert_eq!(w.dovecot[0].messages("alice").len(), 1);
    assert!(w.dovecot[0].messages("alice")[0].contains("hello alice"));
    assert!(w.dovecot[1].messages("alice").is_empty());
    assert_eq!(w.dovecot[1].messages("bob").len(), 1);
    assert!(w.dovecot[0].messages("bob").is_empty());
    // Wrong password (the backend's answer) and unknown user (the edge's):
    // the same text, so users cannot be enumerated.
    assert!(s("failed_alice").contains("[AUTHENTICATIONFAILED] Authentication failed."), "{out}");
    assert_eq!(s("failed_alice"), s("failed_nobody"));
    assert_eq!(s("continuation").chars().next(), Some('+'));
    assert!(s("literal_login").starts_with("a1 OK"), "{out}");
    assert!(s("sasl_ir").starts_with("b1 OK"), "{out}");
    assert_eq!(s("cancel_prompt").trim_end(), "+");
    assert!(s("cancel").starts_with("c1 BAD"), "{out}");
    assert!(s("authzid").starts_with("c2 NO"), "{out}");
    assert!(s("select_before_login").starts_with("c3 BAD"), "{out}");
    assert!(s("starttls").starts_with("d1 OK"), "{out}");
    let after: Vec<String> = serde_json::from_value(out["after_injection"].clone()).unwrap();
    assert_eq!(after.len(), 1, "the pipelined LOGIN was answered: {after:?}");
    assert!(after[0].starts_with("d3 OK"));
    // POP3.
    assert!(out["pop_caps_plain"].to_string().contains("STLS"));
    assert!(!out["pop_caps_plain"].to_string().contains("USER"), "no USER before TLS: {out}");
    assert!(s("pop_pass").starts_with("+OK"), "{out}");
    assert_eq!(out["pop_stat"], 1);
    assert!(s("pop_auth").starts_with("+OK"), "{out}");
    assert_eq!(out["pop_bob_stat"], 1);
    assert!(s("pop_failed_alice").contains("Authentication failed"), "{out}");
    assert_eq!(s("pop_failed_alice"), s("pop_failed_nobody"));
    // The client's address reached the backends: b1 through IMAP ID, b2
    // through PROXY v2 (the STARTTLS leg).
    let b1 = w.dovecot[0].log_text();
    let b2 = w.dovecot[1].log_text();
    let alice_port = format!("rport={}", out["alice_port"]);
    assert!(b1.lines().any(|l| l.contains("user=<alice>") && l.contains(&alice_port)), "b1 log:\n{b1}");
    let bob_port = format!("rport={}", out["bob_port"]);
    assert!(b2.lines().any(|l| l.contains("user=<bob>") && l.contains(&bob_port)), "b2 log:\n{b2}");
    assert!(b2.contains("TLS"), "b2 was reached over STARTTLS:\n{b2}");
    // dan's backend is b1's implicit-TLS ports (which speak nothing else).
    assert_eq!(s("dan_login"), "OK", "{out}");
    assert!(s("dan_pop").starts_with("+OK"), "{out}");
    // (Dovecot's log process writes a moment later.)
    eventually(5, "dan's TLS login in b1's log", || async {
        let b1 = w.dovecot[0].log_text();
        b1.lines().any(|l| l.contains("imap-login: Info: Login: user=<dan>") && l.ends_with("TLS")).then_some(())
    })
    .await;
    // Sessions and metrics.
    let metrics = metrics(&w);
    let ok = metrics.lines().find(|l| l.starts_with("edge_mail_logins_total{protocol=\"imap\",result=\"ok\"}"));
    assert!(ok.is_some_and(|l| !l.ends_with(" 0")), "{metrics}");
    assert!(metrics.contains("edge_mail_bytes_total{direction=\"to_backend\",protocol=\"imap\"}"), "{metrics}");
}

/// The edge's Prometheus text.
fn metrics(w: &World) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", &format!("http://127.0.0.1:{}/metrics", w.admin)])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_and_mx_route_by_user_and_recipient() {
    let w = World::start("").await;
    let out = w.run(
        r#"
s = smtplib.SMTP("localhost", SUB)
s.ehlo("client.example")
out["ehlo_plain"] = s.esmtp_features
out["auth_plain_text"] = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0alice-pw").decode())[0]
s.starttls(context=CTX)
s.ehlo("client.example")
out["ehlo_tls"] = s.esmtp_features
out["cancel"] = s.docmd("AUTH", "PLAIN")[0]
out["cancel2"] = s.docmd("*")[0]
out["authzid"] = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"admin\0alice\0alice-pw").decode())[0]
s.login("alice", "alice-pw")
out["alice_port"] = s.sock.getsockname()[1]
s.sendmail("alice@a.example", ["friend@remote.example"], b"Subject: sub\r\n\r\nsubmitted by alice\r\n")
s.quit()

# STARTTLS with EHLO and AUTH pipelined in plaintext: discarded, so after
# TLS neither has run; and the EHLO sent before TLS is forgotten.
auth = "AUTH PLAIN " + base64.b64encode(b"\0alice\0alice-pw").decode() + "\r\n"
r = Raw(SUB)
r.send("EHLO injector.example\r\n"); r.until("250 ")
r.send("STARTTLS\r\nEHLO injector.example\r\n" + auth)
out["sub_starttls"] = r.line()
r.buf = b""
r.starttls()
r.send("MAIL FROM:<alice@a.example>\r\n")
out["sub_mail_after_injection"] = r.line()
r.send(auth)
out["sub_auth_after_injection"] = r.line()

s = smtplib.SMTP_SSL("localhost", SUBS, context=CTX)
s.ehlo("bobs.example")
s.user, s.password = "bob", 'bob pw "quoted"'
out["bob_auth_login"] = s.auth("LOGIN", s.auth_login, initial_response_ok=False)[0]
out["bob_port"] = s.sock.getsockname()[1]
s.sendmail("bob@a.example", ["friend@remote.example"], b"Subject: sub\r\n\r\nsubmitted by bob\r\n")
s.quit()

s = smtplib.SMTP_SSL("localhost", SUBS, context=CTX)
try:
    s.login("alice", "wrong")
    out["sub_wrong"] = "logged in?!"
except smtplib.SMTPAuthenticationError as e:
    out["sub_wrong"] = e.smtp_code
try:
    s.login("nobody", "x")
    out["sub_unknown"] = "logged in?!"
except smtplib.SMTPAuthenticationError as e:
    out["sub_unknown"] = e.smtp_code
s.close()

# MX: one transaction, recipients on two backends, one unknown user, one
# unknown domain. Then a second transaction on the same connection to b2.
m = smtplib.SMTP("localhost", MX)
m.ehlo("sender.example")
out["mx_ehlo"] = m.esmtp_features
refused = m.sendmail("s@remote.example", ["alice@a.example", "bob@a.example", "nobody@a.example", "x@unknown.example"],
                     b"Subject: mx\r\n\r\nfirst transaction\r\n")
out["refused"] = {k: [v[0], v[1].decode()] for k, v in refused.items()}
out["second"] = m.sendmail("s@remote.example", ["bob+tag@a.example"], b"Subject: mx\r\n\r\nsecond transaction\r\n")
out["bdat"] = m.docmd("BDAT", "10 LAST")[0]
m.quit()

# SMTP smuggling: a bare-LF "end of data" inside the message.
r = Raw(MX)
r.send("EHLO smuggler.example\r\n"); r.until("250 ")
r.send("MAIL FROM:<s@remote.example>\r\n"); r.until("250")
r.send("RCPT TO:<alice@a.example>\r\n"); out["smuggle_rcpt"] = r.until("2")[-1]
r.send("DATA\r\n"); r.until("354")
r.send("Subject: smuggle\r\n\r\nbefore\n.\nMAIL FROM:<evil@remote.example>\r\nRCPT TO:<alice@a.example>\r\nDATA\r\nsmuggled\r\n.\r\n")
out["smuggle_end"] = r.line()
r.send("QUIT\r\n"); r.line()
print(json.dumps(out))
"#,
    );
    let s = |k: &str| out[k].as_str().unwrap_or_default().to_string();
    assert!(out["ehlo_plain"].get("starttls").is_some(), "{out}");
    assert!(out["ehlo_plain"].get("auth").is_none(), "no AUTH before TLS: {out}");
    assert_eq!(out["auth_plain_text"], 530, "{out}");
    assert!(s("sub_starttls").starts_with("220"), "{out}");
    assert!(s("sub_mail_after_injection").starts_with("530 5.7.0"), "the pipelined EHLO and AUTH never ran: {out}");
    assert!(s("sub_auth_after_injection").starts_with("503 5.5.1"), "the EHLO before TLS forgotten: {out}");
    assert!(out["ehlo_tls"]["auth"].as_str().unwrap().contains("PLAIN"), "{out}");
    assert!(out["ehlo_tls"].get("chunking").is_none());
    assert_eq!(out["cancel"], 334);
    assert_eq!(out["cancel2"], 501);
    assert_eq!(out["authzid"], 535);
    assert_eq!(out["bob_auth_login"], 235);
    assert_eq!(out["sub_wrong"], 535);
    assert_eq!(out["sub_unknown"], 535);
    let b1 = w.smtp[0].messages();
    let b2 = w.smtp[1].messages();
    let on = |msgs: &[Value], text: &str| {
        msgs.iter().filter(|m| m["data"].as_str().unwrap().contains(text)).cloned().collect::<Vec<_>>()
    };
    // Submission: each user's message went to their backend, with the
    // client's address (XCLIENT on b1, PROXY v2 on b2 over STARTTLS).
    let alice = on(&b1, "submitted by alice");
    assert_eq!(alice.len(), 1, "{b1:?}");
    assert_eq!(alice[0]["login"], "alice");
    assert_eq!(alice[0]["xclient"]["ADDR"], "127.0.0.1");
    assert_eq!(alice[0]["xclient"]["PORT"], out["alice_port"].to_string());
    assert_eq!(alice[0]["xclient"]["HELO"], "client.example");
    let bob = on(&b2, "submitted by bob");
    assert_eq!(bob.len(), 1, "{b2:?}");
    assert_eq!(bob[0]["proxy"][1], out["bob_port"]);
    assert_eq!(bob[0]["tls"], true);
    assert!(on(&b2, "submitted by alice").is_empty() && on(&b1, "submitted by bob").is_empty());
    // MX: the first accepted recipient picked b1; bob (on b2) got 452
    // 4.5.3, the unknown user b1's 550, the unknown domain the edge's 550.
    assert!(out["mx_ehlo"].get("chunking").is_none() && out["mx_ehlo"].get("auth").is_none(), "{out}");
    let refused = &out["refused"];
    assert_eq!(refused["bob@a.example"][0], 452, "{out}");
    assert!(refused["bob@a.example"][1].as_str().unwrap().starts_with("4.5.3"));
    assert_eq!(refused["nobody@a.example"][0], 550);
    assert!(refused["nobody@a.example"][1].as_str().unwrap().contains("on b1"), "b1 answered: {out}");
    assert_eq!(refused["x@unknown.example"][0], 550);
    assert!(refused["x@unknown.example"][1].as_str().unwrap().starts_with("5.1.1"));
    assert!(refused.get("alice@a.example").is_none());
    let first = on(&b1, "first transaction");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["rcpt_tos"], json!(["alice@a.example"]));
    assert_eq!(first[0]["xclient"]["HELO"], "sender.example");
    assert!(on(&b2, "first transaction").is_empty());
    let second = on(&b2, "second transaction");
    assert_eq!(second.len(), 1, "a second transaction on the same connection went to b2");
    assert_eq!(second[0]["rcpt_tos"], json!(["bob+tag@a.example"]));
    assert_eq!(out["bdat"], 502);
    // Smuggling: one message on b1, holding the would-be commands as text.
    assert!(out["smuggle_end"].as_str().unwrap().starts_with("250"), "{out}");
    let smuggled = on(&b1, "smuggle");
    assert_eq!(smuggled.len(), 1, "{b1:?}");
    assert!(smuggled[0]["data"].as_str().unwrap().contains("MAIL FROM:<evil@remote.example>"));
    assert_eq!(b1.iter().filter(|m| m["mail_from"] == "evil@remote.example").count(), 0);
    // swaks, with opportunistic STARTTLS at MX.
    let swaks = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &w.ports.mx.to_string(), "--tls"])
        .args(["--from", "s@remote.example", "--to", "alice@a.example", "--body", "sent by swaks"])
        .output()
        .expect("swaks");
    assert!(
        swaks.status.success(),
        "{}{}",
        String::from_utf8_lossy(&swaks.stdout),
        String::from_utf8_lossy(&swaks.stderr)
    );
    let b1 = w.smtp[0].messages();
    assert_eq!(on(&b1, "sent by swaks").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_move_with_kick_sends_the_next_login_to_the_new_backend() {
    let w = World::start("").await;
    // A logged-in IMAP session that waits (like IDLE) until it is closed.
    let args = w.args();
    let mut session = Command::new(mail::PYTHON)
        .arg("-c")
        .arg(format!(
            "{PRELUDE}\nm = imaplib.IMAP4_SSL('localhost', IMAPS, ssl_context=CTX)\nm.login('alice', 'alice-pw')\n\
             m.select('INBOX')\nprint('in', flush=True)\nstart = time.time()\n\
             try:\n    m.sock.settimeout(60)\n    while m.sock.recv(4096): pass\nexcept Exception: pass\n\
             print('closed after %.1f' % (time.time() - start), flush=True)\n"
        ))
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(session.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut lines, &mut line).unwrap();
    assert_eq!(line.trim(), "in");
    let sessions = w.client.get("/v1/sessions?user=alice").await.unwrap();
    let list = sessions.body["sessions"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "{:?}", sessions.body);
    assert_eq!(list[0]["protocol"], "imap");
    assert_eq!(list[0]["backend"], "b1");
    let shown = w.edgectl(&["sessions", "alice"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("imap") && shown.contains("b1"), "{shown}");
    // An out-of-range hold is refused and changes nothing.
    let bad = w.edgectl(&["mailbox", "move", "alice", "--to", "b2", "--hold", "9999"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("hold"), "{}", String::from_utf8_lossy(&bad.stderr));
    let moved = w.edgectl(&["mailbox", "move", "alice", "--to", "b2", "--kick", "--hold", "10"]);
    let text = String::from_utf8_lossy(&moved.stdout);
    assert!(moved.status.success(), "{text}{}", String::from_utf8_lossy(&moved.stderr));
    assert!(text.contains("kicked 1 session"), "{text}");
    line.clear();
    std::io::BufRead::read_line(&mut lines, &mut line).unwrap();
    let secs: f64 = line.trim().trim_start_matches("closed after ").parse().unwrap();
    assert!(secs < 10.0, "the kicked session ended: {line}");
    let _ = session.wait();
    eventually(5, "the session unregistered", || async {
        let s = w.client.get("/v1/sessions?user=alice").await.unwrap();
        s.body["sessions"].as_array().unwrap().is_empty().then_some(())
    })
    .await;
    // The next login (and a message) lands on b2.
    w.run(
        r#"
m = imaplib.IMAP4_SSL("localhost", IMAPS, ssl_context=CTX)
m.login("alice", "alice-pw")
m.append("INBOX", None, None, b"Subject: after move\r\n\r\nnow on b2\r\n")
m.logout()
print(json.dumps(out))
"#,
    );
    assert!(w.dovecot[1].messages("alice").iter().any(|m| m.contains("now on b2")));
    assert!(!w.dovecot[0].messages("alice").iter().any(|m| m.contains("now on b2")));
    // A member move moves the mail domain too: MX for alice now goes to b2.
    let a = w.edgectl(&["member", "move", "m", "--to", "b2", "--kick"]);
    assert!(a.status.success());
    w.run(
        r#"
m = smtplib.SMTP("localhost", MX)
m.sendmail("s@remote.example", ["alice@a.example"], b"Subject: x\r\n\r\nmx after member move\r\n")
m.quit()
print(json.dumps(out))
"#,
    );
    assert_eq!(
        w.smtp[1].messages().iter().filter(|m| m["data"].as_str().unwrap().contains("mx after member move")).count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_plugin_checks_passwords_and_routes_users_the_table_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(
        dir.path(),
        &[("carol", "carol-pw", Some("b2")), ("alice", "alice-pw", None), ("dave", "dave-pw", None)],
    );
    let auth = format!(
        "max_failed_logins_per_ip_per_minute = 3\n\
         [mail.auth]\nkind = \"ldap\"\nurl = \"{}\"\nbase = \"ou=people,{}\"\nfilter = \"(uid={{user}})\"\n\
         route_attribute = \"mailHost\"\ncache_secs = 30\n",
        slapd.url,
        mail::LDAP_BASE
    );
    let w = World::start(&auth).await;
    let out = w.run(
        r#"
def login(user, pw):
    m = imaplib.IMAP4_SSL("localhost", IMAPS, ssl_context=CTX)
    try:
        return m.login(user, pw)[0]
    except imaplib.IMAP4.error as e:
        return str(e)
    finally:
        m.shutdown()
out["carol"] = login("carol", "carol-pw")       # not in the table: LDAP's mailHost
out["alice"] = login("alice", "alice-pw")       # in the table and LDAP
out["alice_wrong"] = login("alice", "wrong")    # refused by LDAP, no backend asked
out["injection"] = login('"*)(uid=*"', "x")     # filter-escaped: no match
out["empty"] = login("alice", "")               # an unauthenticated bind is no login
out["dave"] = login("dave", "dave-pw")          # after 3 failures: rate limited
print(json.dumps(out))
"#,
    );
    let s = |k: &str| out[k].as_str().unwrap_or_default().to_string();
    assert_eq!(s("carol"), "OK", "{out}");
    assert_eq!(s("alice"), "OK", "{out}");
    assert!(s("alice_wrong").contains("AUTHENTICATIONFAILED"), "{out}");
    assert!(s("injection").contains("AUTHENTICATIONFAILED"), "{out}");
    assert!(s("empty").contains("AUTHENTICATIONFAILED") || s("empty").contains("BAD"), "{out}");
    assert!(s("dave").contains("Too many failed logins"), "{out}");
    let b1 = w.dovecot[0].log_text();
    let b2 = w.dovecot[1].log_text();
    assert!(b2.lines().any(|l| l.contains("Login: user=<carol>")), "carol routed by mailHost to b2:\n{b2}");
    assert!(b1.lines().any(|l| l.contains("Login: user=<alice>")));
    assert!(!b1.contains("auth failed") && !b1.contains("password mismatch"), "no backend saw a wrong password:\n{b1}");
    drop(slapd);
    // The directory is gone: a temporary failure, not a wrong password.
    let out = w.run(
        r#"
m = imaplib.IMAP4_SSL("localhost", IMAPS, ssl_context=CTX)
try:
    m.login("alice", "alice-pw")
    out["down"] = "logged in?!"
except imaplib.IMAP4.error as e:
    out["down"] = str(e)
print(json.dumps(out))
"#,
    );
    assert!(out["down"].as_str().unwrap().contains("UNAVAILABLE"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preauth_greeting_is_never_relayed_and_limits_hold() {
    // A backend that greets with PREAUTH (it would log anyone in).
    let fake = std::net::TcpListener::bind("127.0.0.33:0").unwrap();
    let fake_port = fake.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in fake.incoming().flatten() {
            let mut s = s;
            let _ = std::io::Write::write_all(&mut s, b"* PREAUTH [CAPABILITY IMAP4rev1] logged in as root\r\n");
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let w = World::start(&format!(
        "max_connections_per_ip = 3\nlogin_timeout_secs = 5\n[mail.backends.b3]\nimap_port = {fake_port}\n"
    ))
    .await;
    let txn = json!({"ops": [
        {"op": "put", "entity": {"kind": "backend", "name": "b3", "addresses": ["127.0.0.33"]}},
        {"op": "put", "entity": {"kind": "mail_login", "user": "pre", "backend": "b3"}},
    ]});
    assert_eq!(w.client.post("/v1/transactions", &txn).await.unwrap().status, 200);
    let out = w.run(
        r#"
r = Raw(IMAPS, tls=True)
r.send("a LOGIN pre pre-pw\r\n")
out["pre"] = r.until("a ")
r.send("b NOOP\r\n")
out["after"] = r.until("b ")
# A 4th connection from this address is closed at once (3 allowed; r is one).
extra = [Raw(IMAPS, tls=True), Raw(IMAPS, tls=True)]
try:
    s = socket.create_connection(("127.0.0.1", IMAPS), timeout=5)
    t = CTX.wrap_socket(s, server_hostname="localhost")
    out["fourth"] = t.recv(100).decode()
except (ssl.SSLError, ConnectionError, OSError) as e:
    out["fourth"] = "closed"
for x in extra:
    x.sock.close()
# Silent after the greeting: closed when the 5 s login time is over. The
# edge frees the slots of the connections closed above when it sees them
# end, a moment later: until then a new one is still over the cap.
r.sock.close()
for attempt in range(50):
    try:
        r = Raw(IMAP)
        break
    except EOFError:
        time.sleep(0.1)
start = time.time()
r.sock.settimeout(30)
out["silent_closed"] = r.closed()
out["silent_after"] = time.time() - start
print(json.dumps(out))
"#,
    );
    let pre: Vec<String> = serde_json::from_value(out["pre"].clone()).unwrap();
    assert_eq!(pre.len(), 1, "nothing from the backend reached the client: {pre:?}");
    assert!(pre[0].starts_with("a NO [UNAVAILABLE]"), "{pre:?}");
    assert!(out["after"][0].as_str().unwrap().starts_with("b OK"), "still not logged in, session alive: {out}");
    assert!(out["fourth"] == "closed" || out["fourth"] == "", "{out}");
    assert_eq!(out["silent_closed"], true);
    let after = out["silent_after"].as_f64().unwrap();
    assert!((4.0..15.0).contains(&after), "closed after the login timeout: {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_plugin_binds_as_the_user_with_a_dn_template() {
    use proxy::mail::auth::{AuthPlugin, Ldap, Verdict};
    use proxy::mail::config::LdapConfig;
    use proxy::mail::parse::sasl::Credentials;
    let dir = tempfile::tempdir().unwrap();
    let slapd = Slapd::start(dir.path(), &[("carol", "carol-pw", Some("b2")), ("o'neil,x", "on-pw", None)]);
    let config = LdapConfig {
        url: slapd.url.clone(),
        user_dn: Some(format!("uid={{user}},ou=people,{}", mail::LDAP_BASE)),
        base: None,
        filter: None,
        bind_dn: None,
        bind_password_file: None,
        route_attribute: Some("mailHost".into()),
        cache_secs: 60,
        timeout_ms: 2000,
    };
    let ldap = Ldap::new(config).unwrap();
    let creds = |u: &str, p: &str| Credentials { user: u.into(), password: p.as_bytes().to_vec() };
    assert_eq!(ldap.check(&creds("carol", "carol-pw")).await, Verdict::Accepted);
    assert_eq!(ldap.check(&creds("carol", "wrong")).await, Verdict::Rejected);
    assert_eq!(ldap.check(&creds("carol", "")).await, Verdict::Rejected);
    assert_eq!(ldap.check(&creds("nobody", "x")).await, Verdict::Rejected);
    // A DN-special character in the name is escaped, not interpreted.
    assert_eq!(ldap.check(&creds("o'neil,x", "on-pw")).await, Verdict::Accepted);
    assert_eq!(ldap.route("carol").await.as_deref(), Some("b2"));
    // Cached: the directory going away does not change a recent answer...
    drop(slapd);
    assert_eq!(ldap.route("carol").await.as_deref(), Some("b2"));
    // ...but a login check needs it, and fails as unavailable.
    assert!(matches!(ldap.check(&creds("carol", "carol-pw")).await, Verdict::Unavailable(_)));
}
