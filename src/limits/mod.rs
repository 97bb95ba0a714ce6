//! Bounds at the edge, each answered before any work is done for the request: requests in flight
//! per replica (503 overloaded), per-caller rates (429 rate_limited), and the response headers
//! every API answer carries.

pub mod rate;

use crate::domain::TimestampWindow;
use crate::error::ApiError;
use crate::settings::Settings;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rate::RateLimiter;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

#[derive(Clone)]
pub struct EdgeLimits {
    writes: Arc<Semaphore>,
    reads: Arc<Semaphore>,
    rate: Arc<RateLimiter>,
    fingerprint_max_age_ms: u64,
    fingerprint_max_future_ms: u64,
    /// How long a request body may take to arrive once its headers did.
    pub body_read_timeout: std::time::Duration,
}

impl EdgeLimits {
    pub fn new(settings: &Settings) -> Self {
        let l = &settings.limits;
        Self {
            writes: Arc::new(Semaphore::new(l.max_inflight_patches)),
            reads: Arc::new(Semaphore::new(l.max_inflight_reads)),
            rate: Arc::new(RateLimiter::new(&settings.auth.callers, l)),
            fingerprint_max_age_ms: l.fingerprint_max_age_ms,
            fingerprint_max_future_ms: l.fingerprint_max_future_ms,
            body_read_timeout: std::time::Duration::from_millis(
                settings.server.body_read_timeout_ms,
            ),
        }
    }

    /// The window a device fingerprint's timestamp must fall in, as of now.
    pub fn fingerprint_window(&self) -> TimestampWindow {
        TimestampWindow::around_now(self.fingerprint_max_age_ms, self.fingerprint_max_future_ms)
    }
}

/// Sheds what exceeds the in-flight bounds (a failed `try_acquire` costs no await, no body read
/// and no database round trip) and gives the rate limiter a place to leave its verdict.
pub async fn guard(State(limits): State<EdgeLimits>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    // Probes must keep answering under overload, or Kubernetes restarts a busy replica.
    let probe = path.starts_with("/health/");
    let pool = match *req.method() {
        Method::GET | Method::HEAD | Method::OPTIONS => &limits.reads,
        _ => &limits.writes,
    };
    let _permit = if probe {
        None
    } else {
        match Arc::clone(pool).try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => return ApiError::Overloaded.into_response(),
        }
    };
    let slot = rate::Slot {
        limiter: Arc::clone(&limits.rate),
        verdict: Arc::new(Mutex::new(None)),
    };
    req.extensions_mut().insert(slot.clone());
    let mut response = next.run(req).await;
    let verdict = *slot.verdict.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(v) = verdict {
        for (name, value) in v.headers() {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// Nothing the gateway answers may be cached by a proxy or browser (profiles and change records
/// hold PII), nor sniffed into another content type.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
