//! loadtest: proves (or disproves) that moves are atomic under load.
//!
//! [`run`] starts an `edge` in-process (or targets a running one through
//! its config), creates its own routes ([`fixture`]), then for a bounded
//! time sends load on every protocol Edge serves while moving routes through
//! the control socket ([`moves`]). Every answer is judged by the [`ledger`]:
//! an answer from the old backend to a request started after the move was
//! acknowledged is **misrouted**; an error or timeout is **failed**. The
//! [`report`] has both per protocol, latency percentiles, and the moves.
//!
//! Protocols Edge does not serve yet are reported as absent.

pub mod dns;
pub mod fixture;
pub mod imap;
pub mod ledger;
pub mod logins;
pub mod moves;
pub mod report;
pub mod rng;
pub mod ssh;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use proxy::control::client::Client;
use proxy::{Config, Edge};
use tokio::sync::watch;

use crate::fixture::Fixture;
use crate::ledger::Ledger;
use crate::report::{Percentiles, ProtoReport, Report, PROTOCOLS};

/// What to run; the CLI's flags (see `loadtest --help`).
#[derive(Debug, Clone)]
pub struct Options {
    /// Target a running edge through its config; `None` starts one in-process.
    pub config: Option<PathBuf>,
    pub duration: Duration,
    /// DNS queries per second, in all.
    pub dns_rate: u32,
    /// DNS queries in flight at most.
    pub dns_concurrency: usize,
    /// Moves per second.
    pub move_rate: f64,
    pub members: usize,
    pub backends: usize,
    pub seed: u64,
    /// Print a live progress line on stderr.
    pub progress: bool,
    /// Send DNS queries here instead of the target edge's dnsd (a standalone
    /// `dnsd` following its store, say).
    pub dns: Option<std::net::SocketAddr>,
    /// SSH logins per second, in all (0: no SSH load).
    pub ssh_rate: u32,
    /// SSH logins in flight at most.
    pub ssh_concurrency: usize,
    /// IMAP logins per second, in all (0: no IMAP load).
    pub imap_rate: u32,
    /// IMAP logins in flight at most.
    pub imap_concurrency: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: None,
            duration: Duration::from_secs(20),
            dns_rate: 2000,
            dns_concurrency: 32,
            move_rate: 15.0,
            members: 200,
            backends: 8,
            seed: 1,
            progress: true,
            dns: None,
            ssh_rate: 40,
            ssh_concurrency: 8,
            imap_rate: 100,
            imap_concurrency: 8,
        }
    }
}

/// Counters the progress line reads while the run goes on.
#[derive(Default)]
pub struct Live {
    pub dns_requests: AtomicU64,
    pub dns_failed: AtomicU64,
    pub dns_misrouted: AtomicU64,
    pub ssh_requests: AtomicU64,
    pub ssh_failed: AtomicU64,
    pub ssh_misrouted: AtomicU64,
    pub imap_requests: AtomicU64,
    pub imap_failed: AtomicU64,
    pub imap_misrouted: AtomicU64,
    pub moves: AtomicU64,
}

/// What every load and move task shares: the routes, the ledger, the live
/// counters, the stop flag and the seed.
#[derive(Clone)]
pub struct Shared {
    pub fixture: Arc<Fixture>,
    pub ledger: Arc<Mutex<Ledger>>,
    pub live: Arc<Live>,
    pub stop: Arc<AtomicBool>,
    pub seed: u64,
}

/// The edge under test: where its control socket and dnsd are.
struct Target {
    description: String,
    client: Client,
    dns: Option<std::net::SocketAddr>,
    zone: String,
    /// The SSH forwarder's address and the port it reaches backends on.
    ssh: Option<(std::net::SocketAddr, u16)>,
    /// The mail forwarder's implicit-TLS IMAP address and the IMAP port it
    /// reaches backends on.
    imap: Option<(std::net::SocketAddr, u16)>,
    /// Set when the edge runs in this process: how to stop it.
    own: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>, tempfile::TempDir)>,
}

