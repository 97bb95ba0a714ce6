//! Probes: liveness says the process serves; readiness says it can record changes.

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
    sqlx::query_scalar!("select 1 as \"one!\"")
        .fetch_one(&state.pool)
        .await
        .map_err(|e| ApiError::DatabaseUnavailable(e.to_string()))?;
    let mut body = json!({"status": "ready"});
    // Detail only: requests never wait for the witness.
    if let Some(w) = &state.audit_witness {
        body["audit_witness"] = json!({"backlog": w.backlog(), "failing": w.failing()});
    }
    Ok(Json(body))
}
