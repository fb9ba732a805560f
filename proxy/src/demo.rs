//! DEMO ONLY: tiny HTTP responders standing in for the demo backends of
//! `config/example-routes.json` (mosh12, mosh40), so the README tour's
//! `curl` gets an answer with nothing else installed. Each answers every
//! request with its own address, the Host and path it got, and
//! `Cache-Control: max-age=30`, so the tour shows the cache too. Configured
//! by `[demo] http_backends`; never use them in production.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// `[demo]` in `edge.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    /// Addresses to answer HTTP on, as the demo backends.
    #[serde(default)]
    pub http_backends: Vec<SocketAddr>,
}

/// Binds every responder; a port in use is an error naming it.
pub async fn start(config: &DemoConfig, shutdown: watch::Receiver<bool>) -> std::io::Result<Vec<SocketAddr>> {
    let mut bound = Vec::new();
    for &addr in &config.http_backends {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("demo responder {addr}: {e}")))?;
        bound.push(listener.local_addr()?);
        tokio::spawn(serve(listener, shutdown.clone()));
    }
    if !bound.is_empty() {
        tracing::warn!(addrs = ?bound, "DEMO responders running (config [demo]); remove them in production");
    }
    Ok(bound)
}

async fn serve(listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let me = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
            _ = crate::signals::stopped(&mut shutdown) => return,
        };
        let me = me.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let host =
                    req.headers().get(hyper::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let body = format!(
                    "demo backend {me} (built into edge, [demo] in edge.toml): {} {} for {host}\n",
                    req.method(),
                    req.uri().path_and_query().map_or("/", |p| p.as_str())
                );
                let resp = Response::builder()
                    .header("content-type", "text/plain; charset=utf-8")
                    .header("cache-control", "max-age=30")
                    .header("x-demo-backend", me.as_str())
                    .body(Full::new(Bytes::from(body)))
                    .expect("static response");
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
