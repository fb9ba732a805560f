//! The admin listener: Prometheus text at `/metrics`, `ok` at `/healthz`.
//! One registry serves every service of the process.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Serves `registry` on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, registry: Registry, mut shutdown: watch::Receiver<bool>) {
    let mut tasks = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::signals::stopped(&mut shutdown) => break,
        };
        let registry = registry.clone();
        tasks.spawn(async move {
            let service = service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(answer(&req, &registry)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
        while tasks.try_join_next().is_some() {}
        if tasks.len() > 256 {
            // Bound concurrent scrapers; Prometheus uses one connection.
            let _ = tasks.join_next().await;
        }
    }
}

fn answer(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => {
            let mut buf = Vec::new();
            let encoder = TextEncoder::new();
            if let Err(e) = encoder.encode(&registry.gather(), &mut buf) {
                tracing::error!(error = %e, "encoding metrics failed");
                return text(StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed\n".into());
            }
            let mut resp = text(StatusCode::OK, buf);
            let ct = http::HeaderValue::from_str(encoder.format_type())
                .unwrap_or(http::HeaderValue::from_static("text/plain"));
            resp.headers_mut().insert(header::CONTENT_TYPE, ct);
            resp
        }
        "/healthz" => text(StatusCode::OK, b"ok\n".to_vec()),
        _ => text(StatusCode::NOT_FOUND, b"not found: try /metrics or /healthz\n".to_vec()),
    }
}

fn text(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
