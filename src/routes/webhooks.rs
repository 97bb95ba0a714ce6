//! Webhook deliveries: a caller reads its own change's events and their attempts; an operator
//! sends one again.

use super::{AppState, PathParam};
use crate::audit::AuditEvent;
use crate::auth::{Caller, SCOPE_OPERATE};
use crate::domain::Origin;
use crate::error::ApiError;
use crate::store::webhooks::{self as store, Redeliver};
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/changes/{change_id}/deliveries", get(list_deliveries))
        .route(
            "/webhooks/deliveries/{delivery_id}/redeliver",
            post(redeliver),
        )
}

/// The change's webhook events, oldest first, each with every attempt. Read like the change
/// itself (`profile:read`, and the user's assertion for a caller with `assert_reads`), and only by
/// the caller that made the change or an operator: another caller's receiver is none of its
/// business, so for it the change does not exist.
async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(raw): PathParam,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let view = super::changes::load_for_read(&state, &caller, &raw).await?;
    if view.caller != caller.name && caller.require(SCOPE_OPERATE).is_err() {
        return Err(ApiError::ChangeNotFound);
    }
    super::changes::check_read_assertion(&state, &caller, &headers, &view).await?;
    let id = view.change_id;
    let deliveries = store::list_for_change(&state.pool, id).await?;
    Ok(Json(json!({"change_id": id, "deliveries": deliveries})).into_response())
}

/// Operator action: the event again, with its `webhook-id` and body, due now with a fresh retry
/// window (and backoff); its receiver's pause is lifted, so the receiver is attempted at once
/// (when it was paused, with its oldest due event as the probe, which may be another one). An audit event of the
/// change's user records who asked.
async fn redeliver(
    State(state): State<AppState>,
    Extension(edge): Extension<Origin>,
    caller: Caller,
    PathParam(raw): PathParam,
) -> Result<Response, ApiError> {
    caller.require(SCOPE_OPERATE)?;
    let id = Uuid::parse_str(&raw).map_err(|_| ApiError::InvalidPath("delivery_id"))?;
    let owner = store::owner(&state.pool, id)
        .await?
        .ok_or(ApiError::DeliveryNotFound)?;
    if state.changes.webhooks.get(&owner.caller).is_none() {
        return Err(ApiError::DeliveryNoWebhook);
    }
    let origin = super::acting(&caller, &edge, None);
    let mut event = AuditEvent::new(&origin, &owner.user, "webhook_redelivered", "accepted");
    event.change_id = Some(owner.change_id);
    // Who asked goes into the event's own actor column (hashed), as for every gateway event.
    event.values = json!({"delivery_id": id});
    match store::redeliver(&state.pool, id, &event).await? {
        Redeliver::Scheduled => {}
        Redeliver::NotFound => return Err(ApiError::DeliveryNotFound),
        Redeliver::InFlight => return Err(ApiError::DeliveryInFlight),
    }
    let delivery = store::load(&state.pool, id)
        .await?
        .ok_or(ApiError::DeliveryNotFound)?;
    state.changes.webhooks.wake();
    Ok((StatusCode::ACCEPTED, Json(delivery)).into_response())
}
