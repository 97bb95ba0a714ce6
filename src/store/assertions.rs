//! `user_assertion_jtis`: each end-user assertion's `jti`, kept until the assertion expires.

use crate::auth::assertion::UserAssertion;
use sqlx::PgPool;

/// Claims the assertion's jti for this request. True when it is new (or expired and reused), or
/// when the same caller presents it again for the same user and Idempotency-Key (a retry).
pub async fn claim(
    pool: &PgPool,
    a: &UserAssertion,
    caller: &str,
    user: &str,
    idem_key: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query_scalar!(
        r#"with claimed as (
             insert into user_assertion_jtis (issuer, jti, caller, user_id, idem_key, expires_at)
             values ($1, $2, $3, $4, $5, $6)
             on conflict (issuer, jti) do update
                set caller = excluded.caller, user_id = excluded.user_id,
                    idem_key = excluded.idem_key, expires_at = excluded.expires_at, first_used_at = now()
              where user_assertion_jtis.expires_at < now()
             returning true as ok
           )
           select coalesce(
                    (select ok from claimed),
                    (select caller = $3 and user_id = $4 and idem_key = $5
                       from user_assertion_jtis where issuer = $1 and jti = $2),
                    false) as "ok!""#,
        a.issuer,
        a.jti,
        caller,
        user,
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
    user: &str,
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
        user,
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
