//! `changes` and `change_steps`: the unit of idempotency, recovery and audit.

use crate::audit::{self, AuditEvent};
use crate::changes::model::{ChangeStatus, ChangeView, StepErrorView, StepStatus, StepView};
use crate::domain::{PlannedStep, ProfileLinks, Target, UserId};
use crate::providers::{StepError, StepErrorCode};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// The user's links, read under the row lock that also hands out the change's sequence number, so
/// a user's changes are numbered in the order they were accepted and planned against current links.
pub struct LockedUser {
    pub links: ProfileLinks,
    pub seq: i64,
}

pub async fn lock_user(
    tx: &mut Transaction<'_, Postgres>,
    user: &UserId,
) -> Result<Option<LockedUser>, sqlx::Error> {
    let row = sqlx::query!(
        "update profile_links set last_change_seq = last_change_seq + 1
          where user_id = $1
      returning last_change_seq, juspay_customer_id, juspay_wallet_ids, razorpay_customer_reference",
        user.as_str()
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|r| LockedUser {
        seq: r.last_change_seq,
        links: ProfileLinks {
            juspay_customer_id: r.juspay_customer_id,
            juspay_wallet_ids: r.juspay_wallet_ids,
            razorpay_customer_reference: r.razorpay_customer_reference,
        },
    }))
}

pub struct NewChange<'a> {
    pub id: Uuid,
    pub user: &'a UserId,
    pub seq: i64,
    pub fields: Vec<String>,
    pub steps: &'a [PlannedStep],
    pub payload_key_id: &'a str,
    pub payload_enc: Vec<u8>,
    pub lease_owner: &'a str,
    pub lease_secs: f64,
}

pub async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    c: &NewChange<'_>,
    event: &AuditEvent<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into changes (id, user_id, user_seq, caller, request_id, trace_id, caller_addr, fields,
                              payload_key_id, payload_enc, lease_owner, lease_expires_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now() + make_interval(secs => $12))",
        c.id,
        c.user.as_str(),
        c.seq,
        event.ctx.caller,
        event.ctx.request_id,
        event.ctx.trace_id,
        event.ctx.caller_addr,
        &c.fields,
        c.payload_key_id,
        c.payload_enc,
        c.lease_owner,
        c.lease_secs,
    )
    .execute(&mut **tx)
    .await?;
    let step_nos: Vec<i32> = c.steps.iter().map(|s| s.step_no).collect();
    let targets: Vec<String> = c
        .steps
        .iter()
        .map(|s| s.target.as_str().to_string())
        .collect();
    let refs: Vec<String> = c.steps.iter().map(|s| s.upstream_ref.clone()).collect();
    // Field lists are joined because Postgres cannot unnest a ragged two-dimensional array.
    let fields: Vec<String> = c.steps.iter().map(|s| s.fields.join(",")).collect();
    sqlx::query!(
        "insert into change_steps (change_id, step_no, target, upstream_ref, fields)
         select $1, s.step_no, s.target, s.upstream_ref, string_to_array(s.fields, ',')
           from unnest($2::int[], $3::text[], $4::text[], $5::text[])
                as s(step_no, target, upstream_ref, fields)",
        c.id,
        &step_nos,
        &targets,
        &refs,
        &fields,
    )
    .execute(&mut **tx)
    .await?;
    audit::insert(&mut **tx, event).await
}

/// Records one attempt's outcome with its audit event. Returns false when this replica no longer
/// holds the change (its fence was bumped by a takeover): the outcome is then not ours to record.
pub async fn record_attempt(
    pool: &PgPool,
    change_id: Uuid,
    fence: i64,
    step_no: i32,
    result: &Result<(), StepError>,
    event: &AuditEvent<'_>,
) -> Result<bool, sqlx::Error> {
    let status = StepStatus::of(result);
    let err = result.as_ref().err();
    let mut tx = pool.begin().await?;
    let updated = sqlx::query!(
        "update change_steps s
            set status = $4, attempts = attempts + 1, error_code = $5, error_retryable = $6,
                upstream_status = $7, upstream_code = $8, error_message = $9, updated_at = now()
          from changes c
          where s.change_id = $1 and s.step_no = $2 and c.id = s.change_id and c.fence = $3
            and c.status = 'pending'",
        change_id,
        step_no,
        fence,
        status.as_str(),
        err.map(|e| e.code.as_str()),
        err.map(|e| e.retryable),
        err.and_then(|e| e.upstream_status.map(i32::from)),
        err.and_then(|e| e.upstream_code.clone()),
        err.map(|e| e.message.clone()),
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(false);
    }
    audit::insert(&mut *tx, event).await?;
    tx.commit().await?;
    Ok(true)
}

/// Marks the change final, erases the sealed payload and records the final audit event.
pub async fn finish(
    pool: &PgPool,
    change_id: Uuid,
    fence: i64,
    status: ChangeStatus,
    event: &AuditEvent<'_>,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let updated = sqlx::query!(
        "update changes
            set status = $3, finished_at = now(), updated_at = now(), payload_enc = null,
                payload_key_id = null, lease_owner = null, lease_expires_at = null
          where id = $1 and fence = $2 and status = 'pending'",
        change_id,
        fence,
        status.as_str(),
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(false);
    }
    audit::insert(&mut *tx, event).await?;
    tx.commit().await?;
    Ok(true)
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
        user: c.user_id,
        seq: c.user_seq,
        caller: c.caller,
        status: ChangeStatus::parse(&c.status),
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
    Ok(rows
        .into_iter()
        .map(|c| ChangeView {
            steps: steps.remove(&c.id).unwrap_or_default(),
            change_id: c.id,
            user: c.user_id,
            seq: c.user_seq,
            caller: c.caller,
            status: ChangeStatus::parse(&c.status),
            fields: c.fields,
            created_at: c.created_at,
            finished_at: c.finished_at,
        })
        .collect())
}

async fn load_steps(
    pool: &PgPool,
    change_ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, Vec<StepView>>, sqlx::Error> {
    let rows = sqlx::query!(
        "select change_id, step_no, target, upstream_ref, fields, status, attempts, error_code,
                error_retryable, upstream_status, upstream_code, error_message
           from change_steps where change_id = any($1) order by change_id, step_no",
        change_ids
    )
    .fetch_all(pool)
    .await?;
    let mut out: std::collections::HashMap<Uuid, Vec<StepView>> = Default::default();
    for r in rows {
        let error = r
            .error_code
            .as_deref()
            .and_then(StepErrorCode::parse)
            .map(|code| StepErrorView {
                code,
                retryable: r.error_retryable.unwrap_or(false),
                upstream_status: r.upstream_status.and_then(|s| u16::try_from(s).ok()),
                upstream_code: r.upstream_code.clone(),
                message: r.error_message.clone().unwrap_or_default(),
            });
        out.entry(r.change_id).or_default().push(StepView {
            step_no: r.step_no,
            target: Target::parse(&r.target).unwrap_or(Target::JuspayCustomer),
            upstream_ref: r.upstream_ref,
            fields: r.fields,
            status: StepStatus::parse(&r.status),
            attempts: r.attempts,
            error,
        });
    }
    Ok(out)
}
