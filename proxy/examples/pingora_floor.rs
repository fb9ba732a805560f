//! Pingora's floor: the cheapest answers Pingora can give, to measure what
//! edge's HTTP rows can reach on the engine the design prescribes.
//!
//! A bare Pingora proxy service, built as edge builds its own (one worker
//! thread, one single-threaded runtime, mimalloc), with nothing of edge's:
//! no routing, cache, limits, timeouts, metrics, logs or headers of its own.
//!
//! - A request whose path starts with `/nocache/` is proxied to the origin
//!   (`--origin`, HTTP/1.1 over Pingora's keepalive pool): what that costs
//!   bounds edge's uncached rows.
//! - Any other request is answered from `request_filter` with a fixed body
//!   (100 KiB when the path has `100k` in it, else 1 KiB) and the header a
//!   cached answer carries, without looking anything up: what that costs is
//!   what Pingora's HTTP/1 session (or Pingora and the `h2` crate over
//!   Pingora's rustls listener, for HTTP/2) costs an answer, which bounds
//!   edge's cache-hit rows, whatever edge's cache does.
//!
//! So `../shared/bench/http-peers.sh` can run it as its extra column, as
//! `scripts/bench-http.sh --pingora-floor` does; docs/benchmarks.md, "Bare Pingora", has
//! what it measured.
//!
//! `--serve HTTP_ADDR` instead answers every request with the same fixed
//! answers from Pingora's plain HTTP app (`ServeHttp`), with no proxy.
//!
//! Usage: `pingora_floor --origin ADDR HTTP_ADDR [TLS_ADDR CERT KEY]` or
//! `pingora_floor --serve HTTP_ADDR`. A measuring tool, not part of edge.

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The largest answer's body (the bench's `/cache/100k.bin`).
static BODY: [u8; 102_400] = [b'x'; 102_400];

/// The header of every fixed answer, a cached answer's, bar its length.
const HEADERS: [(&str, &str); 8] = [
    ("server", "floor"),
    ("date", "Sun, 06 Dec 2026 10:00:00 GMT"),
    ("content-type", "application/octet-stream"),
    ("last-modified", "Sun, 06 Dec 2026 08:00:00 GMT"),
    ("etag", "\"6753f0a0-400\""),
    ("cache-control", "public, max-age=3600"),
    ("accept-ranges", "bytes"),
    ("age", "0"),
];

/// The fixed answer's body length for a path.
fn body_len(path: &str) -> usize {
    if path.contains("100k") {
        BODY.len()
    } else {
        1024
    }
}

struct Floor {
    origin: String,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let path = session.req_header().uri.path();
        if path.starts_with("/nocache/") {
            return Ok(false);
        }
        let len = body_len(path);
        let mut header = ResponseHeader::build(200, Some(HEADERS.len() + 1))?;
        for (name, value) in HEADERS {
            header.insert_header(name, value)?;
        }
        header.insert_header("content-length", len)?;
        let head = session.req_header().method == http::Method::HEAD;
        session.write_response_header(Box::new(header), head).await?;
        if !head {
            session.write_response_body(Some(Bytes::from_static(&BODY[..len])), true).await?;
        }
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.origin.as_str(), false, String::new())))
    }
}

/// `--serve`: the same fixed answers from Pingora's plain HTTP app
/// (`ServeHttp`), without the proxy's request path, to see whether that
/// path is what costs (it was not: docs/benchmarks.md, "Bare Pingora").
struct Serve;

#[async_trait]
impl pingora::apps::http_app::ServeHttp for Serve {
    async fn response(&self, session: &mut pingora::protocols::http::ServerSession) -> http::Response<Vec<u8>> {
        let len = body_len(session.req_header().uri.path());
        let mut answer = http::Response::builder().status(200).header("content-length", len);
        for (name, value) in HEADERS {
            answer = answer.header(name, value);
        }
        answer.body(BODY[..len].to_vec()).unwrap_or_default()
    }
}

/// What to run, from the command line.
enum Mode {
    Proxy { origin: String, plain: String, tls: Option<[String; 3]> },
    Serve { plain: String },
}

fn mode(args: &[String]) -> Option<Mode> {
    match args {
        [flag, plain] if flag == "--serve" => Some(Mode::Serve { plain: plain.clone() }),
        [flag, origin, plain] if flag == "--origin" => {
            Some(Mode::Proxy { origin: origin.clone(), plain: plain.clone(), tls: None })
        }
        [flag, origin, plain, addr, cert, key] if flag == "--origin" => Some(Mode::Proxy {
            origin: origin.clone(),
            plain: plain.clone(),
            tls: Some([addr.clone(), cert.clone(), key.clone()]),
        }),
        _ => None,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = mode(&args) else {
        eprintln!("usage: pingora_floor --origin ADDR HTTP_ADDR [TLS_ADDR CERT KEY] | --serve HTTP_ADDR");
        std::process::exit(2);
    };
    let conf = ServerConf { threads: 1, work_stealing: false, ..ServerConf::default() };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    match mode {
        Mode::Serve { plain } => {
            let app = pingora::apps::http_app::HttpServer::new_app(Serve);
            let mut service = pingora::services::listening::Service::new("floor".into(), app);
            service.add_tcp(&plain);
            server.add_service(service);
        }
        Mode::Proxy { origin, plain, tls } => {
            let mut service = pingora::proxy::http_proxy_service(&server.configuration, Floor { origin });
            service.add_tcp(&plain);
            if let Some([addr, cert, key]) = tls {
                let mut settings = match pingora::listeners::tls::TlsSettings::intermediate(&cert, &key) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("pingora_floor: {cert}, {key}: {e}");
                        std::process::exit(1);
                    }
                };
                settings.enable_h2();
                service.add_tls_with_settings(&addr, None, settings);
            }
            server.add_service(service);
        }
    }
    server.run_forever();
}
