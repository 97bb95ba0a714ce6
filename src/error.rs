//! The one public error schema: RFC 9457 problem details with a stable `code`. Every error the
//! service emits goes through `ApiError`, whose status and code are decided in one match.

use crate::changes::model::ChangeView;
use crate::changes::policy::Failure;
use crate::domain::FieldError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::time::Duration;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("caller lacks scope {0}")]
    Forbidden(&'static str),
    #[error("no route")]
    RouteNotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("unknown user")]
    UserNotFound,
    #[error("unknown change")]
    ChangeNotFound,
    #[error("invalid path parameter {0}")]
    InvalidPath(&'static str),
    #[error("invalid query parameter {0}")]
    InvalidQuery(&'static str),
    #[error("malformed JSON")]
    MalformedJson,
    #[error("duplicate JSON member")]
    DuplicateMember(String),
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("body too large")]
    PayloadTooLarge,
    #[error("validation failed ({} errors)", .0.len())]
    Validation(Vec<FieldError>),
    #[error("the user lacks a link the change needs")]
    MissingLink(Vec<FieldError>),
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(String),
    #[error("Idempotency-Key header missing")]
    IdempotencyKeyMissing,
    #[error("Idempotency-Key header malformed")]
    IdempotencyKeyMalformed,
    #[error("Idempotency-Key reused with another request")]
    IdempotencyKeyReused,
    #[error("Idempotency-Key request still in flight")]
    IdempotencyKeyInFlight,
    #[error("change cannot be retried: {0}")]
    RetryConflict(&'static str),
    #[error("unknown webhook delivery")]
    DeliveryNotFound,
    #[error("webhook delivery attempt in flight")]
    DeliveryInFlight,
    #[error("the delivery's caller has no webhook")]
    DeliveryNoWebhook,
    #[error("the change did not fully apply")]
    ChangeFailed(Box<ChangeView>, Failure),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("overloaded: in-flight bound reached")]
    Overloaded,
    #[error("caller over its rate limit")]
    RateLimited(Duration),
    #[error("the user has too many unfinished changes")]
    TooManyPendingChanges,
    #[error("request body not received within server.body_read_timeout_ms")]
    BodyTimeout,
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("credentials refused: {0}")]
    UnauthorizedBecause(String),
    #[error("provider objects linked to another user")]
    LinkConflict(Vec<FieldError>),
    #[error("User-Assertion header missing")]
    UserAssertionRequired,
    #[error("User-Assertion refused: {0}")]
    UserAssertionInvalid(String),
    #[error("User-Assertion is for another user")]
    UserAssertionMismatch,
    #[error("User-Assertion jti already used")]
    UserAssertionReplayed,
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        crate::telemetry::metrics::note_db_error(&e);
        if crate::store::is_unavailable(&e) {
            ApiError::DatabaseUnavailable(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

/// How a change (or its dry run) that could not be recorded answers.
impl From<crate::changes::SubmitError> for ApiError {
    fn from(e: crate::changes::SubmitError) -> Self {
        use crate::changes::SubmitError;
        match e {
            SubmitError::UserNotFound => ApiError::UserNotFound,
            SubmitError::MissingLink(errors) => ApiError::MissingLink(errors),
            SubmitError::KeyReused => ApiError::IdempotencyKeyReused,
            SubmitError::KeyInFlight => ApiError::IdempotencyKeyInFlight,
            SubmitError::TooManyPending => ApiError::TooManyPendingChanges,
            SubmitError::Db(e) => ApiError::from(e),
            SubmitError::Unavailable(e) => ApiError::DatabaseUnavailable(e),
            SubmitError::Internal(e) => ApiError::Internal(e),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    pub code: &'static str,
    pub request_id: String,
    /// The W3C trace id the request's spans are exported under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_id: Option<uuid::Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_status: Option<crate::changes::model::ChangeStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<crate::changes::model::StepView>>,
    #[serde(skip)]
    pub location: Option<String>,
}

/// The problem of a failed change, whose status and code
/// [`crate::changes::policy::patch_answer`] chose.
fn change_failure(
    change: &ChangeView,
    failure: Failure,
) -> (StatusCode, &'static str, &'static str, String) {
    let applied = change
        .steps
        .iter()
        .filter(|s| s.status == crate::changes::model::StepStatus::Applied)
        .count();
    let summary = format!(
        "{applied} of {} steps applied; see steps[] for each provider's outcome",
        change.steps.len()
    );
    let title = match failure {
        Failure::Refused(_) => "An upstream refused the change",
        Failure::TimedOut => "An upstream timed out",
        Failure::Upstream(_) => "An upstream failed",
    };
    let status = StatusCode::from_u16(failure.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    (status, failure.code(), title, summary)
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str, String) {
        use ApiError::*;
        match self {
            Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
                "send Authorization: Bearer <token> with a token configured in auth.callers".into(),
            ),
            Forbidden(scope) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "Missing scope",
                format!("the caller lacks the `{scope}` scope"),
            ),
            RouteNotFound => (
                StatusCode::NOT_FOUND,
                "route_not_found",
                "No such route",
                "see openapi.yaml for the routes this service serves".into(),
            ),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
                "this route does not accept that method".into(),
            ),
            UserNotFound => (
                StatusCode::NOT_FOUND,
                "user_not_found",
                "Unknown user",
                "the user has no provider links; create them with PUT /profile/{user}/links".into(),
            ),
            ChangeNotFound => (
                StatusCode::NOT_FOUND,
                "change_not_found",
                "Unknown change",
                "no change has this id".into(),
            ),
            InvalidPath(what) => (
                StatusCode::BAD_REQUEST,
                "invalid_path_parameter",
                "Invalid path parameter",
                format!("{what} is not valid"),
            ),
            InvalidQuery(what) => (
                StatusCode::BAD_REQUEST,
                "invalid_query_parameter",
                "Invalid query parameter",
                format!("{what} is not valid"),
            ),
            MalformedJson => (
                StatusCode::BAD_REQUEST,
                "malformed_json",
                "Malformed JSON",
                "the body is not valid JSON".into(),
            ),
            DuplicateMember(_) => (
                StatusCode::BAD_REQUEST,
                "malformed_json",
                "Malformed JSON",
                "a member name appears twice in one object; see errors[]".into(),
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
                "send Content-Type: application/json".into(),
            ),
            PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Body too large",
                "the body exceeds server.body_limit_bytes".into(),
            ),
            Validation(errors) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "Invalid request",
                format!("{} field(s) are invalid; see errors[]", errors.len()),
            ),
            MissingLink(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "missing_link",
                "Missing provider link",
                "the change needs a provider link the user does not have; see errors[]".into(),
            ),
            DatabaseUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "Cannot record the change",
                "the change store is unavailable; nothing was sent to any provider; retry later"
                    .into(),
            ),
            IdempotencyKeyMissing => (
                StatusCode::BAD_REQUEST,
                "idempotency_key_missing",
                "Idempotency-Key required",
                "send an Idempotency-Key header (16 to 255 of A-Z a-z 0-9 _ -), the same on every retry".into(),
            ),
            IdempotencyKeyMalformed => (
                StatusCode::BAD_REQUEST,
                "idempotency_key_malformed",
                "Invalid Idempotency-Key",
                "the Idempotency-Key must be 16 to 255 of A-Z a-z 0-9 _ -, optionally in double quotes".into(),
            ),
            IdempotencyKeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "Idempotency-Key reused",
                "this Idempotency-Key was used with a different request; use a new key for a new change".into(),
            ),
            IdempotencyKeyInFlight => (
                StatusCode::CONFLICT,
                "idempotency_key_in_flight",
                "Request in progress",
                "the first request with this Idempotency-Key is still being processed; retry after Retry-After".into(),
            ),
            RetryConflict(why) => (
                StatusCode::CONFLICT,
                "change_not_retryable",
                "Change cannot be retried",
                (*why).into(),
            ),
            DeliveryNotFound => (
                StatusCode::NOT_FOUND,
                "delivery_not_found",
                "Unknown webhook delivery",
                "no webhook delivery has this id".into(),
            ),
            DeliveryInFlight => (
                StatusCode::CONFLICT,
                "delivery_in_progress",
                "Delivery attempt in progress",
                "an attempt of this delivery is on its way right now; see GET /changes/{change_id}/deliveries and retry after it".into(),
            ),
            DeliveryNoWebhook => (
                StatusCode::CONFLICT,
                "delivery_no_webhook",
                "Caller has no webhook",
                "the caller this delivery goes to has no webhook_url configured now; nothing would be sent".into(),
            ),
            ChangeFailed(change, failure) => change_failure(change, *failure),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Internal error",
                "an unexpected error occurred; quote request_id when reporting it".into(),
            ),
            Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "Overloaded",
                "this replica is serving as many requests as it may; nothing was done; retry after Retry-After".into(),
            ),
            RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Rate limit exceeded",
                "the caller exceeded its request rate (see the RateLimit-Policy header); nothing was done; retry after Retry-After".into(),
            ),
            BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "Request body too slow",
                "the body did not arrive within server.body_read_timeout_ms; nothing was done".into(),
            ),
            TooManyPendingChanges => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_pending_changes",
                "Too many unfinished changes",
                "the user already has the most unfinished changes allowed (changes.max_pending_per_user); nothing was recorded; retry after Retry-After".into(),
            ),
            NotReady(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "Not ready",
                reason.clone(),
            ),
            UnauthorizedBecause(why) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
                why.clone(),
            ),
            LinkConflict(_) => (
                StatusCode::CONFLICT,
                "link_conflict",
                "Provider object linked to another user",
                "a provider object in the links belongs to another user; nothing was changed; see errors[]".into(),
            ),
            UserAssertionRequired => (
                StatusCode::UNAUTHORIZED,
                "user_assertion_required",
                "User assertion required",
                "this caller must send a User-Assertion header: a JWT from its user_assertion_issuer for the user in the path".into(),
            ),
            UserAssertionInvalid(why) => (
                StatusCode::UNAUTHORIZED,
                "user_assertion_invalid",
                "Invalid user assertion",
                format!("the User-Assertion was refused: {why}"),
            ),
            UserAssertionMismatch => (
                StatusCode::FORBIDDEN,
                "user_assertion_mismatch",
                "User assertion for another user",
                "the User-Assertion names another user than the one in the path".into(),
            ),
            UserAssertionReplayed => (
                StatusCode::CONFLICT,
                "user_assertion_replayed",
                "User assertion already used",
                "this User-Assertion (its jti) was already used for another request; get a fresh one (a retry of the same change may reuse it with the same Idempotency-Key)".into(),
            ),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::DatabaseUnavailable(_) => Some(Duration::from_secs(2)),
            ApiError::IdempotencyKeyInFlight => Some(Duration::from_secs(1)),
            ApiError::Overloaded => Some(Duration::from_secs(1)),
            ApiError::RateLimited(d) => Some(*d),
            ApiError::TooManyPendingChanges => Some(Duration::from_secs(2)),
            ApiError::ChangeFailed(c, _) => c
                .steps
                .iter()
                .filter_map(|s| s.error.as_ref())
                .any(|e| e.retryable)
                .then_some(Duration::from_secs(5)),
            _ => None,
        }
    }

    pub fn code(&self) -> &'static str {
        self.parts().1
    }
}

