//! The hot path's writes, each ONE statement for any number of changes, so the group-commit writer
//! (`changes::batcher`) can record the work of many concurrent requests in one round trip and one
//! WAL flush. A batch of one is the unbatched case: there is a single code path.
//!
//! Lock order, the same in every statement so concurrent batches cannot deadlock: `changes` rows,
//! then `profile_links` rows sorted by user, then the audit chain heads in user order (taken by
//! `audit_append`, migration 0016, which chains each statement's audit events in one pass).
//! Every event gets its change's actor (`audit_event_input_v2`, migration 20261201000700): who
//! acted is part of the hashed event, not only of the updatable `changes` row.

use crate::domain::StepError;
use crate::domain::{LinkMember, ProfileLinks, UserId};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

use crate::domain::change::{NewChange, Settle};

#[derive(Debug, Clone)]
pub struct LinksRow {
    pub links: ProfileLinks,
    /// `updated_at`: the version the change is planned against.
    pub version: DateTime<Utc>,
}

pub async fn read_links(
    pool: &PgPool,
    users: &[String],
    members: &[LinkMember],
) -> Result<HashMap<String, LinksRow>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select p.user_id, p.updated_at,
                  coalesce(array_agg(l.provider order by l.provider, l.ordinal)
                             filter (where l.provider is not null), '{}') as "providers!",
                  coalesce(array_agg(l.object_id order by l.provider, l.ordinal)
                             filter (where l.provider is not null), '{}') as "objects!"
             from profile_links p left join user_links l on l.user_id = p.user_id
            where p.user_id = any($1)
            group by p.user_id"#,
        users
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|r| {
            let links = super::links::links_of(members, &r.providers, r.objects)?;
            Ok((
                r.user_id,
                LinksRow {
                    links,
                    version: r.updated_at,
                },
            ))
        })
        .collect()
}

/// What became of one new change in a batch.
#[derive(Debug, Clone)]
pub enum Recorded {
    Accepted {
        seq: i64,
        /// Every earlier change of the user is final: it may start at once.
        turn: bool,
        created_at: DateTime<Utc>,
    },
    /// The idempotency key exists: look it up (replay, 409 or 422).
    DuplicateKey,
    /// The links changed since they were read, or the user is gone: read again and replan.
    StaleLinks,
    /// The user already has `max_pending` unfinished changes; nothing was written for this one.
    TooManyPending,
}

pub struct RecordParams<'a> {
    pub lease_owner: &'a str,
    pub lease: Duration,
    pub key_in_flight: Duration,
    pub key_retention: Duration,
    /// Unfinished changes a user may have (a replayed key is never refused for it).
    pub max_pending: i64,
}

