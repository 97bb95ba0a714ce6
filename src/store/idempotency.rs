//! `idempotency_keys`: which change a caller's key created, and whether its first request is still
//! being answered.

use sqlx::{PgPool, Postgres, Transaction};
use std::time::Duration;
use uuid::Uuid;

pub struct Existing {
    pub fingerprint: Vec<u8>,
    pub change_id: Uuid,
    pub in_flight: bool,
}

/// Looks the key up inside the transaction that would create the change. The caller holds the
/// user's row lock, so two requests with one key cannot both miss.
pub async fn find(
    tx: &mut Transaction<'_, Postgres>,
    caller: &str,
    user: &str,
    key: &str,
) -> Result<Option<Existing>, sqlx::Error> {
    let row = sqlx::query!(
        r#"select k.fingerprint, k.change_id,
                  coalesce(k.in_flight_until > now() and c.status = 'pending', false) as "in_flight!"
             from idempotency_keys k join changes c on c.id = k.change_id
            where k.caller = $1 and k.user_id = $2 and k.idem_key = $3 and k.expires_at > now()"#,
        caller,
        user,
        key
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|r| Existing {
        fingerprint: r.fingerprint,
        change_id: r.change_id,
        in_flight: r.in_flight,
    }))
}

#[allow(clippy::too_many_arguments)]
pub async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    caller: &str,
    user: &str,
    key: &str,
    fingerprint: &[u8],
    change_id: Uuid,
    in_flight_for: Duration,
    retention: Duration,
) -> Result<(), sqlx::Error> {
    // An expired row for the same key may still be there until the reaper runs; it is replaced.
    sqlx::query!(
        "insert into idempotency_keys (caller, user_id, idem_key, fingerprint, change_id,
                                       in_flight_until, expires_at)
         values ($1, $2, $3, $4, $5, now() + make_interval(secs => $6), now() + make_interval(secs => $7))
         on conflict (caller, user_id, idem_key) do update
            set fingerprint = excluded.fingerprint, change_id = excluded.change_id,
                in_flight_until = excluded.in_flight_until, created_at = now(),
                expires_at = excluded.expires_at
          where idempotency_keys.expires_at <= now()",
        caller,
        user,
        key,
        fingerprint,
        change_id,
        in_flight_for.as_secs_f64(),
        retention.as_secs_f64()
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
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

/// Deletes keys past their retention, a batch at a time.
pub async fn reap(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "delete from idempotency_keys
          where ctid in (select ctid from idempotency_keys where expires_at < now() limit 1000)"
    )
    .execute(pool)
    .await?
    .rows_affected())
}
