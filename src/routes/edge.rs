//! The HTTP edge: every request gets its request id, trace id and span here, is counted, and
//! leaves logged once (an error inside its span, with its problem code).

use super::problem::LoggedError;
use crate::domain::Origin;
use crate::error::ApiError;
use crate::telemetry::{metrics, otel};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

#[derive(Clone)]
struct RequestIds {
    request_id: String,
    trace_id: String,
}

tokio::task_local! {
    static REQUEST_IDS: RequestIds;
}

/// The id of the request being served by this task, for problem bodies.
pub fn current_request_id() -> String {
    REQUEST_IDS
        .try_with(|ids| ids.request_id.clone())
        .unwrap_or_default()
}

/// The trace id of the request being served by this task (the one its spans export under).
pub fn current_trace_id() -> Option<String> {
    REQUEST_IDS.try_with(|ids| ids.trace_id.clone()).ok()
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

/// Keeps `http_server_active_requests` right when a request's future is dropped (the client
/// went away) as well as when it completes.
struct Active(prometheus::IntGauge);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub async fn edge(
    State(metrics): State<Arc<metrics::Metrics>>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let caller_addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // The route template, never the raw path: span names and metric labels stay few and hold
    // no user id.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let span_name = match &route {
        Some(r) => format!("{method} {r}"),
        None => method.to_string(),
    };
    let span = tracing::info_span!(
        "request",
        otel.name = %span_name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        %method,
        %path,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        caller = tracing::field::Empty,
    );
    if let Some(r) = &route {
        span.record("http.route", r.as_str());
    }
    let _ = span.set_parent(otel::extract(req.headers()));
    // The id the spans export under; without an OpenTelemetry layer (a bare library user), the
    // incoming one or a fresh one, as before.
    let trace_id = otel::trace_id(&span)
        .or_else(|| {
            req.headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .and_then(trace_id_from)
        })
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    span.record("trace_id", trace_id.as_str());
    // Who sent it is added once the caller is authenticated (`routes::acting`).
    req.extensions_mut().insert(Origin::at_edge(
        request_id.clone(),
        Some(trace_id.clone()),
        caller_addr,
    ));
    let route_label = route.as_deref().unwrap_or("unmatched").to_string();
    let active = metrics
        .http_active
        .with_label_values(&[method.as_str(), &route_label]);
    active.inc();
    let active = Active(active);
    let record_span = span.clone();
    let handle = async move {
        let response = next.run(req).await;
        let mut response = as_problem(response);
        let status = response.status().as_u16();
        let elapsed = started.elapsed();
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        // As i64: the OpenTelemetry layer turns unsigned integers into strings.
        record_span.record("http.response.status_code", i64::from(status));
        if status >= 500 {
            record_span.record("otel.status_code", "error");
        }
        metrics
            .http_duration
            .with_label_values(&[method.as_str(), &route_label, &status.to_string()])
            .observe(elapsed.as_secs_f64());
        drop(active);
        // The kubelet probes every few seconds: at info they would drown the log. The lifecycle
        // check logs readiness changes itself.
        let is_probe = path.starts_with("/health/");
        match response.extensions().get::<LoggedError>() {
            _ if is_probe => tracing::debug!(status, elapsed_ms, "probe answered"),
            Some(e) => {
                metrics.problems.with_label_values(&[e.code]).inc();
                if e.code == "idempotency_key_in_flight" {
                    metrics.idempotency_conflicts.inc();
                }
                if e.code == "overloaded" {
                    // Shedding is how overload is answered, not a fault: a line per shed request
                    // would add to the load being shed. problems_total{code="overloaded"} counts it.
                    tracing::debug!(status, code = e.code, elapsed_ms, "request shed")
                } else if e.status >= 500 {
                    tracing::error!(status, code = e.code, error = %e.internal, elapsed_ms, "request failed")
                } else {
                    tracing::warn!(status, code = e.code, error = %e.internal, elapsed_ms, "request refused")
                }
            }
            None => tracing::info!(status, elapsed_ms, "request served"),
        }
        if response.headers().contains_key("idempotent-replayed") {
            metrics.idempotent_replays.inc();
        }
        if let Ok(v) = HeaderValue::from_str(&current_request_id()) {
            response.headers_mut().insert("x-request-id", v);
        }
        response
    }
    .instrument(span);
    let ids = RequestIds {
        request_id,
        trace_id,
    };
    REQUEST_IDS.scope(ids, handle).await
}

/// A safety net for errors produced below our handlers (the router's 405, a caught panic):
/// they leave as problem+json like every other error.
fn as_problem(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| {
            v.as_bytes()
                .starts_with(super::problem::PROBLEM_JSON.as_bytes())
        });
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