/// Records new changes with their steps, idempotency keys and "requested" audit events, and hands
/// out each change's per-user sequence number, in one statement.
pub async fn record_changes(
    pool: &PgPool,
    batch: &[&NewChange],
    p: &RecordParams<'_>,
) -> Result<Vec<Recorded>, sqlx::Error> {
    let ids: Vec<Uuid> = batch.iter().map(|c| c.id).collect();
    let users: Vec<String> = batch
        .iter()
        .map(|c| c.user_id.as_str().to_string())
        .collect();
    let callers: Vec<String> = batch.iter().map(|c| c.origin.caller.clone()).collect();
    let request_ids: Vec<String> = batch.iter().map(|c| c.origin.request_id.clone()).collect();
    let trace_ids: Vec<Option<String>> = batch.iter().map(|c| c.origin.trace_id.clone()).collect();
    let addrs: Vec<Option<String>> = batch.iter().map(|c| c.origin.caller_addr.clone()).collect();
    let fields: Vec<String> = batch.iter().map(|c| c.fields.join(",")).collect();
    let key_ids: Vec<String> = batch.iter().map(|c| c.payload_key_id.clone()).collect();
    let payloads: Vec<Vec<u8>> = batch.iter().map(|c| c.payload_enc.clone()).collect();
    let keys: Vec<String> = batch.iter().map(|c| c.idem_key.clone()).collect();
    let fingerprints: Vec<Vec<u8>> = batch.iter().map(|c| c.fingerprint.clone()).collect();
    let versions: Vec<DateTime<Utc>> = batch.iter().map(|c| c.links_version).collect();
    let audit_values: Vec<Value> = batch.iter().map(|c| c.audit_values.clone()).collect();
    let hmac_key_ids: Vec<String> = batch.iter().map(|c| c.hmac_key_id.clone()).collect();
    let actors: Vec<Option<Value>> = batch.iter().map(|c| c.origin.actor_json()).collect();
    let mut step_change = Vec::new();
    let mut step_no = Vec::new();
    let mut step_target = Vec::new();
    let mut step_ref = Vec::new();
    let mut step_fields = Vec::new();
    for c in batch {
        for s in &c.steps {
            step_change.push(c.id);
            step_no.push(s.step_no);
            step_target.push(s.target.as_str().to_string());
            step_ref.push(s.upstream_ref.clone());
            // Joined because Postgres cannot unnest a ragged two-dimensional array.
            step_fields.push(crate::domain::field::names(&s.fields).join(","));
        }
    }
    let rows = sqlx::query_file!(
        "src/store/sql/record_changes.sql",
        &ids,
        &users,
        &callers,
        &request_ids,
        &trace_ids as &[Option<String>],
        &addrs as &[Option<String>],
        &fields,
        &key_ids,
        &payloads,
        &keys,
        &fingerprints,
        &versions,
        &audit_values,
        &hmac_key_ids,
        p.key_in_flight.as_secs_f64(),
        p.key_retention.as_secs_f64(),
        p.lease_owner,
        p.lease.as_secs_f64(),
        &step_change,
        &step_no,
        &step_target,
        &step_ref,
        &step_fields,
        p.max_pending,
        &actors as &[Option<Value>],
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| match (r.seq, r.created_at) {
            (Some(seq), Some(created_at)) => Recorded::Accepted {
                seq,
                turn: r.finished_seq.is_some_and(|f| seq <= f + 1),
                created_at,
            },
            _ if r.over_limit => Recorded::TooManyPending,
            _ if r.fresh => Recorded::DuplicateKey,
            _ => Recorded::StaleLinks,
        })
        .collect())
}

/// Whether [`record_changes`] would now refuse one more change of `user` as
/// [`Recorded::TooManyPending`] (a dry run): the same count (`last_change_seq - finished_seq`)
/// and bound as its `ranked.over_limit`, for a batch of one, read without a lock. Keep the two
/// together when either changes. Not asked for a key already recorded: that one is never refused
/// for the bound. An unknown user is not over it (the links said so first).
pub async fn would_exceed_pending(
    pool: &PgPool,
    user: &UserId,
    max_pending: i64,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select coalesce(
                    (select last_change_seq - finished_seq + 1 > $2
                       from profile_links where user_id = $1),
                    false) as "over!""#,
        user.as_str(),
        max_pending,
    )
    .fetch_one(pool)
    .await
}

