//! The SFTP/SSH forwarder against two real OpenSSH servers as backends,
//! with real clients: ssh, sftp, scp (OpenSSH) and sshpass. Runs as root:
//! it creates the system user `edgetest` and starts `sshd` (as our own
//! processes, on 127.0.0.21 and 127.0.0.22, port chosen at run time).

#[path = "support/sshd.rs"]
mod sshd;
#[path = "support/edge.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use proxy::control::client::Client;
use serde_json::{json, Value};
use sshd::{client_opts, ensure_user, password_opts, shared_port, Sshd, PASSWORD, USER};
use support::{eventually, EdgeProcess};

struct World {
    dir: tempfile::TempDir,
    _edge: EdgeProcess,
    client: Client,
    config: PathBuf,
    ssh_port: u16,
    key: PathBuf,
    backends: Vec<Sshd>,
}

impl World {
    async fn start() -> World {
        Self::start_with(
            "login_grace_secs = 20\nmax_connections_per_ip = 200\nmax_failed_logins_per_ip_per_minute = 50\n",
        )
        .await
    }

    /// With these `[ssh]` limits.
    async fn start_with(limits: &str) -> World {
        ensure_user();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let ssh_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let upstream = shared_port(&["127.0.0.21", "127.0.0.22"]);
        let config = dir.path().join("edge.toml");
        std::fs::write(
            &config,
            format!(
                "[edge]\ndata_dir = \"{d}/var\"\n[store]\nseed = \"\"\n[control]\nsocket = \"{d}/var/control.sock\"\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"info\"\n\
                 [ssh]\nlisten = [\"127.0.0.1:{ssh_port}\"]\nupstream_port = {upstream}\n{limits}"
            ),
        )
        .unwrap();
        let socket = dir.path().join("var/control.sock");
        let mut edge = EdgeProcess::spawn(&config, &socket);
        edge.ready().await;
        // The edge made its user CA on start: the backends trust it.
        let ca_pub = dir.path().join("var/ssh/user_ca.pub");
        let backends = vec![
            Sshd::start(dir.path(), "b1", "127.0.0.21", upstream, &ca_pub, false),
            // b2 logs passwords in through PAM and offers keyboard-interactive.
            Sshd::start(dir.path(), "b2", "127.0.0.22", upstream, &ca_pub, true),
        ];
        let key = dir.path().join("id_ed25519");
        let keygen =
            Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap();
        assert!(keygen.success());
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let client = Client::new(&socket);
        let txn = json!({"ops": [
            {"op": "put", "entity": {"kind": "backend", "name": "b1", "addresses": ["127.0.0.21"]}},
            {"op": "put", "entity": {"kind": "backend", "name": "b2", "addresses": ["127.0.0.22"]}},
            {"op": "put", "entity": {"kind": "member", "name": "m"}},
            {"op": "put", "entity": {"kind": "sftp_login", "user": USER, "member": "m", "backend": "b1",
                "authorized_keys": [public.trim()]}},
        ]});
        let a = client.post("/v1/transactions", &txn).await.unwrap();
        assert_eq!(a.status, 200, "{:?}", a.body);
        World { dir, _edge: edge, client, config, ssh_port, key, backends }
    }

    fn port(&self) -> String {
        self.ssh_port.to_string()
    }

    /// `ssh` through the edge with a password.
    fn ssh_password(&self, user: &str, password: &str, command: &str) -> Output {
        Command::new("sshpass")
            .args(["-p", password, "ssh"])
            .args(password_opts())
            .args(["-p", &self.port(), &format!("{user}@127.0.0.1"), command])
            .output()
            .expect("sshpass and ssh")
    }

    /// `ssh` through the edge with the test key (the certificate path).
    fn ssh_key(&self, command: &str) -> Output {
        Command::new("ssh")
            .args(client_opts())
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i"])
            .arg(&self.key)
            .args(["-p", &self.port(), &format!("{USER}@127.0.0.1"), command])
            .output()
            .unwrap()
    }