async fn target(opts: &Options) -> anyhow::Result<Target> {
    if let Some(path) = &opts.config {
        let config = Config::load(path)?;
        let dns = config.dns.as_ref().and_then(|d| dns::pick(&d.listen));
        let zone = config.dns.as_ref().map_or("mayfirst.local".into(), |d| zone_name(&d.zone.origin));
        let ssh = config.ssh.as_ref().and_then(|s| Some((*s.listen.first()?, s.upstream_port)));
        let imap = config.mail.as_ref().and_then(|m| {
            let listen =
                m.listen.iter().find(|l| l.protocol == proxy::mail::config::Protocol::Imap && l.implicit_tls)?;
            Some((listen.addr, m.upstream.imap_port))
        });
        return Ok(Target {
            description: format!("edge at {}", config.control.socket.display()),
            client: Client::new(&config.control.socket),
            dns,
            zone,
            ssh,
            imap,
            own: None,
        });
    }
    let upstream = identity_port(opts.backends)?;
    let imap_upstream = identity_port(opts.backends)?;
    let dir = tempfile::tempdir()?;
    let d = dir.path().display();
    let text = format!(
        "[edge]\ndata_dir = \"{d}/var\"\n[store]\nseed = \"\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n\
         [dns]\nlisten = [\"127.0.0.1:0\"]\nudp_sockets = 1\n\
         [ssh]\nlisten = [\"127.0.0.1:0\"]\nupstream_port = {upstream}\nmax_connections_per_ip = 10000\n\
         max_failed_logins_per_ip_per_minute = 1000000\n\
         [mail]\nimaps = [\"127.0.0.1:0\"]\nmax_connections_per_ip = 10000\n\
         max_failed_logins_per_ip_per_minute = 1000000\n[mail.upstream]\nimap_port = {imap_upstream}\n"
    );
    let config = Config::parse(&dir.path().join("edge.toml"), &text)?;
    let edge = Edge::start(&config).await.context("starting the edge under test")?;
    let dns = dns::pick(edge.dns_addrs());
    let ssh = edge.ssh_addrs().first().map(|a| (*a, upstream));
    let imap = edge.mail_addrs().iter().find(|(p, tls, _)| *p == "imap" && *tls).map(|(_, _, a)| (*a, imap_upstream));
    let client = Client::new(edge.control_path());
    let (stop, shutdown) = watch::channel(false);
    let (_reload_tx, reload) = watch::channel(None);
    let task = tokio::spawn(async move {
        let _keep = _reload_tx;
        edge.serve(shutdown, reload).await
    });
    Ok(Target {
        description: "an edge started in-process (SQLite store, fsync per commit)".into(),
        client,
        dns,
        zone: "mayfirst.local".into(),
        ssh,
        imap,
        own: Some((stop, task, dir)),
    })
}

/// A port free on every fixture backend address, for the identity SSH or
/// IMAP backends (the edge reaches them all on one port).
fn identity_port(backends: usize) -> anyhow::Result<u16> {
    let f = Fixture { backends, members: 1 };
    for _ in 0..100 {
        let probe = std::net::TcpListener::bind((f.address(0), 0))?;
        let port = probe.local_addr()?.port();
        if (1..backends).all(|b| std::net::TcpListener::bind((f.address(b), port)).is_ok()) {
            return Ok(port);
        }
    }
    bail!("no port free on every 127.0.100.N address")
}

fn zone_name(origin: &hickory_proto::rr::Name) -> String {
    origin.to_ascii().trim_end_matches('.').to_string()
}

