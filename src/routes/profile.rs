//! `/profile/{user}`: the one endpoint that changes a profile everywhere, and the user's links.

use super::{AppState, JsonBody, PathParam, acting_context, user_param};
use crate::auth::assertion::{self, Use};
use crate::auth::{Authorized, LinksRead, LinksWrite, ProfileWrite};
use crate::changes::idempotency::{self, IdempotencyKey, KeyError};
use crate::changes::model::ChangeStatus;
use crate::changes::{SubmitError, Submitted};
use crate::domain::{ProfileLinks, ProfilePatch};
use crate::error::ApiError;
use crate::telemetry::RequestMeta;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use axum::{Json, Router};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/profile/{user}", patch(patch_profile))
        .route("/profile/{user}/links", get(get_links).put(put_links))
}

async fn patch_profile(
    State(state): State<AppState>,
    Extension(meta): Extension<RequestMeta>,
    Authorized(caller, _): Authorized<ProfileWrite>,
    PathParam(raw): PathParam,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let user = user_param(&raw)?;
    let key = idempotency::parse_key(
        headers
            .get("idempotency-key")
            .map(|v| v.to_str().unwrap_or("\"")),
    )
    .map_err(|e| match e {
        KeyError::Missing => ApiError::IdempotencyKeyMissing,
        KeyError::Malformed => ApiError::IdempotencyKeyMalformed,
    })?;
    let patch = ProfilePatch::parse(&body, &state.limits.fingerprint_window())
        .map_err(ApiError::Validation)?;
    let key: IdempotencyKey =
        state
            .changes
            .fingerprints
            .key(key, "PATCH", &format!("/profile/{user}"), &body);
    // Last of the checks: it claims the assertion's jti, which only a retry may then reuse.
    let assertion = assertion::check(
        &state.callers,
        &state.pool,
        &caller,
        &headers,
        &user,
        Use::Change { idem_key: &key.key },
    )
    .await?;
    let ctx = acting_context(&caller, &meta, assertion.as_ref());
    let submitted = state
        .changes
        .submit(user, patch, ctx, key)
        .await
        .map_err(|e| match e {
            SubmitError::UserNotFound => ApiError::UserNotFound,
            SubmitError::MissingLink(errors) => ApiError::MissingLink(errors),
            SubmitError::KeyReused => ApiError::IdempotencyKeyReused,
            SubmitError::KeyInFlight => ApiError::IdempotencyKeyInFlight,
            SubmitError::TooManyPending => ApiError::TooManyPendingChanges,
            SubmitError::Db(e) => ApiError::from(e),
            SubmitError::Unavailable(e) => ApiError::DatabaseUnavailable(e),
            SubmitError::Internal(e) => ApiError::Internal(e),
        })?;
    Ok(change_response(submitted))
}

/// 200 when applied, 202 while in progress, a problem listing every step otherwise. A replay
/// answers the same way from the change's current record, marked `Idempotent-Replayed`.
pub(crate) fn change_response(submitted: Submitted) -> Response {
    let (change, replayed) = match submitted {
        Submitted::Final(c) | Submitted::InProgress(c) => (c, false),
        Submitted::Replay(c) => (c, true),
    };
    let mut response = match change.status {
        ChangeStatus::Applied => Json(change).into_response(),
        ChangeStatus::Pending => {
            let location = change.location();
            (
                StatusCode::ACCEPTED,
                [(header::LOCATION, location)],
                Json(change),
            )
                .into_response()
        }
        ChangeStatus::Failed | ChangeStatus::PartiallyApplied => {
            ApiError::ChangeFailed(Box::new(change)).into_response()
        }
    };
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

async fn get_links(
    State(state): State<AppState>,
    Authorized(caller, _): Authorized<LinksRead>,
    PathParam(raw): PathParam,
    headers: HeaderMap,
) -> Result<Json<ProfileLinks>, ApiError> {
    let user = user_param(&raw)?;
    assertion::check(
        &state.callers,
        &state.pool,
        &caller,
        &headers,
        &user,
        Use::Read,
    )
    .await?;
    crate::store::links::get(&state.pool, &user)
        .await?
        .map(Json)
        .ok_or(ApiError::UserNotFound)
}

async fn put_links(
    State(state): State<AppState>,
    Extension(meta): Extension<RequestMeta>,
    Authorized(caller, _): Authorized<LinksWrite>,
    PathParam(raw): PathParam,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let user = user_param(&raw)?;
    let links = ProfileLinks::parse(&body).map_err(ApiError::Validation)?;
    use crate::store::links::PutOutcome;
    let outcome = crate::store::links::put(
        &state.pool,
        &user,
        &links,
        &acting_context(&caller, &meta, None),
    )
    .await?;
    // This replica plans the user's next change from the new links without a refused write first.
    state.changes.writes.links_cache.forget(user.as_str());
    let status = match outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Replaced => StatusCode::OK,
        PutOutcome::Conflict(members) => return Err(ApiError::LinkConflict(members)),
    };
    Ok((status, Json(links)).into_response())
}
