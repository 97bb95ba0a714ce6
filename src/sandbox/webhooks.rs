//! The sandbox's webhook receiver: `POST /__sandbox/webhooks` takes any Standard Webhooks message
//! and records it, checking its signature when the sandbox knows the secret (`serve --sandbox`
//! gives its demo caller [`super::DEMO_WEBHOOK_SECRET`]); `GET` lists what arrived, `DELETE`
//! forgets it. So the quick start can show a webhook arriving without any service of one's own.

use std::collections::{BTreeMap, VecDeque};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};

use super::state::AppState;

/// Oldest receipts are dropped beyond this.
const CAPACITY: usize = 1_000;
/// The Standard Webhooks receivers' usual tolerance for `webhook-timestamp`.
const TOLERANCE_S: i64 = 300;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookReceipt {
    /// Arrival order, starting at 1.
    pub seq: u64,
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// `content-type`, `profile-gateway-event` and the `webhook-*` headers, lower-case.
    pub headers: BTreeMap<String, String>,
    /// The body as it arrived (lossy UTF-8).
    pub body: String,
    /// Whether the signature matches the sandbox's webhook secret (within 5 minutes of the
    /// timestamp); `None` when the sandbox has no secret to check with.
    pub signature_valid: Option<bool>,
}

#[derive(Debug, Default)]
pub(crate) struct Inbox {
    next_seq: u64,
    receipts: VecDeque<WebhookReceipt>,
}

impl Inbox {
    fn push(&mut self, mut r: WebhookReceipt) {
        self.next_seq += 1;
        r.seq = self.next_seq;
        if self.receipts.len() == CAPACITY {
            self.receipts.pop_front();
        }
        self.receipts.push_back(r);
    }

    pub(crate) fn entries(&self) -> Vec<WebhookReceipt> {
        self.receipts.iter().cloned().collect()
    }

    pub(crate) fn clear(&mut self) {
        self.receipts.clear();
    }
}

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/__sandbox/webhooks", post(receive).get(list).delete(clear))
}

async fn receive(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let kept: BTreeMap<String, String> = headers
        .iter()
        .filter(|(n, _)| {
            let n = n.as_str();
            n.starts_with("webhook-") || n == "content-type" || n == "profile-gateway-event"
        })
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let signature_valid = state.creds.webhook_secret.as_ref().map(|secrets| {
        crate::webhooks::signature::verify(
            secrets,
            header("webhook-id").unwrap_or_default(),
            header("webhook-timestamp").unwrap_or_default(),
            header("webhook-signature").unwrap_or_default(),
            &body,
            chrono::Utc::now().timestamp(),
            Some(TOLERANCE_S),
        )
        .is_ok()
    });
    state.lock().webhooks.push(WebhookReceipt {
        seq: 0,
        received_at: chrono::Utc::now(),
        headers: kept,
        body: String::from_utf8_lossy(&body).into_owned(),
        signature_valid,
    });
    StatusCode::NO_CONTENT
}

async fn list(State(state): State<AppState>) -> Response {
    Json(state.lock().webhooks.entries()).into_response()
}

async fn clear(State(state): State<AppState>) -> StatusCode {
    state.lock().webhooks.clear();
    StatusCode::NO_CONTENT
}
