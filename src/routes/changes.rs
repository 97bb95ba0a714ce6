//! Recorded changes: one by id, or a user's history.

use super::{AppState, PathParam, QueryParams, user_param};
use crate::auth::{Caller, SCOPE_OPERATE, SCOPE_READ};
use crate::changes::RetryOutcome;
use crate::domain::ChangeStatus;
use crate::domain::ChangeView;
use crate::domain::Origin;
use crate::error::ApiError;
use axum::extract::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/changes/{change_id}", get(get_change))
        .route("/changes/{change_id}/retry", post(retry_change))
        .route("/profile/{user}/changes", get(list_changes))
}

async fn get_change(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(raw): PathParam,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let view = load_for_read(&state, &caller, &raw).await?;
    check_read_assertion(&state, &caller, &headers, &view).await?;
    Ok(render(&view))
}

/// The change a `profile:read` caller asks for by id (`GET /changes/{id}` and its deliveries).
pub(super) async fn load_for_read(
    state: &AppState,
    caller: &Caller,
    raw: &str,
) -> Result<ChangeView, ApiError> {
    caller.require(SCOPE_READ)?;
    let id = Uuid::parse_str(raw).map_err(|_| ApiError::InvalidPath("change_id"))?;
    crate::store::changes::load(&state.pool, id)
        .await?
        .ok_or(ApiError::ChangeNotFound)
}

/// A read of the change's user: with `assert_reads`, the caller shows an assertion for them.
pub(super) async fn check_read_assertion(
    state: &AppState,
    caller: &Caller,
    headers: &axum::http::HeaderMap,
    view: &ChangeView,
) -> Result<(), ApiError> {
    if caller.assertion.is_some() {
        // A reserved id recorded before the reservation cannot be asserted (400, as before).
        let user = super::user_param(view.user.as_str())?;
        crate::auth::assertion::check(
            &state.callers,
            &state.pool,
            caller,
            headers,
            &user,
            crate::auth::assertion::Use::Read,
        )
        .await?;
    }
    Ok(())
}

/// A change as the API shows it: this answer and every webhook body are `ChangeView::to_json`.
fn render(view: &ChangeView) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        view.to_json(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct Page {
    before_seq: Option<String>,
    limit: Option<String>,
}

async fn list_changes(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(raw): PathParam,
    QueryParams(page): QueryParams<Page>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    caller.require(SCOPE_READ)?;
    let user = user_param(&raw)?;
    crate::auth::assertion::check(
        &state.callers,
        &state.pool,
        &caller,
        &headers,
        &user,
        crate::auth::assertion::Use::Read,
    )
    .await?;
    let limit = match page.limit.as_deref() {
        None => 50,
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=200).contains(n))
            .ok_or(ApiError::InvalidQuery("limit (1 to 200)"))?,
    };
    let before_seq = match page.before_seq.as_deref() {
        None => None,
        Some(s) => Some(
            s.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or(ApiError::InvalidQuery("before_seq"))?,
        ),
    };
    let changes =
        crate::store::changes::list_for_user(&state.pool, &user, before_seq, limit).await?;
    let next = (changes.len() as i64 == limit)
        .then(|| changes.last().map(|c| c.seq))
        .flatten();
    Ok(Json(
        json!({"user": user.as_str(), "changes": changes, "next_before_seq": next}),
    ))
}

/// Operator action: re-drive a change that failed finally, as a new attempt of the same change.
/// Only the user's latest change can be retried: re-applying an older one would overwrite what
/// later changes set.
async fn retry_change(
    State(state): State<AppState>,
    Extension(edge): Extension<Origin>,
    caller: Caller,
    PathParam(raw): PathParam,
) -> Result<Response, ApiError> {
    caller.require(SCOPE_OPERATE)?;
    let id = Uuid::parse_str(&raw).map_err(|_| ApiError::InvalidPath("change_id"))?;
    let change = crate::store::changes::load(&state.pool, id)
        .await?
        .ok_or(ApiError::ChangeNotFound)?;
    match change.status {
        ChangeStatus::Pending => {
            return Err(ApiError::RetryConflict("the change is still in progress"));
        }
        ChangeStatus::Applied => {
            return Err(ApiError::RetryConflict("the change is already applied"));
        }
        ChangeStatus::Failed | ChangeStatus::PartiallyApplied => {}
    }
    let origin = super::acting(&caller, &edge, None);
    let submitted = match state.changes.retry(id, origin).await? {
        RetryOutcome::Driven(submitted) => submitted,
        RetryOutcome::NotFound => return Err(ApiError::ChangeNotFound),
        RetryOutcome::NotLatest => {
            return Err(ApiError::RetryConflict(
                "a later change of this user exists; retrying this one would overwrite it",
            ));
        }
        RetryOutcome::NotRetryable => {
            return Err(ApiError::RetryConflict(
                "the change is no longer failed, or its values were erased after the retry window (changes.failed_payload_retention_hours)",
            ));
        }
        RetryOutcome::CannotOpen => {
            return Err(ApiError::RetryConflict(
                "the change's sealed values do not open with the configured keys (changes.previous_encryption_keys)",
            ));
        }
    };
    Ok(super::profile::change_response(submitted))
}
