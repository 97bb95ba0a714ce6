//! A failed step attempt and the public step error codes. Stable: callers branch on them, and rows store them by name.

use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepErrorCode {
    UpstreamRejected,
    UpstreamNotFound,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamUnavailable,
    UpstreamTimeout,
    UpstreamBadResponse,
}

impl StepErrorCode {
    pub const ALL: [StepErrorCode; 7] = [
        Self::UpstreamRejected,
        Self::UpstreamNotFound,
        Self::UpstreamAuthFailed,
        Self::UpstreamRateLimited,
        Self::UpstreamUnavailable,
        Self::UpstreamTimeout,
        Self::UpstreamBadResponse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpstreamRejected => "upstream_rejected",
            Self::UpstreamNotFound => "upstream_not_found",
            Self::UpstreamAuthFailed => "upstream_auth_failed",
            Self::UpstreamRateLimited => "upstream_rate_limited",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamBadResponse => "upstream_bad_response",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

super::sql_text::text_type!(
    StepErrorCode,
    |c| c.as_str(),
    StepErrorCode::parse,
    "step error code"
);

/// A failed step attempt, already normalized. `message` is written by us, never copied from the
/// upstream (its text can carry PII).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    pub code: StepErrorCode,
    pub retryable: bool,
    /// The write may have taken effect upstream (timeout after sending, 2xx with a body we cannot
    /// trust): the step is `unknown` until the state is read back.
    pub outcome_unknown: bool,
    pub upstream_status: Option<u16>,
    pub upstream_code: Option<String>,
    pub message: String,
    pub retry_after: Option<Duration>,
}
