//! The shared transport: one reqwest client for every adapter, and one way to send and read.

use bytes::Bytes;
use std::time::Duration;

/// One pooled client. Redirects are never followed: a 3xx from a payments API means a wrong base
/// URL, and following it could replay a write with credentials to another host.
pub fn client(connect_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(50))
        .tcp_nodelay(true)
        .user_agent(concat!("profile-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the TLS backend is compiled in, so building a client cannot fail")
}

#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Bytes,
}

impl UpstreamResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

#[derive(Debug)]
pub enum TransportError {
    /// Nothing was sent: the connection could not be made.
    Connect,
    /// No complete answer in time; the request may have been processed.
    Timeout,
    /// The connection broke after the request left, or the body was cut short.
    Broken { status: Option<u16> },
}

/// Sends a request with its per-provider total timeout and reads the whole body.
pub async fn send(
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<UpstreamResponse, TransportError> {
    let response = request.timeout(timeout).send().await.map_err(|e| {
        if e.is_connect() && !e.is_timeout() {
            TransportError::Connect
        } else if e.is_timeout() {
            TransportError::Timeout
        } else {
            TransportError::Broken { status: None }
        }
    })?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.bytes().await.map_err(|e| {
        if e.is_timeout() {
            TransportError::Timeout
        } else {
            TransportError::Broken {
                status: Some(status),
            }
        }
    })?;
    Ok(UpstreamResponse {
        status,
        retry_after,
        body,
    })
}

/// `Authorization: Basic` for a username and password.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine;
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}
