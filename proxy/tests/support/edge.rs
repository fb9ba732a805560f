//! Test support: an Edge in-process or as a child process, on a temporary
//! directory and ephemeral ports, with polling helpers (no bare sleeps).
#![allow(dead_code)] // each test file uses part of it

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proxy::control::client::{Answer, Client};
use proxy::{Config, Edge};
use tokio::sync::watch;

/// A child process (a test's server) killed with SIGKILL when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free on `ip` now, and never handed out before in this test
/// process: tests run in parallel, and two of them picking the same free
/// port before either binds it collide (seen: pebble's DNS and an edge's
/// HTTP listener). Every test support module takes its ports here.
pub fn free_port(ip: &str) -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn seed_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/example-routes.json")
}

/// Configuration text for a test Edge under `dir`.
pub fn config_text(dir: &Path, extra_control: &str) -> String {
    format!(
        "[edge]\ndata_dir = \"{d}/var\"\n[store]\nseed = \"{seed}\"\n[control]\nsocket = \"{d}/var/control.sock\"\n{extra_control}\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n",
        d = dir.display(),
        seed = seed_file().display()
    )
}

pub fn write_config(dir: &Path, extra_control: &str) -> PathBuf {
    let path = dir.join("edge.toml");
    std::fs::write(&path, config_text(dir, extra_control)).unwrap();
    path
}

/// An Edge running inside the test process.
pub struct TestEdge {
    pub dir: tempfile::TempDir,
    pub client: Client,
    pub socket: PathBuf,
    pub admin: std::net::SocketAddr,
    /// dnsd's address, when the config has a `[dns]` section.
    pub dns: Option<std::net::SocketAddr>,
    pub table: routing_table::Table,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TestEdge {
    pub async fn start(extra_control: &str) -> TestEdge {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), extra_control);
        let config = Config::load(&path).unwrap();
        let edge = Edge::start(&config).await.unwrap();
        let socket = edge.control_path().to_path_buf();
        let admin = edge.admin_addr().unwrap();
        let dns = edge.dns_addrs().first().copied();
        let table = edge.table().clone();
        let (stop, shutdown) = watch::channel(false);
        let (_reload_tx, reload) = watch::channel(None);
        let task = tokio::spawn(async move {
            let _keep = _reload_tx;
            edge.serve(shutdown, reload).await
        });
        TestEdge { client: Client::new(&socket), dir, socket, admin, dns, table, stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// An `edge` binary running as a child process.
pub struct EdgeProcess {
    pub child: Child,
    pub socket: PathBuf,
    pub config: PathBuf,
}

impl EdgeProcess {
    pub fn spawn(config: &Path, socket: &Path) -> EdgeProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_edge"))
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start edge");
        EdgeProcess { child, socket: socket.into(), config: config.into() }
    }

    /// Waits until the control socket answers /v1/status.
    pub async fn ready(&mut self) -> Answer {
        let client = Client::new(&self.socket);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(a) = client.get("/v1/status").await {
                return a;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("edge exited early: {status}");
            }
            assert!(Instant::now() < deadline, "edge did not open its control socket in 20 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// Polls `f` until it returns `Some`, or panics after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What curl, run as uid 65534 (nobody), got from the control socket.
pub struct NobodyCurl {
    /// HTTP status, `000` when the connection failed.
    pub code: String,
    /// Body and curl's own messages.
    pub output: String,
}

/// Runs curl as uid 65534 against `path` on the control socket.
pub async fn curl_as_nobody(socket: &Path, path: &str) -> NobodyCurl {
    let socket = socket.to_path_buf();
    let url = format!("http://edge{path}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "curl",
                "-sS",
                "-m",
                "10",
                "-w",
                "\n%{http_code}",
                "--unix-socket",
            ])
            .arg(&socket)
            .arg(url)
            .output()
            .expect("setpriv (util-linux) and curl")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    NobodyCurl { code: code.to_string(), output: format!("{body}{}", String::from_utf8_lossy(&out.stderr)) }
}
