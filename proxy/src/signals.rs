//! Process signals: SIGTERM and SIGINT stop Edge gracefully; SIGQUIT stops
//! it for an upgrade (its HTTP listeners go to the new process started with
//! `edge run --upgrade`); SIGHUP re-reads the configuration and passes it
//! on when it is valid.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::config::Config;

static UPGRADING: AtomicBool = AtomicBool::new(false);

/// Whether the stop was asked by SIGQUIT (an upgrade).
pub fn upgrading() -> bool {
    UPGRADING.load(Ordering::SeqCst)
}

/// Channels fed by the signal handler.
pub struct Signals {
    pub shutdown: watch::Receiver<bool>,
    pub reload: watch::Receiver<Option<Config>>,
}

/// Installs the handlers. A config that fails to load on SIGHUP is logged
/// and ignored: the running one stays.
pub fn install(config_path: PathBuf) -> std::io::Result<Signals> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut quit = signal(SignalKind::quit())?;
    let (stop_tx, shutdown) = watch::channel(false);
    let (reload_tx, reload) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = quit.recv() => {
                    UPGRADING.store(true, Ordering::SeqCst);
                    tracing::info!("SIGQUIT: handing the HTTP listeners over to the new edge, then stopping");
                    break;
                }
                _ = hup.recv() => match Config::load(&config_path) {
                    Ok(c) => drop(reload_tx.send(Some(c))),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: configuration not reloaded"),
                },
            }
        }
        tracing::info!("stopping");
        let _ = stop_tx.send(true);
    });
    Ok(Signals { shutdown, reload })
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
