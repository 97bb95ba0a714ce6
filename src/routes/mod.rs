//! HTTP routes, one module per resource; this module merges them and adds the edge layers.

pub mod changes;
pub mod edge;
pub mod health;
pub mod problem;
pub mod profile;
pub mod webhooks;

use crate::auth::Callers;
use crate::changes::ChangeService;
use crate::error::ApiError;
use axum::Router;
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::header;
use sqlx::PgPool;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub callers: Callers,
    pub changes: Arc<ChangeService>,
    pub body_limit: usize,
    pub limits: crate::limits::EdgeLimits,
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// Set when checkpoints go to a witness directory: readiness shows its backlog.
    pub audit_witness: Option<crate::audit::checkpoint::WitnessStatus>,
}

impl FromRef<AppState> for Callers {
    fn from_ref(s: &AppState) -> Callers {
        s.callers.clone()
    }
}

pub fn router(state: AppState) -> Router {
    let metrics = Arc::clone(&state.metrics);
    Router::new()
        .merge(profile::router())
        .merge(changes::router())
        .merge(health::router())
        .merge(webhooks::router())
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            state.limits.clone(),
            crate::limits::guard,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(axum::middleware::from_fn_with_state(metrics, edge::edge))
        .layer(axum::middleware::from_fn(crate::limits::security_headers))
        .with_state(state)
}

/// A JSON body as a `serde_json::Value`, so the domain parsers can report every bad field at once
/// with its pointer. Content type, size and syntax are checked here, each with its own problem.
pub struct JsonBody(pub serde_json::Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > state.body_limit) {
            return Err(ApiError::PayloadTooLarge);
        }
        let read = axum::body::to_bytes(req.into_body(), state.body_limit);
        let bytes = tokio::time::timeout(state.limits.body_read_timeout, read)
            .await
            .map_err(|_| ApiError::BodyTimeout)?
            .map_err(|_| ApiError::PayloadTooLarge)?;
        crate::strict_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| match e {
                crate::strict_json::StrictJsonError::Syntax => ApiError::MalformedJson,
                crate::strict_json::StrictJsonError::Duplicate(p) => ApiError::DuplicateMember(p),
            })
    }
}

pub(crate) fn user_param(raw: &str) -> Result<crate::domain::UserId, ApiError> {
    crate::domain::UserId::parse(raw).ok_or(ApiError::InvalidPath("user"))
}

/// The request's origin (as the edge made it) with who acted: the caller, how it authenticated,
/// the end user it acted for (when it showed an assertion) and a gateway-made request id beside
/// the caller-chosen one.
pub(crate) fn acting(
    caller: &crate::auth::Caller,
    edge: &crate::domain::Origin,
    assertion: Option<&crate::domain::UserAssertion>,
) -> crate::domain::Origin {
    edge.acted_by(
        &caller.name,
        crate::domain::Actor {
            auth: caller.auth.label(),
            subject: caller.auth.subject().map(str::to_string),
            assertion_subject: assertion.map(|a| a.subject.clone()),
            assertion_jti: assertion.map(|a| a.jti.clone()),
            gateway_request_id: uuid::Uuid::new_v4().to_string(),
        },
    )
}

/// A path segment as a string; a segment axum cannot decode (not UTF-8) is a problem like any other.
pub struct PathParam(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| PathParam(p.0))
            .map_err(|_| ApiError::InvalidPath("a path segment"))
    }
}

/// Query parameters; a query that does not decode (a repeated or malformed parameter) is a problem.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for QueryParams<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|_| ApiError::InvalidQuery("the query string"))
    }
}
