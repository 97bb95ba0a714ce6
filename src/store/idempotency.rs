//! `idempotency_keys`: which change a caller's key created, and whether its first request is still
//! being answered.

use crate::domain::UserId;
use sqlx::PgPool;
use uuid::Uuid;

pub struct Existing {
    pub fingerprint: Vec<u8>,
    pub change_id: Uuid,
    pub in_flight: bool,
}

/// Looks a key up (after the record statement found it taken).
pub async fn find(
    pool: &PgPool,
    caller: &str,
    user: &UserId,
    key: &str,
) -> Result<Option<Existing>, sqlx::Error> {
    let row = sqlx::query!(
        r#"select k.fingerprint, k.change_id,
                  coalesce(k.in_flight_until > now() and c.status = 'pending', false) as "in_flight!"
             from idempotency_keys k join changes c on c.id = k.change_id
            where k.caller = $1 and k.user_id = $2 and k.idem_key = $3 and k.expires_at > now()"#,
        caller,
        user.as_str(),
        key
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| Existing {
        fingerprint: r.fingerprint,
        change_id: r.change_id,
        in_flight: r.in_flight,
    }))
}

/// The first request answered: duplicates now get the change's state instead of 409.
pub async fn answered(pool: &PgPool, change_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update idempotency_keys set in_flight_until = null where change_id = $1",
        change_id
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes keys past their retention, 1,000 at a time (short transactions) until none is left.
pub async fn reap(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let n = sqlx::query!(
            "delete from idempotency_keys
              where ctid in (select ctid from idempotency_keys where expires_at < now() limit 1000)"
        )
        .execute(pool)
        .await?
        .rows_affected();
        total += n;
        if n < 1000 {
            return Ok(total);
        }
    }
}
