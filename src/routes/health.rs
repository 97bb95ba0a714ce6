//! Probes: liveness says the process serves (it never touches the database); readiness says this
//! replica should get traffic, from the state `lifecycle` keeps (no database call in the probe).

use super::AppState;
use crate::error::ApiError;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
}

async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state
        .lifecycle
        .readiness()
        .map_err(|why| ApiError::NotReady(why.to_string()))?;
    let mut body = json!({"status": "ready"});
    let issuers = issuer_detail(&state);
    if issuers.as_array().is_some_and(|a| !a.is_empty()) {
        body["issuers"] = issuers;
    }
    // Detail only: requests never wait for the witness.
    if let Some(w) = &state.audit_witness {
        body["audit_witness"] = json!({"backlog": w.backlog(), "failing": w.failing()});
    }
    Ok(Json(body))
}

/// The JWT issuers' key state (`[]` without issuers): an issuer whose keys cannot be fetched shows
/// here without making the replica unready.
pub fn issuer_detail(state: &AppState) -> Value {
    state.callers.issuers.readiness_detail()
}
