//! The shared transport: one reqwest client for every adapter, and one way to send and read.

use bytes::Bytes;
use std::time::Duration;

/// One pooled client. Redirects are never followed: a 3xx from a payments API means a wrong base
/// URL, and following it could replay a write with credentials to another host. Proxies come
/// from `upstream.proxy` only: an `HTTP_PROXY` left in a pod's environment must not receive the
/// upstream credentials. TLS below 1.2 is never negotiated.
pub fn client(
    connect_timeout: Duration,
    proxy: Option<&str>,
) -> Result<reqwest::Client, reqwest::Error> {
    let builder = reqwest::Client::builder().no_proxy();
    let builder = match proxy {
        Some(url) => builder.proxy(reqwest::Proxy::all(url)?),
        None => builder,
    };
    builder
        .min_tls_version(reqwest::tls::Version::TLS_1_2)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(50))
        .tcp_nodelay(true)
        .user_agent(concat!("profile-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
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

/// How one provider's answers are read: within `timeout` in all, and at most `max_bytes` of body.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    pub timeout: Duration,
    pub max_bytes: usize,
}

#[derive(Debug)]
pub enum TransportError {
    /// Nothing was sent: the connection could not be made.
    Connect,
    /// No complete answer in time; the request may have been processed.
    Timeout,
    /// The connection broke after the request left, or the body was cut short.
    Broken { status: Option<u16> },
    /// The answer announced or sent more than `max_bytes`; the read stopped and the connection
    /// was dropped.
    TooLarge { status: u16 },
}

impl crate::telemetry::otel::UpstreamFailure for TransportError {
    fn status(&self) -> Option<u16> {
        match self {
            Self::Connect | Self::Timeout => None,
            Self::Broken { status } => *status,
            Self::TooLarge { status } => Some(*status),
        }
    }

    fn error_type(&self) -> &'static str {
        match self {
            Self::Connect => "connect_error",
            Self::Timeout => "timeout",
            Self::Broken { .. } => "connection_broken",
            Self::TooLarge { .. } => "response_too_large",
        }
    }
}

/// Sends a request with its per-provider total timeout and reads the body up to the cap.
pub async fn send(
    request: reqwest::RequestBuilder,
    limits: &ReadLimits,
) -> Result<UpstreamResponse, TransportError> {
    let mut response = request.timeout(limits.timeout).send().await.map_err(|e| {
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
    let too_large = TransportError::TooLarge { status };
    if response
        .content_length()
        .is_some_and(|n| n > limits.max_bytes as u64)
    {
        // Dropping an unread response closes its connection; nothing of the body is buffered.
        return Err(too_large);
    }
    let mut body = bytes::BytesMut::new();
    loop {
        let chunk = response.chunk().await.map_err(|e| {
            if e.is_timeout() {
                TransportError::Timeout
            } else {
                TransportError::Broken {
                    status: Some(status),
                }
            }
        })?;
        let Some(chunk) = chunk else { break };
        if body.len() + chunk.len() > limits.max_bytes {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    let body = body.freeze();
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
