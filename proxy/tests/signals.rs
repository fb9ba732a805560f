//! Signals on a real `edge` process: SIGHUP applies a new allow-list from
//! the edited config file, ignores an invalid one, and serves a renewed mail
//! certificate; SIGTERM stops cleanly.

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

/// SIGHUP serves a renewed mail certificate to new connections, and keeps
/// the one in force when the new files are broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_renewed_mail_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cert, key) = (d.join("mail-cert.pem"), d.join("mail-key.pem"));
    write_certificate(&cert, &key, "first.test");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = d.join("edge.toml");
    let mail = format!(
        "[mail]\nimaps = [\"127.0.0.1:{port}\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    std::fs::write(&config, config_text(d, "") + &mail).unwrap();
    let mut edge = EdgeProcess::spawn(&config, &d.join("var/control.sock"));
    edge.ready().await;
    assert!(served_names(port).contains("DNS:first.test"), "{}", served_names(port));

    write_certificate(&cert, &key, "second.test");
    signal(&edge, "-HUP");
    eventually(10, "the renewed certificate", || async {
        served_names(port).contains("DNS:second.test").then_some(())
    })
    .await;

    // A broken certificate: not loaded; the renewed one stays, and so does edge.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    signal(&edge, "-HUP");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(served_names(port).contains("DNS:second.test"), "{}", served_names(port));
    assert!(edge.child.try_wait().unwrap().is_none(), "edge exited on a bad certificate");
}

fn write_certificate(cert: &std::path::Path, key: &std::path::Path, name: &str) {
    let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    std::fs::write(key, made.signing_key.serialize_pem()).unwrap();
    std::fs::write(cert, made.cert.pem()).unwrap();
}

/// The subjectAltName of the certificate the edge serves on `port`, as
/// `openssl s_client` sees it.
fn served_names(port: u16) -> String {
    let script = format!(
        "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName"
    );
    let out = Command::new("sh").args(["-c", &script]).output().expect("openssl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
