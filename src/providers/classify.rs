//! The one mapping from "what the upstream did" to the public step error. Adapters only extract
//! facts from their wire format (`ErrorFacts`); the judgement lives here, so all three providers
//! are judged by the same rules: the HTTP status first, the body's hints second.

use super::http::TransportError;
use super::{StepError, StepErrorCode};
use crate::domain::Target;
use std::time::Duration;

/// What an adapter could read from a failed answer's body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFacts {
    /// The body was the provider's documented error envelope (JSON of the right shape).
    pub envelope: bool,
    /// The provider's own code, already reduced to a safe token.
    pub upstream_code: Option<String>,
    /// The body says the object does not exist, whatever the status.
    pub not_found: bool,
    /// Names of our fields the upstream says are wrong (only names we know; never values).
    pub fields: Vec<&'static str>,
}

pub fn http_failure(
    target: Target,
    status: u16,
    retry_after: Option<Duration>,
    facts: ErrorFacts,
) -> StepError {
    use StepErrorCode::*;
    let t = target.as_str();
    let (code, retryable, unknown, message) = match status {
        300..=399 => (
            UpstreamBadResponse,
            false,
            false,
            format!("{t} answered with a redirect; check its base_url"),
        ),
        401 | 403 => (
            UpstreamAuthFailed,
            false,
            false,
            format!("{t} refused the gateway's credentials (HTTP {status})"),
        ),
        404 if !facts.envelope => (
            UpstreamBadResponse,
            false,
            false,
            format!("{t} answered 404 without its error body; check its base_url"),
        ),
        404 => (
            UpstreamNotFound,
            false,
            false,
            format!("{t} does not know the linked object; check the user's links"),
        ),
        408 => (
            UpstreamTimeout,
            true,
            true,
            format!("{t} timed out reading the request"),
        ),
        429 => (
            UpstreamRateLimited,
            true,
            false,
            format!("{t} is rate limiting the gateway"),
        ),
        400..=499 if facts.not_found => (
            UpstreamNotFound,
            false,
            false,
            format!("{t} does not know the linked object; check the user's links"),
        ),
        400..=499 => {
            let what = if facts.fields.is_empty() {
                String::new()
            } else {
                format!(": {}", facts.fields.join(", "))
            };
            (
                UpstreamRejected,
                false,
                false,
                format!("{t} rejected the change{what}"),
            )
        }
        504 => (
            UpstreamTimeout,
            true,
            true,
            format!("{t} timed out behind its gateway (HTTP 504)"),
        ),
        500..=599 => (
            UpstreamUnavailable,
            true,
            // A 5xx to a write may or may not have been applied; every step here is a "set", so a
            // resend converges either way.
            false,
            format!("{t} failed (HTTP {status})"),
        ),
        _ => (
            UpstreamBadResponse,
            false,
            true,
            format!("{t} answered with an unexpected HTTP {status}"),
        ),
    };
    StepError {
        code,
        retryable,
        outcome_unknown: unknown,
        upstream_status: Some(status),
        upstream_code: facts.upstream_code,
        message,
        retry_after: if code == UpstreamRateLimited {
            retry_after
        } else {
            None
        },
    }
}

pub fn transport_failure(target: Target, e: TransportError) -> StepError {
    let t = target.as_str();
    let (code, unknown, status, message) = match e {
        TransportError::Connect => (
            StepErrorCode::UpstreamUnavailable,
            false,
            None,
            format!("{t} could not be reached"),
        ),
        TransportError::Timeout => (
            StepErrorCode::UpstreamTimeout,
            true,
            None,
            format!("{t} did not answer in time"),
        ),
        TransportError::Broken { status } => (
            StepErrorCode::UpstreamUnavailable,
            true,
            status,
            format!("{t} broke the connection before answering fully"),
        ),
        // Unread, a 4xx still says the request was refused; any other answer may hide an
        // applied write, so the step is read back before anything is resent.
        TransportError::TooLarge { status } => (
            StepErrorCode::UpstreamBadResponse,
            !(400..500).contains(&status),
            Some(status),
            format!("{t} answered with a body larger than upstream.max_response_bytes"),
        ),
    };
    StepError {
        code,
        // Only an unreadable 4xx is final: the upstream refused, so there is nothing to read back.
        retryable: code != StepErrorCode::UpstreamBadResponse || unknown,
        outcome_unknown: unknown,
        upstream_status: status,
        upstream_code: None,
        message,
        retry_after: None,
    }
}

/// A 2xx whose body we cannot read or that contradicts what was sent: the write may have happened,
/// but the gateway cannot say it did.
pub fn bad_success(target: Target, status: u16, why: &str) -> StepError {
    StepError {
        code: StepErrorCode::UpstreamBadResponse,
        retryable: false,
        outcome_unknown: true,
        upstream_status: Some(status),
        upstream_code: None,
        message: format!("{} answered {status} but {why}", target.as_str()),
        retry_after: None,
    }
}

/// Upstream codes are open strings and sometimes free text; only a short token of safe characters
/// is kept, so nothing personal can ride along into responses or audit rows.
pub fn safe_code(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && !raw.eq_ignore_ascii_case("na")
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    ok.then(|| raw.to_string())
}

/// Free text that says "not found" in the ways the providers phrase it.
pub fn says_not_found(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "not found",
        "not_found",
        "does not exist",
        "doesn't exist",
        "not exist",
        "no such",
    ]
    .iter()
    .any(|p| t.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(status: u16, facts: ErrorFacts) -> (StepErrorCode, bool) {
        let e = http_failure(Target::RAZORPAY_UPI, status, None, facts);
        (e.code, e.retryable)
    }

    #[test]
    fn status_first_then_hints() {
        use StepErrorCode::*;
        let env = ErrorFacts {
            envelope: true,
            ..Default::default()
        };
        assert_eq!(code(400, env.clone()), (UpstreamRejected, false));
        assert_eq!(
            code(
                400,
                ErrorFacts {
                    not_found: true,
                    ..env.clone()
                }
            ),
            (UpstreamNotFound, false)
        );
        assert_eq!(
            code(
                401,
                ErrorFacts {
                    upstream_code: Some("BAD_REQUEST_ERROR".into()),
                    ..env.clone()
                }
            ),
            (UpstreamAuthFailed, false)
        );
        assert_eq!(code(403, env.clone()), (UpstreamAuthFailed, false));
        assert_eq!(code(404, env.clone()), (UpstreamNotFound, false));
        assert_eq!(
            code(404, ErrorFacts::default()),
            (UpstreamBadResponse, false)
        );
        assert_eq!(
            code(429, ErrorFacts::default()),
            (UpstreamRateLimited, true)
        );
        assert_eq!(code(500, env.clone()), (UpstreamUnavailable, true));
        assert_eq!(
            code(503, ErrorFacts::default()),
            (UpstreamUnavailable, true)
        );
        assert_eq!(code(504, ErrorFacts::default()), (UpstreamTimeout, true));
        assert_eq!(
            code(302, ErrorFacts::default()),
            (UpstreamBadResponse, false)
        );
    }

    #[test]
    fn codes_are_reduced_to_safe_tokens() {
        assert_eq!(
            safe_code("object_not_found").as_deref(),
            Some("object_not_found")
        );
        assert_eq!(safe_code("NA"), None);
        assert_eq!(safe_code("Mobile 9876543210 is invalid"), None);
        assert!(says_not_found("UPI number does not exist"));
        assert!(!says_not_found("invalid vpa"));
    }
}
