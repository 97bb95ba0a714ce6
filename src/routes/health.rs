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
    Ok(Json(
        json!({"status": "ready", "issuers": issuer_detail(&state)}),
    ))
}

/// The JWT issuers' key state (`[]` without issuers): an issuer whose keys cannot be fetched shows
/// here without making the replica unready.
pub fn issuer_detail(state: &AppState) -> Value {
    state.callers.issuers.readiness_detail()
}
