//! `webhook_events` (the outbox the settle statement writes), `webhook_attempts` and
//! `webhook_receivers`. A replica claims an event for one attempt (a lease in `claimed_until`,
//! taken with FOR UPDATE SKIP LOCKED so replicas never claim the same event), sends it with no
//! transaction open, and records the attempt under the attempt number it claimed: a replica whose
//! claim ran out (and was taken over) changes nothing of the event.

use crate::audit::{self, AuditEvent};
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
}

/// Claims up to `limit` due events of `callers` (those with a webhook) whose receivers are neither
/// paused nor waiting for their probe, oldest due first.
pub async fn claim_due(
    pool: &PgPool,
    owner: &str,
    callers: &[String],
    limit: i64,
    claim_for: Duration,
    pause_after: i32,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"with due as (
             select e.id from webhook_events e
              where e.status = 'pending' and e.next_attempt_at <= now()
                and (e.claimed_until is null or e.claimed_until < now())
                and e.caller = any($5)
                and not exists (select 1 from webhook_receivers r
                                 where r.caller = e.caller
                                   and (r.paused_until > now() or r.failures >= $4))
              order by e.next_attempt_at
              limit $2
                for update of e skip locked)
           update webhook_events e
              set attempts = e.attempts + 1, claimed_by = $1,
                  claimed_until = now() + make_interval(secs => $3)
             from due
            where e.id = due.id
        returning e.id, e.caller, e.event_type, e.body, e.attempts"#,
        owner,
        limit,
        claim_for.as_secs_f64(),
        pause_after,
        callers,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Claimed {
            id: r.id,
            caller: r.caller,
            event_type: r.event_type,
            body: r.body,
            attempt: r.attempts,
        })
        .collect())
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
    let rows = sqlx::query!(
        r#"with probing as (
             update webhook_receivers r set paused_until = now() + make_interval(secs => $4),
                    updated_at = now()
              where r.failures >= $3 and (r.paused_until is null or r.paused_until <= now())
                and r.caller = any($5)
                and exists (select 1 from webhook_events e
                             where e.caller = r.caller and e.status = 'pending'
                               and e.next_attempt_at <= now()
                               and (e.claimed_until is null or e.claimed_until < now()))
          returning r.caller
           ),
           due as (
             select distinct on (e.caller) e.id
               from webhook_events e join probing p on p.caller = e.caller
              where e.status = 'pending' and e.next_attempt_at <= now()
                and (e.claimed_until is null or e.claimed_until < now())
              order by e.caller, e.next_attempt_at
           ),
           picked as (
             select e.id from webhook_events e where e.id in (select id from due)
                for update of e skip locked
           )
           update webhook_events e
              set attempts = e.attempts + 1, claimed_by = $1,
                  claimed_until = now() + make_interval(secs => $2)
             from picked
            where e.id = picked.id
        returning e.id, e.caller, e.event_type, e.body, e.attempts"#,
        owner,
        claim_for.as_secs_f64(),
        pause_after,
        pause.as_secs_f64(),
        callers,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Claimed {
            id: r.id,
            caller: r.caller,
            event_type: r.event_type,
            body: r.body,
            attempt: r.attempts,
        })
        .collect())
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
    sqlx::query_scalar!(
        r#"with ev as (
             update webhook_events e
                set status = case when $3 then 'delivered'
                                  when now() >= e.window_start + make_interval(secs => $9) then 'failed'
                                  else 'pending' end,
                    delivered_at = case when $3 then now() end,
                    next_attempt_at = case when $3 then e.next_attempt_at
                                           else least(now() + make_interval(secs => $8),
                                                      e.window_start + make_interval(secs => $9)) end,
                    claimed_by = null, claimed_until = null
              where e.id = $1 and e.attempts = $2 and e.claimed_by = $4 and e.status = 'pending'
          returning e.id, e.status, e.next_attempt_at
           ),
           att as (
             insert into webhook_attempts (event_id, attempt_no, started_at, duration_ms, status_code,
                                           error, replica, next_attempt_at)
             select $1, $2, $5, $6, $7, $10, $4,
                    (select next_attempt_at from ev where status = 'pending')
             returning 1
           ),
           rcv as (
             insert into webhook_receivers as r (caller, failures, paused_until)
             values ($11, case when $3 then 0 else 1 end,
                     case when not $3 and 1 >= $12 then now() + make_interval(secs => $13) end)
             on conflict (caller) do update
                set failures = case when $3 then 0 else r.failures + 1 end,
                    paused_until = case when $3 then null
                                        when r.failures + 1 >= $12 then now() + make_interval(secs => $13)
                                        else r.paused_until end,
                    updated_at = now()
             returning 1
           )
           select (select status from ev) as status"#,
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

/// Marks failed the pending events whose retry window closed without an attempt (their receiver
/// was paused); returns how many.
pub async fn expire(pool: &PgPool, max_age: Duration) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "update webhook_events set status = 'failed', claimed_by = null, claimed_until = null
          where status = 'pending' and window_start + make_interval(secs => $1) <= now()
            and (claimed_until is null or claimed_until < now())",
        max_age.as_secs_f64()
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// Pending events and the oldest one's age, for the metrics scrape.
pub async fn backlog(pool: &PgPool) -> Result<(i64, f64, i64), sqlx::Error> {
    let r = sqlx::query!(
        r#"select count(*) as "pending!",
                  coalesce(extract(epoch from now() - min(created_at)), 0)::float8 as "oldest_age!",
                  (select count(*) from webhook_receivers where paused_until > now()) as "paused!"
             from webhook_events where status = 'pending'"#
    )
    .fetch_one(pool)
    .await?;
    Ok((r.pending, r.oldest_age.max(0.0), r.paused))
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

/// The change (user and caller) an event belongs to.
pub async fn owner(pool: &PgPool, id: Uuid) -> Result<Option<(Uuid, String)>, sqlx::Error> {
    let r = sqlx::query!(
        "select e.change_id, c.user_id from webhook_events e join changes c on c.id = e.change_id
          where e.id = $1",
        id
    )
    .fetch_optional(pool)
    .await?;
    Ok(r.map(|r| (r.change_id, r.user_id)))
}

pub enum Redeliver {
    Scheduled,
    NotFound,
    /// An attempt is on its way right now.
    InFlight,
}

/// An operator's redelivery: the event (same `webhook-id`, same body) is due now with a fresh
/// retry window, and its receiver's pause is lifted so this is its probe; with the audit event,
/// in one transaction.
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
                claimed_by = null, claimed_until = null
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
    let Some((change_id, _)) = owner(pool, id).await? else {
        return Ok(None);
    };
    Ok(list_for_change(pool, change_id)
        .await?
        .into_iter()
        .find(|d| d.delivery_id == id))
}
