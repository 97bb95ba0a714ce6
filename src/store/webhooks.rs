//! `webhook_events` (the outbox the settle statement writes), `webhook_attempts` and
//! `webhook_receivers`. A replica claims an event for one attempt (a lease in `claimed_until`,
//! taken with FOR UPDATE SKIP LOCKED so replicas never claim the same event), sends it with no
//! transaction open, and records the attempt under the attempt number it claimed: a replica whose
//! claim ran out (and was taken over) changes nothing of the event.

use crate::audit::{self, AuditEvent};
use crate::domain::UserId;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// An event claimed for one attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: Uuid,
    pub caller: String,
    pub event_type: String,
    pub body: String,
    /// This attempt's number (1 for the first).
    pub attempt: i32,
    /// Its number within the retry window (1 for the first; an operator's redelivery starts a
    /// new window), which sets the backoff after it.
    pub retry: i32,
}

/// Claims up to `limit` due events of `callers` (those with a webhook) whose receivers are neither
/// paused nor waiting for their probe, oldest due first, and at most `per_receiver` in flight at
/// one receiver (counting every replica's live claims), so one receiver's backlog cannot take
/// every slot. A paused receiver's backlog is not read at all; an open one's at most
/// `per_receiver` rows deep.
pub async fn claim_due(
    pool: &PgPool,
    owner: &str,
    callers: &[String],
    limit: i64,
    claim_for: Duration,
    pause_after: i32,
    per_receiver: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    // `picked` repeats the due and unclaimed conditions: when a row it locks was changed by a
    // claim that committed after this statement's snapshot, Postgres re-checks the new version
    // against `picked`'s own conditions only.
    sqlx::query_file_as!(
        Claimed,
        "src/store/sql/webhook_claim_due.sql",
        owner,
        limit,
        claim_for.as_secs_f64(),
        pause_after,
        callers,
        per_receiver,
    )
    .fetch_all(pool)
    .await
}

/// For each receiver whose pause is over, takes its one probe (re-pausing it for every other
/// replica meanwhile) and claims its oldest due event for that probe. A receiver with nothing due
/// is left as it is until something is.
pub async fn claim_probes(
    pool: &PgPool,
    owner: &str,
    callers: &[String],
    claim_for: Duration,
    pause_after: i32,
    pause: Duration,
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_file_as!(
        Claimed,
        "src/store/sql/webhook_claim_probes.sql",
        owner,
        claim_for.as_secs_f64(),
        pause_after,
        pause.as_secs_f64(),
        callers,
    )
    .fetch_all(pool)
    .await
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    pub event: &'a Claimed,
    pub replica: &'a str,
    pub started_at: DateTime<Utc>,
    pub took: Duration,
    pub status_code: Option<u16>,
    /// `timeout`, `connect`, `broken`, `redirect` or `status` (a non-2xx answer); `None` on
    /// success.
    pub error: Option<&'static str>,
    /// The wait before the next attempt if this one failed.
    pub retry_in: Duration,
    pub max_age: Duration,
    pub pause_after: i32,
    pub pause: Duration,
}

/// Records an attempt: the attempt row always (it went out), the event's new state only under the
/// claim it was made with, and the receiver's health. Returns the event's new status (`delivered`,
/// `pending` or `failed`), or `None` when the claim had been taken over.
pub async fn record_attempt(pool: &PgPool, a: &Attempt<'_>) -> Result<Option<String>, sqlx::Error> {
    let ok = a.error.is_none();
    sqlx::query_file_scalar!(
        "src/store/sql/webhook_record_attempt.sql",
        a.event.id,
        a.event.attempt,
        ok,
        a.replica,
        a.started_at,
        a.took.as_millis().min(i32::MAX as u128) as i32,
        a.status_code.map(i32::from),
        a.retry_in.as_secs_f64(),
        a.max_age.as_secs_f64(),
        a.error,
        a.event.caller,
        a.pause_after,
        a.pause.as_secs_f64(),
    )
    .fetch_one(pool)
    .await
}

/// Marks failed the pending events whose retry window closed and that no attempt will come to:
/// those whose receiver is paused (or waits for its probe), and those whose last attempt was
/// scheduled before the window's end. The last capped retry, due exactly at the window's end, goes
/// out (its record then marks it failed if it fails). Returns how many.
pub async fn expire(
    pool: &PgPool,
    max_age: Duration,
    pause_after: i32,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "update webhook_events e set status = 'failed', claimed_by = null, claimed_until = null
          where e.status = 'pending' and e.window_start + make_interval(secs => $1) <= now()
            and (e.claimed_until is null or e.claimed_until < now())
            and (e.next_attempt_at < e.window_start + make_interval(secs => $1)
                 or exists (select 1 from webhook_receivers r
                             where r.caller = e.caller
                               and (r.paused_until > now() or r.failures >= $2)))",
        max_age.as_secs_f64(),
        pause_after,
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// What the metrics scrape shows of the outbox.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    pub pending: i64,
    /// Age of the oldest event not yet delivered (a paused receiver's included).
    pub oldest_age: f64,
    /// How long the most overdue event of a receiver that is not paused has waited past its
    /// due time without being claimed: near 0 while dispatchers run.
    pub oldest_overdue: f64,
    pub paused: i64,
}

