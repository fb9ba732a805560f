//! Test support: a real etcd cluster (Debian's `etcd-server`) of our own
//! processes on loopback ports, and a TCP relay the test can cut to put a
//! node out of reach of etcd.
#![allow(dead_code)] // each test file uses part of it

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A free loopback port (bound, then released for the server to take).
pub fn free_port() -> u16 {
    crate::support::free_port("127.0.0.1")
}

pub struct Member {
    pub name: String,
    pub client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// An etcd cluster of `n` members, each `etcd` a child process of the test.
/// Short heartbeat and election timeouts (50 / 500 ms) so that losing the
/// leader costs the test half a second, not the production default's one.
pub struct EtcdCluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    initial_cluster: String,
}

impl EtcdCluster {
    pub fn start(n: usize) -> EtcdCluster {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_url: format!("http://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
                data_dir: dir.path().join(format!("m{i}")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let initial_cluster =
            members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect::<Vec<_>>().join(",");
        let mut cluster = EtcdCluster { dir, members, initial_cluster };
        for i in 0..n {
            cluster.spawn(i, "new");
        }
        cluster.wait_healthy(&(0..n).collect::<Vec<_>>());
        cluster
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&m.log).unwrap();
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.client_url, "--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url, "--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", state])
            .args(["--initial-cluster-token", "edge-test", "--heartbeat-interval", "50", "--election-timeout", "500"])
            // What docs/multi-node.md asks of a production cluster.
            .args(["--max-txn-ops", "10000", "--max-request-bytes", "33554432"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd (Debian package etcd-server; scripts/install-deps.sh test installs it)");
        m.child = Some(child);
    }

    /// Waits until each listed member answers `etcdctl endpoint health`.
    pub fn wait_healthy(&self, which: &[usize]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for &i in which {
            loop {
                let ok = Command::new("etcdctl")
                    .args(["--endpoints", &self.members[i].client_url, "--dial-timeout", "1s", "endpoint", "health"])
                    .env("ETCDCTL_API", "3")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("etcdctl (Debian package etcd-client)")
                    .success();
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    let log = std::fs::read_to_string(&self.members[i].log).unwrap_or_default();
                    panic!("etcd member {i} not healthy in 30 s; its log:\n{log}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed member again, with its data.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i, "existing");
        self.wait_healthy(&[i]);
    }

    /// The member whose address is `i`, as `host:port`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.members[i].client_url.trim_start_matches("http://").parse().unwrap()
    }

    /// Runs etcdctl against the cluster; returns stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = Command::new("etcdctl")
            .args(["--endpoints", &self.endpoints().join(",")])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap();
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// A TCP relay from a loopback port to `target`. [`Relay::cut`] makes it a
/// black hole until [`Relay::restore`]: relayed connections stop carrying
/// bytes but stay open, and new ones are accepted and never answered: a
/// network partition as a node sees it (silence, no reset). On restore the
/// held connections are closed and new ones are relayed again.
pub struct Relay {
    pub addr: SocketAddr,
    open: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(watch::channel(true).0);
        let state = open.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { continue };
                let mut cut = state.subscribe();
                tokio::spawn(async move {
                    let open = *cut.borrow();
                    if !open {
                        until(&mut cut, true).await; // held silent
                        return;
                    }
                    let Ok(mut server) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = until(&mut cut, false) => until(&mut cut, true).await, // held silent
                    }
                });
            }
        });
        Relay { addr, open, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    pub fn restore(&self) {
        self.open.send_replace(true);
    }
}

async fn until(state: &mut watch::Receiver<bool>, open: bool) {
    let _ = state.wait_for(|o| *o == open).await.map(|_| ());
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