    fn sftp_batch(&self, batch: &str) -> Output {
        let file = self.dir.path().join("batch");
        std::fs::write(&file, batch).unwrap();
        Command::new("sshpass")
            .args(["-p", PASSWORD, "sftp"])
            .args(password_opts())
            // -b implies BatchMode, which would keep sshpass from answering.
            .args(["-o", "BatchMode=no", "-P", &self.port(), "-b"])
            .arg(&file)
            .arg(format!("{USER}@127.0.0.1"))
            .output()
            .unwrap()
    }

    fn edgectl(&self, args: &[&str]) -> String {
        let out =
            Command::new(env!("CARGO_BIN_EXE_edgectl")).arg("--config").arg(&self.config).args(args).output().unwrap();
        assert!(out.status.success(), "edgectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn logs(&self) -> String {
        self.backends.iter().map(|b| format!("--- {}:\n{}", b.name, b.log_text())).collect()
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_routed_by_user_and_authenticated_by_the_backend() {
    let w = World::start().await;
    // Password, passed through: the backend's verdict.
    let out = w.ssh_password(USER, PASSWORD, "echo $BACKEND");
    assert!(out.status.success(), "{}\n{}", text(&out), w.logs());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "b1");
    // Public key, checked at the edge, then the edge's certificate upstream.
    let out = w.ssh_key("echo $BACKEND; id -un");
    assert!(out.status.success(), "{}\n{}", text(&out), w.logs());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("b1\n{USER}"));
    assert!(
        w.backends[0].log_text().contains("Accepted publickey for edgetest")
            && w.backends[0].log_text().contains("ED25519-CERT"),
        "b1 saw a certificate login:\n{}",
        w.backends[0].log_text()
    );
    // Environment variables sent by the client (OpenSSH's SendEnv, which the
    // backend refuses without AcceptEnv) do not disturb the exec after them.
    let out = Command::new("sshpass")
        .args(["-p", PASSWORD, "ssh"])
        .args(password_opts())
        .args(["-o", "SendEnv=LANG LC_*", "-p", &w.port(), &format!("{USER}@127.0.0.1"), "echo $BACKEND"])
        .env("LANG", "C.UTF-8")
        .env("LC_TIME", "C")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "b1", "{}", text(&out));
    // Exit status and stderr come back.
    let out = w.ssh_password(USER, PASSWORD, "echo oops >&2; exit 3");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "oops");

    // A wrong password and an unknown user fail the same way.
    let wrong = w.ssh_password(USER, "not-the-password", "true");
    let unknown = w.ssh_password("nobody-here", PASSWORD, "true");
    assert_eq!(wrong.status.code(), unknown.status.code());
    assert_ne!(wrong.status.code(), Some(0));
    assert_eq!(text(&wrong).replace(USER, "U"), text(&unknown).replace("nobody-here", "U"));
    // A key not in the table is refused.
    let other = w.dir.path().join("other_key");
    Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&other).status().unwrap();
    let out = Command::new("ssh")
        .args(client_opts())
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i"])
        .arg(&other)
        .args(["-p", &w.port(), &format!("{USER}@127.0.0.1"), "true"])
        .output()
        .unwrap();
    assert!(!out.status.success() && text(&out).contains("Permission denied"), "{}", text(&out));

    // The backend's pinned host key is in known_hosts.
    let known = std::fs::read_to_string(w.dir.path().join("var/ssh/known_hosts")).unwrap();
    assert!(known.lines().any(|l| l.starts_with("b1 ssh-ed25519 ")), "{known}");

    // Metrics.
    let status = w.client.get("/v1/status").await.unwrap();
    assert_eq!(status.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_and_scp_move_files_intact_through_the_edge() {
    let w = World::start().await;
    let big = w.dir.path().join("big.bin");
    let dd = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "count=100", "status=none"])
        .arg(format!("of={}", big.display()))
        .status()
        .unwrap();
    assert!(dd.success());
    let back = w.dir.path().join("back.bin");
    let started = Instant::now();
    let out = w.sftp_batch(&format!("put {} big.bin\nget big.bin {}\n", big.display(), back.display()));
    assert!(out.status.success(), "{}\n{}", text(&out), w.logs());
    println!("sftp 100 MiB up and down through the edge (debug build): {:?}", started.elapsed());
    let sum = sha256(&big);
    assert_eq!(sha256(&back), sum, "downloaded copy differs");
    assert_eq!(sha256(&w.backends[0].files.join("big.bin")), sum, "stored on b1, the user's backend");
    assert!(!w.backends[1].files.join("big.bin").exists());

    // scp (OpenSSH 9 runs it over the sftp subsystem) and the legacy
    // protocol (-O: `scp -t` as an exec request).
    let small = w.dir.path().join("small.txt");
    std::fs::write(&small, "hello through the edge\n").unwrap();
    for legacy in [false, true] {
        let mut cmd = Command::new("sshpass");
        cmd.args(["-p", PASSWORD, "scp"]).args(password_opts()).args(["-P", &w.port()]);
        if legacy {
            cmd.arg("-O");
        }
        let name = if legacy { "legacy.txt" } else { "modern.txt" };
        let target = if legacy {
            format!("{USER}@127.0.0.1:{}", w.backends[0].files.join(name).display())
        } else {
            format!("{USER}@127.0.0.1:{name}")
        };
        let out = cmd.arg(&small).arg(&target).output().unwrap();
        assert!(out.status.success(), "scp legacy={legacy}: {}", text(&out));
        assert_eq!(std::fs::read_to_string(w.backends[0].files.join(name)).unwrap(), "hello through the edge\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_with_kick_sends_the_next_login_to_the_new_backend() {
    let w = World::start().await;
    // A live session on b1.
    let mut long = Command::new("sshpass")
        .args(["-p", PASSWORD, "ssh"])
        .args(password_opts())
        .args(["-p", &w.port(), &format!("{USER}@127.0.0.1"), "echo $BACKEND; sleep 60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let listed = eventually(10, "the session is listed", || async {
        let a = w.client.get(&format!("/v1/sessions?user={USER}")).await.unwrap();
        let s: Vec<Value> = a.body["sessions"].as_array().cloned().unwrap_or_default();
        (!s.is_empty()).then_some(s)
    })
    .await;
    assert_eq!(listed[0]["backend"], "b1");
    assert_eq!(listed[0]["protocol"], "ssh");
    let shown = w.edgectl(&["sessions", USER]);
    assert!(shown.contains("b1") && shown.contains(USER), "{shown}");

    let moved = w.edgectl(&["member", "move", "m", "--to", "b2", "--kick"]);
    assert!(moved.contains("kicked 1 session"), "{moved}");
    // The kicked client ends promptly (instead of sleeping 60 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = long.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the kicked session is still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    // The next login goes to b2.
    let out = w.ssh_password(USER, PASSWORD, "echo $BACKEND");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "b2", "{}", text(&out));
    let out = w.ssh_key("echo $BACKEND");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "b2", "{}\n{}", text(&out), w.logs());
    let none = w.edgectl(&["sessions", USER]);
    assert!(none.contains("no live sessions"), "{none}");
    // b2 offers keyboard-interactive (PAM): its prompts are relayed to the
    // client, and its verdict is the client's.
    let kbd = |password: &str| {
        Command::new("sshpass")
            .args(["-p", password, "ssh"])
            .args(client_opts())
            .args(["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=keyboard-interactive"])
            .args(["-o", "NumberOfPasswordPrompts=1", "-p", &w.port(), &format!("{USER}@127.0.0.1"), "echo $BACKEND"])
            .output()
            .unwrap()
    };
    let out = kbd(PASSWORD);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "b2", "{}\n{}", text(&out), w.logs());
    assert!(w.backends[1].log_text().contains("Accepted keyboard-interactive/pam for edgetest"), "{}", w.logs());
    let out = kbd("wrong");
    assert!(!out.status.success() && text(&out).contains("Permission denied"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_channels_share_one_connection_and_forwarding_is_per_user() {
    let w = World::start().await;
    // One connection (OpenSSH ControlMaster), several sessions on it at once.
    let sock = w.dir.path().join("master.sock");
    let mut master = Command::new("sshpass")
        .args(["-p", PASSWORD, "ssh"])
        .args(password_opts())
        .args(["-M", "-S"])
        .arg(&sock)
        .args(["-N", "-p", &w.port(), &format!("{USER}@127.0.0.1")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "the master connection did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run = |cmd: &str| {
        Command::new("ssh")
            .args(client_opts())
            .arg("-S")
            .arg(&sock)
            .args(["-p", &w.port(), &format!("{USER}@127.0.0.1"), cmd])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children: Vec<_> = (0..3).map(|i| run(&format!("sleep 1; echo $BACKEND {i}"))).collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("b1 {i}"), "{}", text(&out));
    }
    let listed = w.client.get(&format!("/v1/sessions?user={USER}")).await.unwrap();
    assert_eq!(listed.body["sessions"].as_array().map(Vec::len), Some(1), "one connection: {:?}", listed.body);
    let _ = master.kill();
    let _ = master.wait();

    // Direct TCP forwarding (ssh -W) is refused by default...
    let target = format!("127.0.0.21:{}", w.backends[0].port);
    let forward = || {
        Command::new("sshpass")
            .args(["-p", PASSWORD, "ssh"])
            .args(password_opts())
            .args(["-W", &target, "-p", &w.port(), &format!("{USER}@127.0.0.1")])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = forward();
    let t = text(&out);
    assert!(!out.status.success() && (t.contains("forwarding failed") || t.contains("prohibited")), "{t}");
    // ...and allowed for a login with port_forwarding = true: through the
    // tunnel, the backend's sshd greets us.
    let public = std::fs::read_to_string(w.key.with_extension("pub")).unwrap();
    let txn = json!({"ops": [{"op": "put", "entity": {"kind": "sftp_login", "user": USER, "member": "m",
        "backend": "b1", "authorized_keys": [public.trim()], "port_forwarding": true}}]});
    assert_eq!(w.client.post("/v1/transactions", &txn).await.unwrap().status, 200);
    let out = forward();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("SSH-2.0-OpenSSH"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_grace_connection_cap_and_failed_login_cap() {
    let w = World::start_with(
        "login_grace_secs = 2\nmax_connections_per_ip = 3\nmax_failed_logins_per_ip_per_minute = 3\n",
    )
    .await;
    let addr = format!("127.0.0.1:{}", w.ssh_port);
    // Connections that never log in are closed after the grace time.
    let started = Instant::now();
    let mut idle = std::net::TcpStream::connect(&addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut idle, &mut buf); // the banner, then EOF
    let held = started.elapsed();
    assert!(buf.starts_with(b"SSH-2.0-Edge"), "{:?}", String::from_utf8_lossy(&buf));
    assert!(held >= Duration::from_millis(1900) && held < Duration::from_secs(6), "closed after {held:?}");
    // A fourth concurrent connection from one address is closed at once.
    let held_open: Vec<_> = (0..3).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut fourth = std::net::TcpStream::connect(&addr).unwrap();
    fourth.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut fourth, &mut got);
    assert!(got.is_empty(), "the fourth connection got {:?}", String::from_utf8_lossy(&got));
    drop(held_open);
    std::thread::sleep(Duration::from_millis(200));
    // After 3 failed logins in a minute, even the right password is refused.
    for _ in 0..3 {
        assert!(!w.ssh_password(USER, "wrong", "true").status.success());
    }
    let refused = w.ssh_password(USER, PASSWORD, "echo $BACKEND");
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("Permission denied"), "{}", text(&refused));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_trust_on_first_use_an_unknown_backend_key_is_refused() {
    let w = World::start_with("trust_on_first_use = false\n").await;
    let out = w.ssh_password(USER, PASSWORD, "echo $BACKEND");
    assert!(!out.status.success(), "logged in to a backend whose key is not pinned: {}", text(&out));
    assert!(text(&out).contains("Permission denied"), "{}", text(&out));
    let known = std::fs::read_to_string(w.dir.path().join("var/ssh/known_hosts")).unwrap_or_default();
    assert!(known.is_empty(), "nothing pinned: {known}");
}
