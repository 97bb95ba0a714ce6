//! The public step error codes. Stable: callers branch on them, and rows store them by name.

use serde::Serialize;

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
