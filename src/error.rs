//! The error vocabulary: every error the service answers with is an `ApiError`, whose status,
//! stable `code`, title and detail are decided in one match (`parts`). Rendering it as problem+json
//! is the HTTP edge's job (`routes::problem`).

use crate::changes::policy::Failure;
use crate::domain::ChangeView;
use crate::domain::FieldError;
use axum::http::StatusCode;
use std::time::Duration;

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

/// The problem of a failed change, whose status and code
/// [`crate::changes::policy::patch_answer`] chose.
fn change_failure(
    change: &ChangeView,
    failure: Failure,
) -> (StatusCode, &'static str, &'static str, String) {
    let applied = change
        .steps
        .iter()
        .filter(|s| s.status == crate::domain::StepStatus::Applied)
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
    /// Status, `code`, title and detail: the whole public meaning of the error.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str, String) {
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

    pub fn retry_after(&self) -> Option<Duration> {
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