/// Records step outcomes with their audit events and, for the changes that are final, the final
/// state in the same statement: it erases an applied change's payload (a failed one's is kept for
/// the retry window), advances the user's `finished_seq`, releases the idempotency key, writes the
/// final audit event after the step events, writes the settle's webhook events to the outbox and
/// wakes the user's next change (NOTIFY, delivered at commit). Returns, per change, whether it was
/// recorded: false when the change's lease generation moved on (nothing of it is written then).
pub async fn settle_changes(
    pool: &PgPool,
    batch: &[Settle],
    keep_failed_payload: Duration,
) -> Result<Vec<bool>, sqlx::Error> {
    let ids: Vec<Uuid> = batch.iter().map(|c| c.change_id).collect();
    let fences: Vec<i64> = batch.iter().map(|c| c.fence).collect();
    let users: Vec<String> = batch
        .iter()
        .map(|c| c.user_id.as_str().to_string())
        .collect();
    let callers: Vec<String> = batch.iter().map(|c| c.origin.caller.clone()).collect();
    let request_ids: Vec<String> = batch.iter().map(|c| c.origin.request_id.clone()).collect();
    let trace_ids: Vec<Option<String>> = batch.iter().map(|c| c.origin.trace_id.clone()).collect();
    let addrs: Vec<Option<String>> = batch.iter().map(|c| c.origin.caller_addr.clone()).collect();
    let final_statuses: Vec<Option<String>> = batch
        .iter()
        .map(|c| c.finish.as_ref().map(|f| f.status.as_str().to_string()))
        .collect();
    let final_fields: Vec<String> = batch
        .iter()
        .map(|c| {
            c.finish
                .as_ref()
                .map(|f| f.fields.join(","))
                .unwrap_or_default()
        })
        .collect();
    // Each outcome names its settle by position, not by change id: one batch may hold a stale
    // drive's settle (its lease was taken over) and the current one for the same change.
    let outcomes = || {
        batch
            .iter()
            .enumerate()
            .flat_map(|(i, c)| c.outcomes.iter().map(move |o| (i as i64 + 1, o)))
    };
    let o_parent: Vec<i64> = outcomes().map(|(i, _)| i).collect();
    // The change id too, so the step update looks its rows up by key (the plan is generic).
    let o_change: Vec<Uuid> = outcomes()
        .map(|(i, _)| batch[i as usize - 1].change_id)
        .collect();
    let o_step: Vec<i32> = outcomes().map(|(_, o)| o.step_no).collect();
    let o_status: Vec<String> = outcomes()
        .map(|(_, o)| o.status.as_str().to_string())
        .collect();
    let err = |f: &dyn Fn(&StepError) -> Option<String>| -> Vec<Option<String>> {
        outcomes()
            .map(|(_, o)| o.error.as_ref().and_then(f))
            .collect()
    };
    let codes = err(&|e| Some(e.code.as_str().to_string()));
    let upstream_codes = err(&|e| e.upstream_code.clone());
    let messages = err(&|e| Some(e.message.clone()));
    let retryable: Vec<Option<bool>> = outcomes()
        .map(|(_, o)| o.error.as_ref().map(|e| e.retryable))
        .collect();
    let upstream_status: Vec<Option<i32>> = outcomes()
        .map(|(_, o)| {
            o.error
                .as_ref()
                .and_then(|e| e.upstream_status.map(i32::from))
        })
        .collect();
    let confirmed: Vec<bool> = outcomes().map(|(_, o)| o.confirmed_by_read_back).collect();
    let targets: Vec<String> = outcomes().map(|(_, o)| o.target.clone()).collect();
    let refs: Vec<String> = outcomes().map(|(_, o)| o.upstream_ref.clone()).collect();
    let o_fields: Vec<String> = outcomes().map(|(_, o)| o.fields.join(",")).collect();
    let values: Vec<Value> = outcomes().map(|(_, o)| o.audit_values.clone()).collect();
    let hmac_key_ids: Vec<String> = outcomes().map(|(_, o)| o.hmac_key_id.clone()).collect();
    let actors: Vec<Option<Value>> = batch.iter().map(|c| c.origin.actor_json()).collect();
    let keep_secs = keep_failed_payload.as_secs_f64();
    let finished_at: Vec<Option<DateTime<Utc>>> = batch
        .iter()
        .map(|c| c.finish.as_ref().map(|f| f.finished_at))
        .collect();
    let hooks = || {
        batch
            .iter()
            .enumerate()
            .flat_map(|(i, c)| c.webhooks.iter().map(move |w| (i as i64 + 1, w)))
    };
    let w_parent: Vec<i64> = hooks().map(|(i, _)| i).collect();
    let w_id: Vec<Uuid> = hooks().map(|(_, w)| w.id).collect();
    let w_caller: Vec<String> = hooks().map(|(_, w)| w.caller.clone()).collect();
    let w_type: Vec<String> = hooks().map(|(_, w)| w.event_type.to_string()).collect();
    let w_body: Vec<String> = hooks().map(|(_, w)| w.body.clone()).collect();
    let rows = sqlx::query_file!(
        "src/store/sql/settle_changes.sql",
        &ids,
        &fences,
        &users,
        &callers,
        &request_ids,
        &trace_ids as &[Option<String>],
        &addrs as &[Option<String>],
        &final_statuses as &[Option<String>],
        &final_fields,
        &o_parent,
        &o_step,
        &o_status,
        &codes as &[Option<String>],
        &retryable as &[Option<bool>],
        &upstream_status as &[Option<i32>],
        &upstream_codes as &[Option<String>],
        &messages as &[Option<String>],
        &confirmed,
        &targets,
        &refs,
        &o_fields,
        &values,
        &hmac_key_ids,
        keep_secs,
        &o_change,
        &actors as &[Option<Value>],
        &finished_at as &[Option<DateTime<Utc>>],
        &w_parent,
        &w_id,
        &w_caller,
        &w_type,
        &w_body,
        super::changes::FINAL_CHANNEL,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| r.settled).collect())
}
