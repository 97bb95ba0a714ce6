//! The sandbox's webhook receiver: `POST /__sandbox/webhooks` takes any Standard Webhooks message
//! and records it, checking its signature when the sandbox knows the secret (`serve --sandbox`
//! gives its demo caller [`crate::DEMO_WEBHOOK_SECRET`]); `GET` lists what arrived, `DELETE`
//! forgets it. So the quick start can show a webhook arriving without any service of one's own.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::post;

use crate::inbox::WebhookReceipt;
use crate::signature;
use crate::state::AppState;

/// The Standard Webhooks receivers' usual tolerance for `webhook-timestamp`.
const TOLERANCE_S: i64 = 300;

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
        signature::verify(
            secrets,
            header("webhook-id").unwrap_or_default(),
            header("webhook-timestamp").unwrap_or_default(),
            header("webhook-signature").unwrap_or_default(),
            &body,
            chrono::Utc::now().timestamp(),
            TOLERANCE_S,
        )
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
