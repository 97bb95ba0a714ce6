//! The hot path's writes, each ONE statement for any number of changes, so the group-commit writer
//! (`changes::batcher`) can record the work of many concurrent requests in one round trip and one
//! WAL flush. A batch of one is the unbatched case: there is a single code path.
//!
//! Lock order, the same in every statement so concurrent batches cannot deadlock: `changes` rows,
//! then `profile_links` rows sorted by user, then the audit chain heads in user order (taken by
//! `audit_append`, migration 0016, which chains each statement's audit events in one pass).
//! Every event gets its change's actor (`audit_event_input_v2`, migration 20261201000700): who
//! acted is part of the hashed event, not only of the updatable `changes` row.

use crate::changes::model::{ChangeStatus, StepStatus};
use crate::domain::{LinkMember, PlannedStep, ProfileLinks};
use crate::providers::StepError;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// Where a request came from, as the audit rows need it.
#[derive(Debug, Clone)]
pub struct Origin {
    pub caller: String,
    pub request_id: String,
    pub trace_id: Option<String>,
    pub caller_addr: Option<String>,
    /// `audit::Actor` as JSON: stored in `changes.actor` and in every audit event of the change,
    /// whose hash covers it. `None` for a change recorded without one (by an older gateway).
    pub actor: Option<Value>,
}

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

#[derive(Debug, Clone)]
pub struct NewChange {
    pub id: Uuid,
    pub user_id: String,
    pub origin: Origin,
    pub fields: Vec<String>,
    pub steps: Vec<PlannedStep>,
    pub payload_key_id: String,
    pub payload_enc: Vec<u8>,
    pub idem_key: String,
    pub fingerprint: Vec<u8>,
    pub links_version: DateTime<Utc>,
    pub audit_values: Value,
    pub hmac_key_id: String,
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
    let users: Vec<String> = batch.iter().map(|c| c.user_id.clone()).collect();
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
    let actors: Vec<Option<Value>> = batch.iter().map(|c| c.origin.actor.clone()).collect();
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
    let rows = sqlx::query!(
        r#"with input as (
             select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                  $7::text[], $8::text[], $9::bytea[], $10::text[], $11::bytea[],
                                  $12::timestamptz[], $13::jsonb[], $14::text[], $25::jsonb[])
                 with ordinality as t(id, user_id, caller, request_id, trace_id, caller_addr, fields,
                                      payload_key_id, payload_enc, idem_key, fingerprint, links_version,
                                      audit_values, hmac_key_id, actor, ord)
           ),
           locked as (
             select p.user_id, p.updated_at, p.last_change_seq - p.finished_seq as pending
               from profile_links p
              where p.user_id in (select user_id from input)
              order by p.user_id
                for update
           ),
           ranked as (
             select i.*,
                    l.pending + row_number() over (partition by i.user_id order by i.ord) > $24 as over_limit,
                    exists (select 1 from idempotency_keys k
                             where k.caller = i.caller and k.user_id = i.user_id and k.idem_key = i.idem_key
                               and k.expires_at > now()) as known_key
               from input i join locked l on l.user_id = i.user_id and l.updated_at = i.links_version
           ),
           fresh as (
             select * from ranked where not over_limit or known_key
           ),
           keys as (
             insert into idempotency_keys (caller, user_id, idem_key, fingerprint, change_id,
                                           in_flight_until, expires_at)
             select caller, user_id, idem_key, fingerprint, id,
                    now() + make_interval(secs => $15), now() + make_interval(secs => $16)
               from fresh
             on conflict (caller, user_id, idem_key) do update
                set fingerprint = excluded.fingerprint, change_id = excluded.change_id,
                    in_flight_until = excluded.in_flight_until, created_at = now(),
                    expires_at = excluded.expires_at
              where idempotency_keys.expires_at <= now()
             returning change_id
           ),
           counts as (
             select f.user_id, count(*) as n from fresh f join keys k on k.change_id = f.id group by f.user_id
           ),
           seqs as (
             update profile_links p set last_change_seq = p.last_change_seq + c.n
               from counts c
              where p.user_id = c.user_id
          returning p.user_id, p.last_change_seq as last, p.finished_seq, c.n
           ),
           numbered as (
             select f.*, s.last - s.n + row_number() over (partition by f.user_id order by f.ord) as seq,
                    s.finished_seq
               from fresh f join keys k on k.change_id = f.id join seqs s on s.user_id = f.user_id
           ),
           ch as (
             insert into changes (id, user_id, user_seq, caller, request_id, trace_id, caller_addr, fields,
                                  payload_key_id, payload_enc, lease_owner, lease_expires_at, actor)
             select id, user_id, seq, caller, request_id, trace_id, caller_addr,
                    string_to_array(fields, ','), payload_key_id, payload_enc, $17,
                    now() + make_interval(secs => $18), actor
               from numbered
             returning id, created_at
           ),
           st as (
             insert into change_steps (change_id, step_no, target, upstream_ref, fields)
             select s.change_id, s.step_no, s.target, s.upstream_ref, string_to_array(s.fields, ',')
               from unnest($19::uuid[], $20::int[], $21::text[], $22::text[], $23::text[])
                    as s(change_id, step_no, target, upstream_ref, fields)
               join ch on ch.id = s.change_id
             returning change_id
           ),
           au as (
             select audit_append(array_agg(row(n.user_id, 'change_requested', n.caller, 'accepted', n.id,
                                               null, null, null, string_to_array(n.fields, ','), n.audit_values,
                                               n.hmac_key_id, null, n.request_id, n.trace_id,
                                               n.caller_addr, n.actor)::audit_event_input_v2
                                           order by n.user_id, n.ord)) as n
               from numbered n join ch on ch.id = n.id
           )
           select i.id as "id!", n.seq as "seq?", n.finished_seq as "finished_seq?",
                  ch.created_at as "created_at?", (f.id is not null) as "fresh!",
                  coalesce(r.over_limit and not r.known_key, false) as "over_limit!",
                  (select n from au) + (select count(*) from st) as "written!"
             from input i
             left join ranked r on r.id = i.id
             left join fresh f on f.id = i.id
             left join numbered n on n.id = i.id
             left join ch on ch.id = i.id
            order by i.ord"#,
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
    user: &str,
    max_pending: i64,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select coalesce(
                    (select last_change_seq - finished_seq + 1 > $2
                       from profile_links where user_id = $1),
                    false) as "over!""#,
        user,
        max_pending,
    )
    .fetch_one(pool)
    .await
}

