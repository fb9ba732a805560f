//! A client of the control socket, used by `edgectl` and the tests.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

/// Failed to talk to Edge (not an error answer: those come back as
/// [`Answer`]s with their status).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot connect to the control socket {path}: {source} (is edge running? see --socket)")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("control socket {path}: {message}")]
    Http { path: PathBuf, message: String },
}

/// A reply: status and JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    /// The server's error message, if this is an error.
    pub fn error_message(&self) -> Option<String> {
        if self.status.is_success() {
            return None;
        }
        let e = &self.body["error"];
        let mut msg = e["message"].as_str().unwrap_or("unknown error").to_string();
        if let Some(field) = e["field"].as_str() {
            let op = e["op"].as_u64().map(|i| format!("ops[{i}].")).unwrap_or_default();
            msg = format!("{op}{field}: {msg}");
        }
        Some(format!("{} ({})", msg, self.status))
    }
}

/// Talks to one control socket; one connection per request.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
}

impl Client {
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self { path: path.as_ref().to_path_buf() }
    }

    pub async fn get(&self, path: &str) -> Result<Answer, ClientError> {
        self.request(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Answer, ClientError> {
        self.request(Method::POST, path, Some(serde_json::to_vec(body).unwrap_or_default())).await
    }

    pub async fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Answer, ClientError> {
        let http_err =
            |e: &dyn std::fmt::Display| ClientError::Http { path: self.path.clone(), message: e.to_string() };
        let stream = UnixStream::connect(&self.path)
            .await
            .map_err(|source| ClientError::Connect { path: self.path.clone(), source })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| http_err(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "edge")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| http_err(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| http_err(&e))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| http_err(&e))?.to_bytes();
        let body =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok(Answer { status, body })
    }
}
