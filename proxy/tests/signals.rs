//! Signals on a real `edge` process: SIGHUP applies a new allow-list from
//! the edited config file, ignores an invalid one, and SIGTERM stops cleanly.

#[path = "support/edge.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use support::{config_text, curl_as_nobody, eventually, EdgeProcess};

fn signal(edge: &EdgeProcess, sig: &str) {
    assert!(Command::new("kill").args([sig, &edge.child.id().to_string()]).status().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_allow_list_and_keeps_a_good_config() {
    assert_eq!(
        proxy::control::own_uid(),
        0,
        "this test switches to uid 65534 with setpriv and must run as root (CI does)"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("edge.toml");
    std::fs::write(&config, config_text(dir.path(), "mode = \"0666\"")).unwrap();
    let socket = dir.path().join("var/control.sock");
    let mut edge = EdgeProcess::spawn(&config, &socket);
    edge.ready().await;
    std::fs::set_permissions(dir.path().join("var"), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(curl_as_nobody(&socket, "/v1/status").await.code, "403");

    std::fs::write(&config, config_text(dir.path(), "mode = \"0666\"\nallow_uids = [65534]")).unwrap();
    signal(&edge, "-HUP");
    eventually(10, "the reloaded allow-list", || async {
        (curl_as_nobody(&socket, "/v1/status").await.code == "200").then_some(())
    })
    .await;

    // A broken file is refused; the running configuration stays.
    std::fs::write(&config, "[control]\nallow_uids = \"everyone\"\n").unwrap();
    signal(&edge, "-HUP");
    let client = proxy::control::client::Client::new(&socket);
    assert!(client.get("/v1/status").await.unwrap().status.is_success());
    assert_eq!(curl_as_nobody(&socket, "/v1/status").await.code, "200");
    assert!(edge.child.try_wait().unwrap().is_none(), "edge exited on a bad SIGHUP");
    // Signals are handled in order: once a later good reload shows, the bad
    // one was handled before it and Edge survived it.
    std::fs::write(&config, config_text(dir.path(), "mode = \"0666\"")).unwrap();
    signal(&edge, "-HUP");
    eventually(10, "the allow-list emptied again", || async {
        (curl_as_nobody(&socket, "/v1/status").await.code == "403").then_some(())
    })
    .await;

    assert!(edge.terminate().success());
    assert!(!socket.exists());
}

/// Under systemd (`Type=notify`), Edge says READY=1 only once its control
/// socket is bound, and STOPPING=1 when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tells_systemd_when_ready_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::write_config(dir.path(), "");
    let socket = dir.path().join("var/control.sock");
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_edge"))
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .spawn()
        .unwrap();
    let mut edge = EdgeProcess { child, socket: socket.clone(), config };
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("no READY=1 within 30 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(socket.exists(), "READY=1 came before the control socket was bound");
    edge.ready().await;
    signal(&edge, "-TERM");
    let n = notify.recv(&mut buf).expect("no STOPPING=1");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(edge.child.wait().unwrap().success());
}
