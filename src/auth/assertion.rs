//! End-user assertions (on-behalf-of): a caller configured with `require_user_assertion` must show,
//! for the user in the path, a `User-Assertion` JWT of its `user_assertion_issuer` (the company's
//! identity provider), short-lived and used once (PostgreSQL remembers each `jti`, so the rule holds
//! across replicas). A retry of the same change (same Idempotency-Key) may carry it again.

use super::{Caller, Callers};
use crate::domain::UserAssertion;
use crate::domain::UserId;
use crate::error::ApiError;
use axum::http::HeaderMap;
use serde_json::Value;

pub const HEADER: &str = "user-assertion";

/// What the request is, for the rule (`assert_reads`) and for replay (`idem_key`).
pub enum Use<'a> {
    Read,
    Change {
        idem_key: &'a str,
    },
    /// A dry run of a change: checked as the change would be, with the Idempotency-Key it would
    /// carry if one was sent, but its jti is not claimed, so the real change can still use it.
    DryRun {
        idem_key: Option<&'a str>,
    },
}

/// Checks the caller's assertion for `user`, if its policy wants one, and claims its `jti`.
/// Nothing is recorded elsewhere before this passes, so a refusal changes nothing.
pub async fn check(
    callers: &Callers,
    pool: &sqlx::PgPool,
    caller: &Caller,
    headers: &HeaderMap,
    user: &UserId,
    usage: Use<'_>,
) -> Result<Option<UserAssertion>, ApiError> {
    let Some(policy) = &caller.assertion else {
        return Ok(None);
    };
    if matches!(usage, Use::Read) && !policy.assert_reads {
        return Ok(None);
    }
    let token = headers
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::UserAssertionRequired)?;
    let verified = callers
        .issuers
        .verify(token, Some(&policy.issuer))
        .await
        .map_err(|e| ApiError::UserAssertionInvalid(e.to_string()))?;
    let invalid = |why: &str| ApiError::UserAssertionInvalid(why.to_string());
    let number = |name: &str| verified.claims.get(name).and_then(Value::as_i64);
    let iat = number("iat").ok_or_else(|| invalid("the assertion lacks a numeric `iat` claim"))?;
    let exp = number("exp").ok_or_else(|| invalid("the assertion lacks a numeric `exp` claim"))?;
    if exp - iat > policy.max_age_s as i64 {
        return Err(ApiError::UserAssertionInvalid(format!(
            "the assertion lives longer than max_assertion_age_s ({} s)",
            policy.max_age_s
        )));
    }
    let now = chrono::Utc::now().timestamp();
    if iat > now + 60 {
        return Err(invalid("the assertion was issued in the future (iat)"));
    }
    let jti = verified
        .claims
        .get("jti")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or_else(|| invalid("the assertion lacks a `jti` claim"))?
        .to_string();
    let subject = verified
        .claims
        .get(&policy.user_claim)
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::UserAssertionInvalid(format!(
                "the assertion lacks the `{}` claim",
                policy.user_claim
            ))
        })?;
    if subject != user.as_str() {
        return Err(ApiError::UserAssertionMismatch);
    }
    let assertion = UserAssertion {
        issuer: verified.issuer,
        subject: subject.to_string(),
        jti,
        expires_at: chrono::DateTime::from_timestamp(exp, 0)
            .ok_or_else(|| invalid("the assertion's `exp` is out of range"))?,
    };
    let (idem_key, claim) = match usage {
        Use::Read => (None, true),
        Use::Change { idem_key } => (Some(idem_key), true),
        Use::DryRun { idem_key } => (idem_key, false),
    };
    let caller_name = caller.name.as_str();
    let fresh = if claim {
        crate::store::assertions::claim(pool, &assertion, caller_name, user, idem_key).await?
    } else {
        crate::store::assertions::would_claim(pool, &assertion, caller_name, user, idem_key).await?
    };
    if !fresh {
        return Err(ApiError::UserAssertionReplayed);
    }
    Ok(Some(assertion))
}