/// One step attempt's outcome, as a settle records it.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    pub step_no: i32,
    pub status: StepStatus,
    pub error: Option<StepError>,
    pub confirmed_by_read_back: bool,
    pub target: String,
    pub upstream_ref: String,
    pub fields: Vec<String>,
    pub audit_values: Value,
    pub hmac_key_id: String,
}

/// What one change's round of attempts came to: the outcomes of the steps it attempted and, when
/// every step is final, the change's final state.
#[derive(Debug, Clone)]
pub struct Settle {
    pub change_id: Uuid,
    pub fence: i64,
    pub user_id: String,
    pub origin: Origin,
    pub outcomes: Vec<StepOutcome>,
    pub finish: Option<Finish>,
    /// Outcome webhook events, written only if this settle is (same statement, same commit).
    pub webhooks: Vec<OutboxEvent>,
}

#[derive(Debug, Clone)]
pub struct Finish {
    pub status: ChangeStatus,
    pub fields: Vec<String>,
    /// Recorded as the change's `finished_at`, so the answer, `GET /changes/{id}` and the
    /// webhook body all show the same time.
    pub finished_at: DateTime<Utc>,
}

/// One webhook event for the outbox (`webhooks`): its body is the change as `GET /changes/{id}`
/// shows it once this settle commits.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub id: Uuid,
    /// The change's caller (the webhook's owner), not an operator who retried it.
    pub caller: String,
    pub event_type: &'static str,
    pub body: String,
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
    let users: Vec<String> = batch.iter().map(|c| c.user_id.clone()).collect();
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
    let actors: Vec<Option<Value>> = batch.iter().map(|c| c.origin.actor.clone()).collect();
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
    let rows = sqlx::query!(
        r#"with c as (
             select * from unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                                  $7::text[], $8::text[], $9::text[], $26::jsonb[])
                 with ordinality as t(id, fence, user_id, caller, request_id, trace_id, caller_addr,
                                      final_status, final_fields, actor, ord)
           ),
           o as (
             select * from unnest($10::bigint[], $11::int[], $12::text[], $13::text[], $14::bool[],
                                  $15::int[], $16::text[], $17::text[], $18::bool[], $19::text[],
                                  $20::text[], $21::text[], $22::jsonb[], $23::text[], $25::uuid[])
                 with ordinality as t(parent, step_no, status, error_code, error_retryable,
                                      upstream_status, upstream_code, error_message, confirmed, target,
                                      upstream_ref, fields, audit_values, hmac_key_id, change_id, ord)
           ),
           done as (
             select * from unnest($27::timestamptz[]) with ordinality as t(finished_at, ord)
           ),
           held as (
             select ch.id, c.ord from changes ch join c on c.id = ch.id and c.fence = ch.fence
              where ch.status = 'pending'
              order by ch.id
                for no key update of ch
           ),
           upd as (
             update change_steps s
                set status = o.status, attempts = s.attempts + 1, error_code = o.error_code,
                    error_retryable = o.error_retryable, upstream_status = o.upstream_status,
                    upstream_code = o.upstream_code, error_message = o.error_message,
                    confirmed_by_read_back = o.confirmed, updated_at = now()
               from o join held h on h.ord = o.parent
              where s.change_id = o.change_id and s.step_no = o.step_no
          returning o.parent, s.step_no
           ),
           fin as (
             update changes ch
                set status = c.final_status, finished_at = coalesce(d.finished_at, now()), updated_at = now(),
                    payload_enc = case when c.final_status <> 'applied' and $24::float8 > 0 then ch.payload_enc end,
                    payload_key_id = case when c.final_status <> 'applied' and $24::float8 > 0 then ch.payload_key_id end,
                    payload_expires_at = case when c.final_status <> 'applied' and $24::float8 > 0
                                              then now() + make_interval(secs => $24::float8) end,
                    lease_owner = null, lease_expires_at = null
               from c join held h on h.ord = c.ord left join done d on d.ord = c.ord
              where ch.id = c.id and c.final_status is not null
          returning ch.id, ch.user_id, ch.user_seq, c.ord
           ),
           locked as (
             select p.user_id from profile_links p
              where p.user_id in (select user_id from fin)
              order by p.user_id
                for update
           ),
           turns as (
             update profile_links p set finished_seq = greatest(p.finished_seq, x.seq)
               from (select f.user_id, max(f.user_seq) as seq from fin f join locked l using (user_id)
                      group by f.user_id) x
              where p.user_id = x.user_id
          returning p.user_id
           ),
           keys as (
             update idempotency_keys k set in_flight_until = null
               from fin where k.change_id = fin.id and k.in_flight_until is not null
          returning 1
           ),
           events as (
             select c.user_id, 'step_attempted' as event_type, c.caller, o.status as outcome, c.id as change_id,
                    o.step_no, o.target, o.upstream_ref, string_to_array(o.fields, ',') as fields,
                    o.audit_values as "values", o.hmac_key_id, o.error_code, c.request_id, c.trace_id,
                    c.caller_addr, c.actor, 0 as phase, o.ord
               from o join c on c.ord = o.parent
               join upd u on u.parent = o.parent and u.step_no = o.step_no
             union all
             select c.user_id, 'change_completed', c.caller, c.final_status, c.id, null, null, null,
                    string_to_array(c.final_fields, ','), '{}'::jsonb, null, null, c.request_id, c.trace_id,
                    c.caller_addr, c.actor, 1, c.ord
               from c join fin f on f.ord = c.ord join turns t on t.user_id = f.user_id
           ),
           au as (
             select audit_append(array_agg(row(user_id, event_type, caller, outcome, change_id, step_no, target,
                                               upstream_ref, fields, "values", hmac_key_id, error_code,
                                               request_id, trace_id, caller_addr, actor)::audit_event_input_v2
                                           order by user_id, phase, ord)) as n
               from events
           ),
           notes as (
             select pg_notify('profile_gateway_change_final', f.user_seq::text || ' ' || f.user_id) from fin f
           ),
           hooks as (
             select * from unnest($28::bigint[], $29::uuid[], $30::text[], $31::text[], $32::text[])
                 as t(parent, id, caller, event_type, body)
           ),
           outbox as (
             insert into webhook_events (id, change_id, caller, event_type, body)
             select w.id, c.id, w.caller, w.event_type, w.body
               from hooks w join c on c.ord = w.parent join held h on h.ord = w.parent
             returning 1
           )
           select c.id as "id!", (h.id is not null) as "settled!",
                  (select n from au) + (select count(*) from notes) + (select count(*) from keys) as "n!"
             from c left join held h on h.ord = c.ord
            order by c.ord"#,
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
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| r.settled).collect())
}
