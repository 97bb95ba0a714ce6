//! `changes`, each with its steps document (`changes.steps`, read through the `change_steps`
//! view): the unit of idempotency, recovery and audit. Every write after the first is fenced: it
//! names the lease generation (`fence`) it was made under, and a replica whose lease was taken
//! over writes nothing.

use crate::audit::{self, AuditEvent};
use crate::domain::StepErrorCode;
use crate::domain::change::UnknownStatus;
use crate::domain::{Actor, ChangeView, Origin, StepErrorView, StepView, Target, UserId};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// Postgres NOTIFY channel announcing "this user's change N is final" (payload `seq user_id`).
pub const FINAL_CHANNEL: &str = "profile_gateway_change_final";

/// Extends this replica's lease; false when the change was taken over or finished.
pub async fn renew_lease(
    pool: &PgPool,
    change_id: Uuid,
    fence: i64,
    owner: &str,
    lease: Duration,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query!(
        "update changes set lease_owner = $3, lease_expires_at = now() + make_interval(secs => $4)
          where id = $1 and fence = $2 and status = 'pending'",
        change_id,
        fence,
        owner,
        lease.as_secs_f64()
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// A waiting change's one statement per wake-up: extends its lease and says whether its turn has
/// come. `None` when the change was taken over or finished meanwhile.
pub async fn renew_and_check_turn(
    pool: &PgPool,
    change_id: Uuid,
    fence: i64,
    owner: &str,
    lease: Duration,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"update changes c set lease_owner = $3, lease_expires_at = now() + make_interval(secs => $4)
            where c.id = $1 and c.fence = $2 and c.status = 'pending'
        returning coalesce((select p.finished_seq >= c.user_seq - 1 from profile_links p
                             where p.user_id = c.user_id), true) as "turn!""#,
        change_id,
        fence,
        owner,
        lease.as_secs_f64()
    )
    .fetch_optional(pool)
    .await
}

/// Hands the change to the completers (of any replica) from `after` on: the retry of a step that
/// failed retryably is due then, and whoever claims it first drives it.
pub async fn park(
    pool: &PgPool,
    change_id: Uuid,
    fence: i64,
    after: Duration,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query!(
        "update changes set lease_owner = null, lease_expires_at = now() + make_interval(secs => $3)
          where id = $1 and fence = $2 and status = 'pending'",
        change_id,
        fence,
        after.as_secs_f64()
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Builds a `Claimed` from a `query!` record with the change's columns (each query has its own
/// record type, hence a macro rather than a function).
macro_rules! claimed {
    ($r:ident, $previous_owner:expr) => {
        Claimed {
            previous_owner: $previous_owner,
            id: $r.id,
            user_id: $r.user_id,
            user_seq: $r.user_seq,
            fence: $r.fence,
            fields: $r.fields,
            created_at: $r.created_at,
            origin: Origin {
                actor: recorded_actor($r.id, $r.actor),
                caller: $r.caller,
                request_id: $r.request_id,
                trace_id: $r.trace_id,
                caller_addr: $r.caller_addr,
            },
            payload_key_id: $r.payload_key_id,
            payload_enc: $r.payload_enc,
        }
    };
}

/// An actor as an event recorded it. An unreadable one (a corrupt or foreign row) is logged and
/// dropped: the events of the drive then carry none, as for a change recorded by an older gateway.
fn recorded_actor(change_id: Uuid, actor: Option<serde_json::Value>) -> Option<Actor> {
    Actor::from_json(&actor?)
        .map_err(|e| {
            tracing::warn!(%change_id, error = %e,
                "the actor recorded for this change is unreadable; the events of its resumption carry none");
        })
        .ok()
}

/// A change claimed for driving, with what is needed to resume it.
///
/// Who acted (`origin`): for a change the completer claims, the request or operator retry that set its current drive going, as the
/// latest of its hashed `change_requested` / `change_retried` events records it, never the
/// `changes` row, which the gateway's role may update. [`reopen`] returns the row's (and no
/// actor): the retry that reopens drives the change under its own context.
pub struct Claimed {
    pub id: Uuid,
    pub user_id: String,
    pub user_seq: i64,
    pub fence: i64,
    pub fields: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub origin: Origin,
    pub payload_key_id: Option<String>,
    pub payload_enc: Option<Vec<u8>>,
    /// Who drove it before: a replica that may have sent requests it never recorded.
    pub previous_owner: Option<String>,
}

/// Claims the oldest unfinished change whose lease ran out and whose turn it is, skipping rows
/// other replicas are claiming right now. Bumps the fence so the previous owner writes nothing.
pub async fn claim_expired(
    pool: &PgPool,
    owner: &str,
    lease: Duration,
) -> Result<Option<Claimed>, sqlx::Error> {
    // `w`: the latest request or retry event of the change. Its occurred_at is at least the
    // change's created_at (both are the database's now(): the request's in the very statement that
    // inserts the row, a retry's in a later transaction), which spares the probe of every older
    // monthly partition; the day of slack keeps a retry recorded just after the database clock
    // stepped back. An operator retry recorded by an older gateway kept its actor inside its
    // hashed values.
    let row = sqlx::query_file!(
        "src/store/sql/claim_expired.sql",
        owner,
        lease.as_secs_f64()
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| claimed!(r, r.previous_owner)))
}

pub enum Reopen {
    Reopened(Box<Claimed>),
    /// A later change of the user exists: re-applying this one would overwrite it.
    NotLatest,
    /// Not failed or partially applied, or its values were erased.
    NotRetryable,
    /// The sealed values do not open with this replica's keys.
    CannotOpen,
}

/// Re-opens a change that failed finally, for an operator retry: a new lease generation, every
/// step that did not apply back to pending with a fresh attempt count. Under the user's row lock,
/// so no new change can slip in between the "is it the latest?" check and the reopening; and only
/// if `can_open` accepts the sealed values, so a change that could not be driven is never reopened.
pub async fn reopen(
    pool: &PgPool,
    change_id: Uuid,
    owner: &str,
    lease: Duration,
    event: &AuditEvent<'_>,
    can_open: impl Fn(&str, &[u8]) -> bool,
) -> Result<Reopen, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let latest = sqlx::query!(
        "select c.user_seq, p.last_change_seq
           from changes c join profile_links p on p.user_id = c.user_id
          where c.id = $1
            for update of p",
        change_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    match latest {
        Some(l) if l.user_seq == l.last_change_seq => {}
        Some(_) => return Ok(Reopen::NotLatest),
        None => return Ok(Reopen::NotRetryable),
    }
    let row = sqlx::query!(
        r#"update changes c
              set status = 'pending', finished_at = null, lease_owner = $2,
                  lease_expires_at = now() + make_interval(secs => $3), fence = c.fence + 1,
                  payload_expires_at = null, updated_at = now(),
                  -- Every step not applied is attempted again from its first attempt; one whose
                  -- outcome is unknown is read back first.
                  steps = coalesce(
                      (select jsonb_object_agg(s.k, case when s.v ->> 'status' = 'applied' then s.v
                                                         else s.v || jsonb_build_object(
                                                                'status', case when s.v ->> 'status' = 'unknown'
                                                                               then 'unknown' else 'pending' end,
                                                                'attempts', 0) end)
                         from jsonb_each(c.steps) s(k, v)),
                      c.steps)
            where c.id = $1 and c.status in ('failed', 'partially_applied') and c.payload_enc is not null
        returning c.id, c.user_id, c.user_seq, c.fence, c.fields, c.created_at, c.caller, c.request_id,
                  c.trace_id, c.caller_addr, c.payload_key_id, c.payload_enc,
                  null::jsonb as actor"#,
        change_id,
        owner,
        lease.as_secs_f64()
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(r) = row else {
        return Ok(Reopen::NotRetryable);
    };
    let opens = matches!((&r.payload_key_id, &r.payload_enc), (Some(k), Some(p)) if can_open(k, p));
    if !opens {
        return Ok(Reopen::CannotOpen);
    }
    // The change is the user's latest (checked above, under the lock); its turn comes back to it.
    sqlx::query!(
        "update profile_links set finished_seq = least(finished_seq, $2::bigint - 1) where user_id = $1",
        r.user_id,
        r.user_seq
    )
    .execute(&mut *tx)
    .await?;
    audit::insert(&mut *tx, event).await?;
    tx.commit().await?;
    Ok(Reopen::Reopened(Box::new(claimed!(r, None))))
}

/// Erases sealed payloads of failed changes whose retry window closed.
pub async fn erase_expired_payloads(pool: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "update changes set payload_enc = null, payload_key_id = null, payload_expires_at = null
          where status <> 'pending' and payload_expires_at < now()"
    )
    .execute(pool)
    .await?
    .rows_affected())
}

pub async fn load(pool: &PgPool, change_id: Uuid) -> Result<Option<ChangeView>, sqlx::Error> {
    let Some(c) = sqlx::query!(
        "select id, user_id, user_seq, caller, status, fields, created_at, finished_at
           from changes where id = $1",
        change_id
    )
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let mut steps = load_steps(pool, &[change_id]).await?;
    Ok(Some(ChangeView {
        change_id: c.id,
        user: super::recorded_user(&c.user_id)?,
        seq: c.user_seq,
        caller: c.caller,
        status: status(&c.status)?,
        fields: c.fields,
        created_at: c.created_at,
        finished_at: c.finished_at,
        steps: steps.remove(&change_id).unwrap_or_default(),
    }))
}

/// A user's changes, newest first, `limit` at a time, before the sequence number `before_seq`.
pub async fn list_for_user(
    pool: &PgPool,
    user: &UserId,
    before_seq: Option<i64>,
    limit: i64,
) -> Result<Vec<ChangeView>, sqlx::Error> {
    let rows = sqlx::query!(
        "select id, user_id, user_seq, caller, status, fields, created_at, finished_at
           from changes
          where user_id = $1 and user_seq < coalesce($2, 9223372036854775807)
          order by user_seq desc
          limit $3",
        user.as_str(),
        before_seq,
        limit,
    )
    .fetch_all(pool)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut steps = load_steps(pool, &ids).await?;
    rows.into_iter()
        .map(|c| {
            Ok(ChangeView {
                steps: steps.remove(&c.id).unwrap_or_default(),
                change_id: c.id,
                user: super::recorded_user(&c.user_id)?,
                seq: c.user_seq,
                caller: c.caller,
                status: status(&c.status)?,
                fields: c.fields,
                created_at: c.created_at,
                finished_at: c.finished_at,
            })
        })
        .collect()
}

pub async fn load_steps(
    pool: &PgPool,
    change_ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, Vec<StepView>>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select change_id as "change_id!", step_no as "step_no!", target as "target!: Target",
                  upstream_ref as "upstream_ref!", fields as "fields!", status as "status!",
                  attempts as "attempts!", error_code as "error_code: StepErrorCode",
                  error_retryable, upstream_status, upstream_code, error_message
             from change_steps where change_id = any($1) order by change_id, step_no"#,
        change_ids
    )
    .fetch_all(pool)
    .await?;
    let mut out: std::collections::HashMap<Uuid, Vec<StepView>> = Default::default();
    for r in rows {
        let error = r.error_code.map(|code| StepErrorView {
            code,
            retryable: r.error_retryable.unwrap_or(false),
            upstream_status: r.upstream_status.and_then(|s| u16::try_from(s).ok()),
            upstream_code: r.upstream_code.clone(),
            message: r.error_message.clone().unwrap_or_default(),
        });
        out.entry(r.change_id).or_default().push(StepView {
            step_no: r.step_no,
            target: r.target,
            upstream_ref: r.upstream_ref,
            fields: r.fields,
            status: status(&r.status)?,
            attempts: r.attempts,
            error,
        });
    }
    Ok(out)
}

/// A status column's text as its domain type: a value no status has fails the read, so a bad row
/// is reported instead of being shown as something it is not.
fn status<S: std::str::FromStr<Err = UnknownStatus>>(text: &str) -> Result<S, sqlx::Error> {
    text.parse()
        .map_err(|e: UnknownStatus| sqlx::Error::Decode(e.into()))
}