/// Runs the load test and returns its report.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    if opts.backends < 2 || opts.backends > 250 || opts.members == 0 {
        bail!("need 2 to 250 backends and at least one member");
    }
    let mut target = target(&opts).await?;
    if let Some(dns) = opts.dns {
        target.dns = Some(dns);
        target.description.push_str(&format!(", DNS at {dns}"));
    }
    let fixture = Arc::new(Fixture { backends: opts.backends, members: opts.members });
    let answer = target.client.post("/v1/transactions", &fixture.transaction()).await?;
    if let Some(e) = answer.error_message() {
        bail!("creating the load test's routes: {e}");
    }
    let mut ledger = Ledger::new();
    for m in 0..fixture.members {
        ledger.add(&fixture.database(m), fixture.initial_backend(m));
        ledger.add(&fixture.sftp_user(m), fixture.initial_backend(m));
        ledger.add(&fixture.mail_user(m), fixture.initial_backend(m));
    }
    // The identity SSH backends, where the edge sends the logins.
    let ssh = match target.ssh.filter(|_| opts.ssh_rate > 0) {
        Some((edge, port)) => Some((edge, ssh::Identity::start(&fixture, port).await?)),
        None => None,
    };
    let imap = match target.imap.filter(|_| opts.imap_rate > 0) {
        Some((edge, port)) => Some((edge, imap::Identity::start(&fixture, port).await?)),
        None => None,
    };
    let live = Arc::new(Live::default());
    let shared = Shared {
        fixture: fixture.clone(),
        ledger: Arc::new(Mutex::new(ledger)),
        live: live.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        seed: opts.seed,
    };
    let started = Instant::now();

    let dns_task = target.dns.map(|server| {
        let load = dns::DnsLoad {
            server,
            zone: target.zone.clone(),
            rate: opts.dns_rate,
            concurrency: opts.dns_concurrency.max(1),
        };
        tokio::spawn(load.run(shared.clone()))
    });
    let ssh_task = ssh.as_ref().map(|(edge, _)| {
        let load = ssh::SshLoad { edge: *edge, rate: opts.ssh_rate, concurrency: opts.ssh_concurrency.max(1) };
        tokio::spawn(load.run(shared.clone()))
    });
    let imap_task = imap.as_ref().map(|(edge, _)| {
        let load = imap::ImapLoad { edge: *edge, rate: opts.imap_rate, concurrency: opts.imap_concurrency.max(1) };
        tokio::spawn(load.run(shared.clone()))
    });
    let mover = moves::Mover {
        client: target.client.clone(),
        rate: opts.move_rate,
        probe: target.dns.map(|addr| (addr, target.zone.clone())),
    };
    let moves_task = tokio::spawn(mover.run(Shared { seed: opts.seed ^ 0x55, ..shared.clone() }));
    let progress = opts.progress.then(|| tokio::spawn(progress_line(live.clone(), started, opts.duration)));

    tokio::time::sleep(opts.duration).await;
    shared.stop.store(true, Ordering::Relaxed);
    let mut moves = moves_task.await.context("move task")?;
    let mut protocols = BTreeMap::new();
    for p in PROTOCOLS {
        let reason = match *p {
            "pop3" | "smtp" => "the load test has no client for it yet",
            _ => "Edge has no listener for it yet",
        };
        protocols.insert(p.to_string(), ProtoReport::Absent { reason: reason.into() });
    }
    match dns_task {
        Some(task) => {
            let result = task.await.context("dns task")?;
            let s = result.stats;
            protocols.insert(
                "dns".into(),
                ProtoReport::Measured {
                    requests: s.requests,
                    failed: s.failed,
                    misrouted: s.misrouted,
                    latency: Percentiles::of(&s.latency),
                },
            );
            moves.ack_to_first_new = Percentiles::of(&result.first_new);
        }
        None => {
            protocols
                .insert("dns".into(), ProtoReport::Absent { reason: "the target edge has no [dns] section".into() });
        }
    }
    let ssh_absent = match (&target.ssh, opts.ssh_rate) {
        (None, _) => "the target edge has no [ssh] section",
        (Some(_), 0) => "--ssh-rate 0",
        _ => "",
    };
    match ssh_task {
        Some(task) => {
            let s = task.await.context("ssh task")?;
            protocols.insert(
                "ssh".into(),
                ProtoReport::Measured {
                    requests: s.requests,
                    failed: s.failed,
                    misrouted: s.misrouted,
                    latency: Percentiles::of(&s.latency),
                },
            );
        }
        None => drop(protocols.insert("ssh".into(), ProtoReport::Absent { reason: ssh_absent.into() })),
    }
    drop(ssh);
    let imap_absent = match (&target.imap, opts.imap_rate) {
        (None, _) => "the target edge has no [mail] imaps listener",
        (Some(_), 0) => "--imap-rate 0",
        _ => "",
    };
    match imap_task {
        Some(task) => {
            let s = task.await.context("imap task")?;
            protocols.insert(
                "imap".into(),
                ProtoReport::Measured {
                    requests: s.requests,
                    failed: s.failed,
                    misrouted: s.misrouted,
                    latency: Percentiles::of(&s.latency),
                },
            );
        }
        None => drop(protocols.insert("imap".into(), ProtoReport::Absent { reason: imap_absent.into() })),
    }
    drop(imap);
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let duration = started.elapsed();
    if let Some((stop, task, _dir)) = target.own {
        let _ = stop.send(true);
        let _ = task.await;
    }
    Ok(Report { duration_secs: duration.as_secs_f64(), target: target.description, protocols, moves })
}

async fn progress_line(live: Arc<Live>, started: Instant, total: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        eprint!(
            "\r[{:>4.0}/{:.0} s] dns {} ({} failed, {} misrouted)  ssh {} ({} failed, {} misrouted)  imap {} ({} failed, {} misrouted)  moves {}   ",
            started.elapsed().as_secs_f64(),
            total.as_secs_f64(),
            l(&live.dns_requests),
            l(&live.dns_failed),
            l(&live.dns_misrouted),
            l(&live.ssh_requests),
            l(&live.ssh_failed),
            l(&live.ssh_misrouted),
            l(&live.imap_requests),
            l(&live.imap_failed),
            l(&live.imap_misrouted),
            l(&live.moves)
        );
    }
}
