//! Idempotency keys: which change a caller's key created, and whether its first request is still
//! being answered. A key lives in the row of its change (`changes.idem_*`, unique per caller and
//! user while it is live); record_changes.sql writes it with the change.

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
        r#"select c.idem_fingerprint as "fingerprint!", c.id as change_id,
                  coalesce(c.idem_in_flight_until > now() and c.status = 'pending', false) as "in_flight!"
             from changes c
            where c.caller = $1 and c.user_id = $2 and c.idem_key = $3
              and (c.idem_expires_at > now() or c.status = 'pending')"#,
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
        "update changes set idem_in_flight_until = null
          where id = $1 and idem_in_flight_until is not null",
        change_id
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Releases the keys past their retention whose change is finished (an unfinished change keeps its
/// key: the record treats it as live), 1,000 at a time (short transactions) until none is left.
pub async fn reap(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let n = sqlx::query!(
            "update changes
                set idem_key = null, idem_fingerprint = null, idem_in_flight_until = null,
                    idem_expires_at = null
              where id in (select id from changes
                            where idem_key is not null and idem_expires_at < now()
                              and status <> 'pending'
                            limit 1000)
                -- Again on the row the update locks: a change reopened meanwhile keeps its key.
                and idem_key is not null and idem_expires_at < now() and status <> 'pending'"
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