/// Attached to every error response so the edge middleware logs it once, inside the request span.
#[derive(Debug, Clone)]
pub struct LoggedError {
    pub code: &'static str,
    pub status: u16,
    pub internal: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title, detail) = self.parts();
        let retry_after = self.retry_after();
        let internal = self.to_string();
        // The rest of a slow body may never come: the connection is not reused.
        let close = matches!(self, ApiError::BodyTimeout);
        let (errors, change) = match self {
            ApiError::DuplicateMember(pointer) => (
                vec![FieldError::new(
                    pointer,
                    "duplicate_member",
                    "this member appears more than once in its object",
                )],
                None,
            ),
            ApiError::Validation(e) | ApiError::MissingLink(e) | ApiError::LinkConflict(e) => {
                (e, None)
            }
            ApiError::ChangeFailed(c, _) => (Vec::new(), Some(c)),
            _ => (Vec::new(), None),
        };
        let problem = Problem {
            kind: format!("/problems/{code}"),
            title,
            status: status.as_u16(),
            detail,
            code,
            request_id: crate::telemetry::current_request_id(),
            trace_id: crate::telemetry::current_trace_id(),
            errors,
            change_id: change.as_ref().map(|c| c.change_id),
            change_status: change.as_ref().map(|c| c.status),
            location: change.as_ref().map(|c| c.location()),
            steps: change.map(|c| c.steps),
        };
        let mut response = problem_response(
            status,
            &problem,
            retry_after,
            LoggedError {
                code,
                status: status.as_u16(),
                internal,
            },
        );
        if close {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

fn problem_response(
    status: StatusCode,
    problem: &Problem,
    retry_after: Option<Duration>,
    logged: LoggedError,
) -> Response {
    let body = serde_json::to_vec(problem).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    if let Some(d) = retry_after
        && let Ok(v) = HeaderValue::from_str(&d.as_secs().max(1).to_string())
    {
        headers.insert(header::RETRY_AFTER, v);
    }
    if let Some(location) = &problem.location
        && let Ok(v) = HeaderValue::from_str(location)
    {
        headers.insert(header::LOCATION, v);
    }
    response.extensions_mut().insert(logged);
    response
}
