//! The control API as an admin meets it: through the socket, with real
//! curl, and with the peer check refusing a uid that is not allowed.

#[path = "support/edge.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use http::StatusCode;
use serde_json::json;
use support::{curl_as_nobody, TestEdge};

#[tokio::test]
async fn status_and_seeded_table() {
    let edge = TestEdge::start("").await;
    let a = edge.client.get("/v1/status").await.unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["version"], 1);
    assert_eq!(a.body["counts"]["sites"], 1);
    assert!(a.body["store"].as_str().unwrap().starts_with("sqlite "));
    let site = edge.client.get("/v1/table/sites/alice-blog").await.unwrap();
    assert_eq!(site.body["entity"]["hosts"], json!(["blog.alice.test", "*.alice.test"]));
    let login = edge.client.get("/v1/table/mail_logins/alice%40alice.test").await.unwrap();
    assert_eq!(login.body["entity"]["backend"], "mosh12");
    // `+` is part of a login, not a space, in paths and queries alike.
    let add = json!({"ops": [{"op": "put", "entity": {"kind": "mail_login", "user": "bob+lists@alice.test", "backend": "mosh40"}}]});
    edge.client.post("/v1/transactions", &add).await.unwrap();
    let plus = edge.client.get("/v1/table/mail_logins/bob+lists@alice.test").await.unwrap();
    assert_eq!(plus.body["entity"]["backend"], "mosh40", "{:?}", plus.body);
    let q = edge.client.get("/v1/lookup?mail_user=bob+lists@alice.test").await.unwrap();
    assert_eq!(q.body["backend"]["name"], "mosh40", "{:?}", q.body);
    let q = edge.client.get("/v1/lookup?mail_user=bob%2Blists%40alice.test").await.unwrap();
    assert_eq!(q.body["backend"]["name"], "mosh40", "{:?}", q.body);
    let mode = std::fs::metadata(&edge.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    edge.stop().await;
}

#[tokio::test]
async fn moves_are_visible_to_the_next_lookup() {
    let edge = TestEdge::start("").await;
    let c = &edge.client;
    let before = c.get("/v1/lookup?host=www.alice.test").await.unwrap();
    assert_eq!(before.body["backends"][0]["backend"]["name"], "mosh12");

    let moved = c.post("/v1/sites/alice-blog/move", &json!({"to": "mosh40"})).await.unwrap();
    assert_eq!(moved.status, StatusCode::OK, "{:?}", moved.body);
    assert_eq!(moved.body["version"], 2);
    let after = c.get("/v1/lookup?host=www.alice.test").await.unwrap();
    assert_eq!(after.body["backends"][0]["backend"]["name"], "mosh40");
    assert_eq!(after.body["version"], 2);
    // The in-process table, which every listener reads, agrees at once.
    assert_eq!(&*edge.table.load().site_for_host("blog.alice.test").unwrap().site.backends[0].backend, "mosh40");

    let member = c.post("/v1/members/alice/move", &json!({"to": "mosh40"})).await.unwrap();
    assert_eq!(member.body["version"], 3);
    // The site was there already; login, domain, sftp login and database move.
    assert_eq!(member.body["changes"].as_array().unwrap().len(), 4);
    for q in [
        "mail_user=alice%40alice.test",
        "recipient=x%40alice.test",
        "sftp_user=alice",
        "database=alice_wp",
        "host=blog.alice.test",
    ] {
        let a = c.get(&format!("/v1/lookup?{q}")).await.unwrap();
        let name = a.body["backend"]["name"].as_str().or(a.body["backends"][0]["backend"]["name"].as_str());
        assert_eq!(name, Some("mosh40"), "{q}: {:?}", a.body);
    }
    let evac = c.post("/v1/backends/mosh40/evacuate", &json!({"to": "mosh12"})).await.unwrap();
    assert_eq!(evac.body["version"], 4);
    let status = c.get("/v1/status").await.unwrap();
    assert_eq!(status.body["version"], 4);
    edge.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let edge = TestEdge::start("max_body_bytes = 2048").await;
    let c = &edge.client;
    let table_before = c.get("/v1/table").await.unwrap().body;

    let a = c
        .post(
            "/v1/transactions",
            &json!({"ops": [{"op": "put", "entity": {"kind": "backend", "name": "m", "adresses": []}}]}),
        )
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body["error"]["message"].as_str().unwrap().contains("unknown field `adresses`"));
    assert_eq!(a.body["error"]["field"], "ops[0]");

    let a = c.request(http::Method::POST, "/v1/transactions", Some(b"{\"ops\": [".to_vec())).await.unwrap();
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    let a = c
        .post(
            "/v1/transactions",
            &json!({"if_version": 7, "ops": [{"op": "delete", "kind": "site", "name": "alice-blog"}]}),
        )
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert_eq!(a.body["error"]["message"], "the table is at version 1, not 7");

    let a = c.post("/v1/transactions", &json!({"ops": [{"op": "put", "entity": {"kind": "site", "name": "s", "hosts": ["blog.alice.test"], "backends": [{"backend": "mosh12"}]}}]})).await.unwrap();
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        a.body["error"],
        json!({"message": "`blog.alice.test` already belongs to site `alice-blog`", "field": "entity.hosts", "op": 0})
    );

    let big = json!({"comment": "x".repeat(4096), "ops": []});
    let a = c.post("/v1/transactions", &big).await.unwrap();
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);

    let a = c.post("/v1/sites/nope/move", &json!({"to": "mosh40"})).await.unwrap();
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(a.body["error"]["message"], "no site `nope`");

    assert_eq!(c.get("/v1/nothing").await.unwrap().status, StatusCode::NOT_FOUND);
    assert_eq!(c.get("/v1/table/widgets").await.unwrap().status, StatusCode::NOT_FOUND);
    assert_eq!(c.get("/v1/table/sites/nope").await.unwrap().status, StatusCode::NOT_FOUND);
    assert_eq!(c.post("/v1/status", &json!({})).await.unwrap().status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(c.get("/v1/diff?from=x").await.unwrap().status, StatusCode::BAD_REQUEST);

    // Dry run: the diff and the version it would make, nothing applied.
    let a = c
        .post("/v1/transactions/dry-run", &json!({"ops": [{"op": "move_site", "site": "alice-blog", "to": "mosh40"}]}))
        .await
        .unwrap();
    assert_eq!(a.body["dry_run"], true);
    assert_eq!(a.body["version"], 2);
    assert_eq!(a.body["changes"][0]["after"]["backends"][0]["backend"], "mosh40");

    assert_eq!(c.get("/v1/table").await.unwrap().body, table_before);
    let h = c.get("/v1/history").await.unwrap();
    assert_eq!(h.body["entries"].as_array().unwrap().len(), 1);
    edge.stop().await;
}