/// The outbox's backlog, for the metrics scrape.
pub async fn backlog(pool: &PgPool) -> Result<Backlog, sqlx::Error> {
    let r = sqlx::query_file!("src/store/sql/webhook_backlog.sql")
        .fetch_one(pool)
        .await?;
    Ok(Backlog {
        pending: r.pending,
        oldest_age: r.oldest_age.max(0.0),
        oldest_overdue: r.oldest_overdue.max(0.0),
        paused: r.paused,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    pub attempt: i32,
    pub at: DateTime<Utc>,
    pub duration_ms: i32,
    pub status_code: Option<i32>,
    pub error: Option<String>,
}

/// One event as `GET /changes/{id}/deliveries` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryView {
    /// The `webhook-id` of every attempt.
    pub delivery_id: Uuid,
    pub change_id: Uuid,
    pub event_type: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
    /// When the next attempt is due (pending events only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub attempts: Vec<AttemptView>,
}

/// A change's events, oldest first, each with its attempts.
pub async fn list_for_change(
    pool: &PgPool,
    change_id: Uuid,
) -> Result<Vec<DeliveryView>, sqlx::Error> {
    let events = sqlx::query!(
        "select id, change_id, event_type, status, created_at, next_attempt_at, delivered_at
           from webhook_events where change_id = $1 order by created_at, id",
        change_id
    )
    .fetch_all(pool)
    .await?;
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let mut attempts = sqlx::query!(
        "select event_id, attempt_no, started_at, duration_ms, status_code, error
           from webhook_attempts where event_id = any($1) order by id",
        &ids
    )
    .fetch_all(pool)
    .await?;
    Ok(events
        .into_iter()
        .map(|e| DeliveryView {
            attempts: attempts
                .extract_if(.., |a| a.event_id == e.id)
                .map(|a| AttemptView {
                    attempt: a.attempt_no,
                    at: a.started_at,
                    duration_ms: a.duration_ms,
                    status_code: a.status_code,
                    error: a.error,
                })
                .collect(),
            next_attempt_at: (e.status == "pending").then_some(e.next_attempt_at),
            delivery_id: e.id,
            change_id: e.change_id,
            event_type: e.event_type,
            status: e.status,
            created_at: e.created_at,
            delivered_at: e.delivered_at,
        })
        .collect())
}

/// The change an event belongs to, that change's user, and the caller the event goes to.
pub struct Owner {
    pub change_id: Uuid,
    pub user: UserId,
    pub caller: String,
}

pub async fn owner(pool: &PgPool, id: Uuid) -> Result<Option<Owner>, sqlx::Error> {
    let r = sqlx::query!(
        "select e.change_id, c.user_id, e.caller from webhook_events e
           join changes c on c.id = e.change_id
          where e.id = $1",
        id
    )
    .fetch_optional(pool)
    .await?;
    r.map(|r| {
        Ok(Owner {
            change_id: r.change_id,
            user: super::recorded_user(&r.user_id)?,
            caller: r.caller,
        })
    })
    .transpose()
}

pub enum Redeliver {
    Scheduled,
    NotFound,
    /// An attempt is on its way right now.
    InFlight,
}

/// An operator's redelivery: the event (same `webhook-id`, same body) is due now with a fresh
/// retry window whose backoff starts over (attempt numbers go on), and its receiver's pause is
/// lifted, so the receiver's next attempt (its probe, if it was paused) comes at once; with the
/// audit event, in one transaction.
pub async fn redeliver(
    pool: &PgPool,
    id: Uuid,
    event: &AuditEvent<'_>,
) -> Result<Redeliver, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query!(
        r#"select caller, (claimed_until is not null and claimed_until >= now()) as "in_flight!"
             from webhook_events where id = $1 for update"#,
        id
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(Redeliver::NotFound);
    };
    if row.in_flight {
        return Ok(Redeliver::InFlight);
    }
    sqlx::query!(
        "update webhook_events
            set status = 'pending', delivered_at = null, next_attempt_at = now(), window_start = now(),
                retry_from = attempts, claimed_by = null, claimed_until = null
          where id = $1",
        id
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "update webhook_receivers set paused_until = null, updated_at = now() where caller = $1",
        row.caller
    )
    .execute(&mut *tx)
    .await?;
    audit::insert(&mut *tx, event).await?;
    tx.commit().await?;
    Ok(Redeliver::Scheduled)
}

/// One event as the deliveries list shows it.
pub async fn load(pool: &PgPool, id: Uuid) -> Result<Option<DeliveryView>, sqlx::Error> {
    let Some(o) = owner(pool, id).await? else {
        return Ok(None);
    };
    Ok(list_for_change(pool, o.change_id)
        .await?
        .into_iter()
        .find(|d| d.delivery_id == id))
}
