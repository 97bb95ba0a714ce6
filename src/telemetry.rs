//! Logs, request ids and the edge middleware that logs each error once, inside the request span.

use crate::error::{ApiError, LoggedError, PROBLEM_JSON};
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::time::Instant;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

pub fn init(format: &str, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests building several apps) is harmless, hence `try_init`.
    let _ = if format == "pretty" {
        builder.try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    };
}

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served by this task, for problem bodies.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// What the edge learned about a request, for handlers and audit rows.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub request_id: String,
    pub trace_id: Option<String>,
    pub caller_addr: Option<String>,
}

fn valid_request_id(v: &str) -> bool {
    (8..=64).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// W3C `traceparent`: `00-<32 hex trace id>-<16 hex span id>-<flags>`.
fn trace_id_from(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    let trace = parts.next()?;
    let ok = trace.len() == 32
        && trace.bytes().all(|b| b.is_ascii_hexdigit())
        && trace != "00000000000000000000000000000000";
    ok.then(|| trace.to_ascii_lowercase())
}

pub async fn edge(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let trace_id = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(trace_id_from)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let caller_addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!(
        "request",
        %method,
        %path,
        request_id = %request_id,
        trace_id = %trace_id,
        caller = tracing::field::Empty,
    );
    req.extensions_mut().insert(RequestMeta {
        request_id: request_id.clone(),
        trace_id: Some(trace_id),
        caller_addr,
    });
    let handle = async move {
        let response = next.run(req).await;
        let mut response = as_problem(response);
        let status = response.status().as_u16();
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        // The kubelet probes every few seconds: at info they would drown the log. The lifecycle
        // check logs readiness changes itself.
        let is_probe = path.starts_with("/health/");
        match response.extensions().get::<LoggedError>() {
            _ if is_probe => tracing::debug!(status, elapsed_ms, "probe answered"),
            Some(e) if e.status >= 500 => {
                tracing::error!(status, code = e.code, error = %e.internal, elapsed_ms, "request failed")
            }
            Some(e) => {
                tracing::warn!(status, code = e.code, error = %e.internal, elapsed_ms, "request refused")
            }
            None => tracing::info!(status, elapsed_ms, "request served"),
        }
        if let Ok(v) = HeaderValue::from_str(&current_request_id()) {
            response.headers_mut().insert("x-request-id", v);
        }
        response
    }
    .instrument(span);
    REQUEST_ID.scope(request_id, handle).await
}

/// A safety net for errors produced below our handlers (the router's 405, a caught panic):
/// they leave as problem+json like every other error.
fn as_problem(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let error = match status {
        StatusCode::NOT_FOUND => ApiError::RouteNotFound,
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        StatusCode::BAD_REQUEST => ApiError::MalformedJson,
        s => ApiError::Internal(format!("unhandled status {s} from a lower layer")),
    };
    error.into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn traceparent_and_request_ids() {
        assert_eq!(
            super::trace_id_from("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(super::trace_id_from("garbage"), None);
        assert!(super::valid_request_id("req-12345678"));
        assert!(!super::valid_request_id("bad id with spaces"));
    }
}