#[tokio::test]
async fn history_diff_and_rollback_over_the_socket() {
    let edge = TestEdge::start("").await;
    let c = &edge.client;
    c.post("/v1/sites/alice-blog/move", &json!({"to": "mosh40", "comment": "load test"})).await.unwrap();
    let add = json!({"ops": [{"op": "add", "entity": {"kind": "site", "name": "shop", "hosts": ["shop.test"], "backends": [{"backend": "mosh12"}]}}]});
    assert_eq!(c.post("/v1/transactions", &add).await.unwrap().body["version"], 3);

    let h = c.get("/v1/history?limit=2").await.unwrap();
    let entries = h.body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["version"], 3);
    assert_eq!(entries[1]["comment"], "load test");
    assert_eq!(entries[1]["who"]["origin"], "control");
    assert_eq!(entries[1]["who"]["uid"], support_uid());

    let d = c.get("/v1/diff?from=1&to=3").await.unwrap();
    assert_eq!(d.body["changes"].as_array().unwrap().len(), 2);
    let one = c.get("/v1/history/2").await.unwrap();
    assert_eq!(one.body["changes"][0]["name"], "alice-blog");

    let r = c.post("/v1/rollback", &json!({"to": 1})).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["version"], 4);
    assert_eq!(c.get("/v1/table/sites/shop").await.unwrap().status, StatusCode::NOT_FOUND);
    let site = c.get("/v1/table/sites/alice-blog").await.unwrap();
    assert_eq!(site.body["entity"]["backends"][0]["backend"], "mosh12");
    assert_eq!(c.get("/v1/diff?from=1").await.unwrap().body["changes"], json!([]));
    let again = c.post("/v1/rollback", &json!({"to": 1})).await.unwrap();
    assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY);
    edge.stop().await;
}

fn support_uid() -> u32 {
    proxy::control::own_uid()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_works_on_the_socket() {
    let edge = TestEdge::start("").await;
    let socket = edge.socket.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--fail-with-body", "--unix-socket"])
            .arg(&socket)
            .args([
                "-X",
                "POST",
                "-d",
                r#"{"ops":[{"op":"move_site","site":"alice-blog","to":"mosh40"}]}"#,
                "http://edge/v1/transactions",
            ])
            .output()
            .expect("curl is installed by scripts/test.sh")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["version"], 2);
    edge.stop().await;
}

async fn open_to_all(edge: &TestEdge) {
    for dir in [edge.dir.path(), edge.socket.parent().unwrap()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// A uid that is not on the allow-list is refused with 403, even when the
/// socket's file mode lets it connect; once allowed, it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_not_allowed_get_403() {
    assert_eq!(
        proxy::control::own_uid(),
        0,
        "this test switches to uid 65534 with setpriv and must run as root (CI does)"
    );
    let edge = TestEdge::start("mode = \"0666\"").await;
    open_to_all(&edge).await;
    let got = curl_as_nobody(&edge.socket, "/v1/status").await;
    assert_eq!(got.code, "403", "{}", got.output);
    assert!(got.output.contains("uid 65534 is not allowed"), "{}", got.output);
    assert_eq!(edge.client.get("/v1/status").await.unwrap().status, StatusCode::OK);
    edge.stop().await;

    let edge = TestEdge::start("mode = \"0666\"\nallow_uids = [65534]").await;
    open_to_all(&edge).await;
    let got = curl_as_nobody(&edge.socket, "/v1/status").await;
    assert_eq!(got.code, "200", "{}", got.output);
    edge.stop().await;

    // With the default mode 0660 the kernel refuses the connection itself.
    let edge = TestEdge::start("").await;
    open_to_all(&edge).await;
    let got = curl_as_nobody(&edge.socket, "/v1/status").await;
    assert_eq!(got.code, "000", "{}", got.output);
    assert!(got.output.contains("Couldn't connect"), "{}", got.output);
    edge.stop().await;
}
