//! `user_assertion_jtis`: each end-user assertion's `jti`, kept until the assertion expires.

use crate::domain::{UserAssertion, UserId};
use sqlx::PgPool;

/// Claims the assertion's jti for this request. True when it is new (or expired and reused), or
/// when the same caller presents it again for the same user and Idempotency-Key (a retry).
pub async fn claim(
    pool: &PgPool,
    a: &UserAssertion,
    caller: &str,
    user: &UserId,
    idem_key: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query_file_scalar!(
        "src/store/sql/claim_assertion.sql",
        a.issuer,
        a.jti,
        caller,
        user.as_str(),
        idem_key,
        a.expires_at,
    )
    .fetch_one(pool)
    .await?;
    Ok(row)
}

/// What [`claim`] would answer now, without claiming (a dry run): one plain read, no row lock
/// and nothing written. The same rule as `claim`'s statement, case by case: no row is a new jti;
/// an expired row is claimed anew; a live row only by the same caller, user and key (a NULL key,
/// a read's, matches nothing). Keep the two together when either changes.
pub async fn would_claim(
    pool: &PgPool,
    a: &UserAssertion,
    caller: &str,
    user: &UserId,
    idem_key: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query_scalar!(
        r#"select coalesce(
                    (select expires_at < now()
                            or coalesce(caller = $3 and user_id = $4 and idem_key = $5, false)
                       from user_assertion_jtis where issuer = $1 and jti = $2),
                    true) as "ok!""#,
        a.issuer,
        a.jti,
        caller,
        user.as_str(),
        idem_key,
    )
    .fetch_one(pool)
    .await?;
    Ok(row)
}

/// Deletes jtis whose assertions have expired (they can no longer be replayed anyway).
pub async fn reap(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "delete from user_assertion_jtis where expires_at < now() - interval '5 minutes'"
    )
    .execute(pool)
    .await?
    .rows_affected())
}
