//! `/profile/{user}`: the one endpoint that changes a profile everywhere, and the user's links.

use super::{AppState, JsonBody, PathParam, QueryParams, acting, user_param};
use crate::auth::assertion::{self, Use};
use crate::auth::{Authorized, Caller, LinksRead, LinksWrite, ProfileWrite, SCOPE_READ};
use crate::changes::Submitted;
use crate::changes::dry_run::Read;
use crate::changes::idempotency::{self, IdempotencyKey, KeyError};
use crate::changes::policy::{self, PatchAnswer};
use crate::domain::{Origin, ProfileLinks, ProfilePatch, UserId};
use crate::error::ApiError;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use axum::{Json, Router};
use serde::Deserialize;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/profile/{user}", patch(patch_profile))
        .route("/profile/{user}/links", get(get_links).put(put_links))
}

/// The query of `PATCH /profile/{user}`. Unknown parameters are refused: a misspelt `dryRun`
/// must never become a real change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchQuery {
    #[serde(rename = "dryRun")]
    dry_run: Option<String>,
    read: Option<String>,
}

/// What the PATCH does: apply the change, or only answer with its plan (Kubernetes' spelling,
/// `dryRun=All`, the only value it defines too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Apply,
    DryRun(Read),
}

impl PatchQuery {
    fn mode(&self) -> Result<Mode, ApiError> {
        match (self.dry_run.as_deref(), self.read.as_deref()) {
            (None, None) => Ok(Mode::Apply),
            (Some("All"), None) => Ok(Mode::DryRun(Read::None)),
            (Some("All"), Some("live")) => Ok(Mode::DryRun(Read::Live)),
            (Some("All"), Some(_)) => Err(ApiError::InvalidQuery("read (only `live`)")),
            (Some(_), _) => Err(ApiError::InvalidQuery("dryRun (only `All`)")),
            (None, Some(_)) => Err(ApiError::InvalidQuery("read (only with dryRun=All)")),
        }
    }
}

/// A real change and its dry run pass the same checks in the same order (scope and rate in the
/// extractors, then the query, path, key, body, the user assertion, the links, the plan and what
/// the record would say of the key and the pending changes), so a dry run answers every refusal
/// a real PATCH would.
async fn patch_profile(
    State(state): State<AppState>,
    Extension(edge): Extension<Origin>,
    Authorized(caller, _): Authorized<ProfileWrite>,
    PathParam(raw): PathParam,
    QueryParams(query): QueryParams<PatchQuery>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let mode = query.mode()?;
    if mode == Mode::DryRun(Read::Live) {
        // `read=live` shows the upstreams' current values (masked) and whether each equals the
        // one sent: a read of the profile, which a writer alone may not do. Checked like the
        // route's own scope, before the body is judged or any upstream called.
        caller.require(SCOPE_READ)?;
    }
    let user = user_param(&raw)?;
    // A dry run needs no key; one that is sent is checked and looked up like a real one (its
    // conflicts answer as the real PATCH would), but not remembered, so the real PATCH can
    // follow with the same headers.
    let key = match idempotency::parse_key(
        headers
            .get("idempotency-key")
            .map(|v| v.to_str().unwrap_or("\"")),
    ) {
        Ok(key) => Some(key),
        Err(KeyError::Missing) if matches!(mode, Mode::DryRun(_)) => None,
        Err(KeyError::Missing) => return Err(ApiError::IdempotencyKeyMissing),
        Err(KeyError::Malformed) => return Err(ApiError::IdempotencyKeyMalformed),
    };
    let patch = ProfilePatch::parse(&body, &state.limits.fingerprint_window())
        .map_err(ApiError::Validation)?;
    // The query is no part of the fingerprint: the dry run looks up the key as its real PATCH.
    let key = key.map(|key| {
        state
            .changes
            .fingerprints
            .key(key, "PATCH", &format!("/profile/{user}"), &body)
    });
    let read = match mode {
        Mode::DryRun(read) => read,
        Mode::Apply => {
            let key = key.ok_or(ApiError::IdempotencyKeyMissing)?;
            return apply(&state, &edge, &caller, &headers, user, patch, key).await;
        }
    };
    // The assertion is checked as for the change, but its jti is not claimed: a dry run records
    // nothing, and the real change may then use the same assertion.
    assertion::check(
        &state.callers,
        &state.pool,
        &caller,
        &headers,
        &user,
        Use::DryRun {
            idem_key: key.as_ref().map(|k| k.key.as_str()),
        },
    )
    .await?;
    let view = state
        .changes
        .dry_run(&user, &patch, &caller.name, key.as_ref(), read)
        .await?;
    Ok(Json(view).into_response())
}

async fn apply(
    state: &AppState,
    edge: &Origin,
    caller: &Caller,
    headers: &HeaderMap,
    user: UserId,
    patch: ProfilePatch,
    key: IdempotencyKey,
) -> Result<Response, ApiError> {
    // Last of the checks: it claims the assertion's jti, which only a retry may then reuse.
    let assertion = assertion::check(
        &state.callers,
        &state.pool,
        caller,
        headers,
        &user,
        Use::Change { idem_key: &key.key },
    )
    .await?;
    let origin = acting(caller, edge, assertion.as_ref());
    let submitted = state.changes.submit(user, patch, origin, key).await?;
    Ok(change_response(submitted))
}

/// The answer [`policy::patch_answer`] gives for the change: 200 with the change, 202 with its
/// `Location`, or a problem listing every step. A replay answers the same way from the change's
/// current record, marked `Idempotent-Replayed`.
pub(crate) fn change_response(submitted: Submitted) -> Response {
    let (change, replayed) = match submitted {
        Submitted::Final(c) | Submitted::InProgress(c) => (c, false),
        Submitted::Replay(c) => (c, true),
    };
    let mut response = match policy::patch_answer(change.status, &change.steps) {
        PatchAnswer::Applied => Json(change).into_response(),
        PatchAnswer::InProgress => {
            let location = change.location();
            (
                StatusCode::ACCEPTED,
                [(header::LOCATION, location)],
                Json(change),
            )
                .into_response()
        }
        PatchAnswer::Failed(failure) => {
            ApiError::ChangeFailed(Box::new(change), failure).into_response()
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
    crate::store::links::get(&state.pool, &user, state.changes.providers.link_members())
        .await?
        .map(Json)
        .ok_or(ApiError::UserNotFound)
}

async fn put_links(
    State(state): State<AppState>,
    Extension(edge): Extension<Origin>,
    Authorized(caller, _): Authorized<LinksWrite>,
    PathParam(raw): PathParam,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let user = user_param(&raw)?;
    let links = ProfileLinks::parse(&body, state.changes.providers.link_members())
        .map_err(ApiError::Validation)?;
    use crate::store::links::PutOutcome;
    let outcome =
        crate::store::links::put(&state.pool, &user, &links, &acting(&caller, &edge, None)).await?;
    // This replica plans the user's next change from the new links without a refused write first.
    state.changes.writes.links_cache.forget(&user);
    let status = match outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Replaced => StatusCode::OK,
        PutOutcome::Conflict(members) => return Err(ApiError::LinkConflict(members)),
    };
    Ok((status, Json(links)).into_response())
}
