//! The hot path's writes, each ONE statement for any number of changes, so the group-commit writer
//! (`changes::batcher`) can record the work of many concurrent requests in one round trip and one
//! WAL flush. A batch of one is the unbatched case: there is a single code path.
//!
//! The audit events of a write are chained here (`audit::chain`, encoding v3) and written with the
//! head they extend; the statement moves each user's head in the `profile_links` row it updates
//! anyway, by compare-and-set (migration 20261202000200). Every event gets its change's actor:
//! who acted is part of the hashed event, not only of the updatable `changes` row.
//!
//! Neither statement locks ahead of its writes: each condition sits in the WHERE of the UPDATE it
//! guards, which PostgreSQL re-checks on a row's latest version (`record_changes.sql`). Lock
//! order: this replica's chain slots in user order (`ChainHeads::hold`, before the statement),
//! then the users' `profile_links` rows, then `changes` rows (a settle's changes, a record's
//! expired key's change), as `changes::reopen` takes them too. The users' rows are locked in the
//! order the UPDATE's plan meets them: the heads' order (sorted by user, [`chain_items`]) with
//! the generic plan's nested loop over the heads. A plan that met them in another order could
//! make two replicas' batches that share two users deadlock; PostgreSQL breaks that after
//! `deadlock_timeout` and the batcher writes their items again one by one: a delay, never a lost
//! or doubled write.

use crate::audit::chain::{self, ChainHeads, Head};
use crate::audit::verify::{self, EventRow};
use crate::domain::{LinkMember, Origin, ProfileLinks, UserId};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

use crate::domain::change::{NewChange, Settle};

#[derive(Debug, Clone)]
pub struct LinksRow {
    pub links: ProfileLinks,
    /// `updated_at`: the version the change is planned against.
    pub version: DateTime<Utc>,
}

/// Reads the users' links, and offers their chain heads to `heads`, so that the write that
/// follows needs no read of its own (a head read here may be stale by then: the write's
/// compare-and-set catches that).
pub async fn read_links(
    pool: &PgPool,
    heads: &ChainHeads,
    users: &[String],
    members: &[LinkMember],
) -> Result<HashMap<String, LinksRow>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select p.user_id, p.updated_at, p.chain_seq, p.chain_hash,
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
            heads.offer(
                &r.user_id,
                Head {
                    seq: r.chain_seq,
                    hash: r.chain_hash,
                },
            );
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

/// What became of one settle in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Written,
    /// Its lease generation moved on: nothing of it is ever written.
    Stale,
    /// Not written this time (the user's chain head kept moving, or the batch's later statement
    /// failed after an earlier one committed): the change stays as it was, for a completer.
    NotWritten,
}

/// How often one write chains again a user's events because the head moved under it (another
/// replica or a links update wrote to the chain). Past it, a record answers `StaleLinks` (the
/// request reads and plans again) and a settle is left to the completer.
const CHAIN_ROUNDS: usize = 4;

/// The chaining rounds of one write: each round's statement writes what it can of the items still
/// to write and answers `None` for an item to chain again, up to [`CHAIN_ROUNDS`] statements. A
/// first statement that fails is the batch's error (nothing committed, the caller may write it
/// again); a later one ends the rounds, the earlier answers stand.
struct Rounds<R> {
    out: Vec<Option<R>>,
    todo: Vec<usize>,
    done: usize,
}

impl<R> Rounds<R> {
    fn new(len: usize) -> Self {
        Rounds {
            out: (0..len).map(|_| None).collect(),
            todo: (0..len).collect(),
            done: 0,
        }
    }

    /// The positions in the batch the next round writes, if there is one.
    fn next(&self) -> Option<&[usize]> {
        (!self.todo.is_empty() && self.done < CHAIN_ROUNDS).then_some(&self.todo[..])
    }

    fn took(&mut self, rows: Vec<Option<R>>) {
        let mut again = Vec::new();
        for (&i, r) in self.todo.iter().zip(rows) {
            match r {
                Some(r) => self.out[i] = Some(r),
                None => again.push(i),
            }
        }
        self.todo = again;
        self.done += 1;
    }

    fn failed(
        &mut self,
        e: sqlx::Error,
        held: &mut chain::Held,
        what: &str,
    ) -> Result<(), sqlx::Error> {
        held.forget();
        if self.done == 0 {
            return Err(e);
        }
        tracing::warn!(error = %e, "a {what} statement failed after the batch's first");
        self.done = CHAIN_ROUNDS;
        Ok(())
    }

    /// Every item's answer, `leftover` for those no round wrote.
    fn finish(self, leftover: R) -> Vec<R>
    where
        R: Clone,
    {
        self.out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| leftover.clone()))
            .collect()
    }
}

/// The columns of the audit events a write inserts, one array each (`record_changes.sql`,
/// `settle_changes.sql`), with the position of the change or settle each belongs to.
#[derive(Default)]
struct EventColumns {
    parent: Vec<i64>,
    occurred_at: Vec<DateTime<Utc>>,
    user_id: Vec<String>,
    seq: Vec<i64>,
    prev_hash: Vec<String>,
    hash: Vec<String>,
    event_type: Vec<String>,
    caller: Vec<String>,
    outcome: Vec<String>,
    change_id: Vec<Option<Uuid>>,
    step_no: Vec<Option<i32>>,
    target: Vec<Option<String>>,
    upstream_ref: Vec<Option<String>>,
    fields: Vec<String>,
    values: Vec<String>,
    hmac_key_id: Vec<Option<String>>,
    error_code: Vec<Option<String>>,
    request_id: Vec<Option<String>>,
    trace_id: Vec<Option<String>>,
    caller_addr: Vec<Option<String>>,
    actor: Vec<Option<String>>,
}

impl EventColumns {
    fn push(&mut self, parent: usize, e: EventRow) {
        self.parent.push(parent as i64 + 1);
        self.occurred_at.push(e.occurred_at);
        self.user_id.push(e.user_id);
        self.seq.push(e.seq);
        self.prev_hash.push(e.prev_hash);
        self.hash.push(e.hash);
        self.event_type.push(e.event_type);
        self.caller.push(e.caller);
        self.outcome.push(e.outcome);
        self.change_id.push(e.change_id);
        self.step_no.push(e.step_no);
        self.target.push(e.target);
        self.upstream_ref.push(e.upstream_ref);
        // Joined because Postgres cannot unnest a ragged two-dimensional array.
        self.fields.push(e.fields.join(","));
        self.values.push(e.values_text);
        self.hmac_key_id.push(e.hmac_key_id);
        self.error_code.push(e.error_code);
        self.request_id.push(e.request_id);
        self.trace_id.push(e.trace_id);
        self.caller_addr.push(e.caller_addr);
        self.actor.push(e.actor_text);
    }
}

/// An event of `origin`'s change, to be chained: everything but seq, prev_hash and hash.
fn event(
    origin: &Origin,
    user: &UserId,
    at: DateTime<Utc>,
    event_type: &str,
    outcome: &str,
    change_id: Uuid,
) -> EventRow {
    EventRow {
        id: 0,
        occurred_at: at,
        user_id: user.as_str().to_string(),
        seq: 0,
        prev_hash: String::new(),
        hash: String::new(),
        event_type: event_type.to_string(),
        caller: origin.caller.clone(),
        outcome: outcome.to_string(),
        change_id: Some(change_id),
        step_no: None,
        target: None,
        upstream_ref: None,
        fields: Vec::new(),
        fields_malformed: false,
        values_text: "{}".to_string(),
        hmac_key_id: None,
        error_code: None,
        request_id: Some(origin.request_id.clone()),
        trace_id: origin.trace_id.clone(),
        caller_addr: origin.caller_addr.clone(),
        actor_text: origin.actor_json().as_ref().map(verify::jsonb_text),
        format: Some(3),
    }
}

/// The heads of `held`'s users this replica does not know, read from their rows.
async fn read_unknown_heads(pool: &PgPool, held: &mut chain::Held) -> Result<(), sqlx::Error> {
    let unknown = held.unknown();
    if unknown.is_empty() {
        return Ok(());
    }
    let rows = sqlx::query!(
        "select user_id, chain_seq, chain_hash from profile_links where user_id = any($1)",
        &unknown
    )
    .fetch_all(pool)
    .await?;
    for r in rows {
        held.set(
            &r.user_id,
            Head {
                seq: r.chain_seq,
                hash: r.chain_hash,
            },
        );
    }
    Ok(())
}

/// The heads a write extends and the heads it leaves, one element per user (`$heads`).
#[derive(Default)]
struct HeadColumns {
    user_id: Vec<String>,
    seq: Vec<i64>,
    hash: Vec<String>,
    new_seq: Vec<i64>,
    new_hash: Vec<String>,
}

/// Chains each item's events (`events_of`), user by user in batch order, from the heads in
/// `held`. An unknown head (no profile_links row) is chained from genesis: the write then finds
/// no row and refuses.
fn chain_items<T>(
    held: &chain::Held,
    items: &[&T],
    user_of: impl Fn(&T) -> &str,
    events_of: impl Fn(&T) -> Vec<EventRow>,
) -> (EventColumns, HeadColumns) {
    let mut next: HashMap<&str, (Head, Head)> = HashMap::new();
    let mut events = EventColumns::default();
    for (i, item) in items.iter().enumerate() {
        let user = user_of(item);
        let (_, head) = next.entry(user).or_insert_with(|| {
            let h = held.head(user).cloned().unwrap_or_else(Head::genesis);
            (h.clone(), h)
        });
        for e in events_of(item) {
            events.push(i, chain::append(head, e));
        }
    }
    // In user order: the statements lock the users' rows in the order of their heads.
    let mut next: Vec<_> = next.into_iter().collect();
    next.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut heads = HeadColumns::default();
    for (user, (from, to)) in next {
        heads.user_id.push(user.to_string());
        heads.seq.push(from.seq);
        heads.hash.push(from.hash);
        heads.new_seq.push(to.seq);
        heads.new_hash.push(to.hash);
    }
    (events, heads)
}

/// What one row of a write's answer says of its item's user.
struct UserRow<'a> {
    user: &'a str,
    written: bool,
    /// Not written for a reason of its own (a known key, the pending bound, stale links, a stale
    /// lease), not for a moved head.
    refused: bool,
    /// The user's head (seq, hash) in the statement's snapshot; none when the user has no row.
    seen: Option<(i64, String)>,
}

/// A write's answer per user (all of a user's items written, any refused), for [`note_heads`].
fn note_rows<'a>(
    held: &mut chain::Held,
    heads: &HeadColumns,
    rows: impl Iterator<Item = UserRow<'a>>,
) {
    let mut written = HashMap::new();
    let mut seen = HashMap::new();
    let mut refused = HashSet::new();
    for r in rows {
        let user = r.user.to_string();
        *written.entry(user.clone()).or_insert(true) &= r.written;
        if r.refused {
            refused.insert(user.clone());
        }
        seen.insert(user, r.seen.map(|(seq, hash)| Head { seq, hash }));
    }
    note_heads(held, heads, &written, &seen, &refused);
}

/// After a write: the head each user now has (what the write left when its events went in, the
/// row's head when they did not), so the next write chains from it without a read. The row's
/// head comes from the statement's snapshot: when it is still the head the write chained from
/// and nothing of the user's was `refused` for a reason of its own (a known key, the pending
/// bound, stale links, a stale lease), a concurrent write moved it after the snapshot, and it is
/// read again before the next round.
fn note_heads(
    held: &mut chain::Held,
    heads: &HeadColumns,
    written: &HashMap<String, bool>,
    seen: &HashMap<String, Option<Head>>,
    refused: &HashSet<String>,
) {
    for (i, user) in heads.user_id.iter().enumerate() {
        if written.get(user).copied().unwrap_or(false) {
            held.set(
                user,
                Head {
                    seq: heads.new_seq[i],
                    hash: heads.new_hash[i].clone(),
                },
            );
        } else if let Some(Some(h)) = seen.get(user) {
            if h.seq == heads.seq[i] && h.hash == heads.hash[i] && !refused.contains(user) {
                held.forget_user(user);
            } else {
                held.set(user, h.clone());
            }
        }
    }
}

/// Records new changes with their steps, idempotency keys and "requested" audit events, and hands
/// out each change's per-user sequence number, in one statement per chaining round (one, unless
/// the chain head moved under it).
pub async fn record_changes(
    pool: &PgPool,
    heads: &ChainHeads,
    batch: &[&NewChange],
    p: &RecordParams<'_>,
) -> Result<Vec<Recorded>, sqlx::Error> {
    let mut held = heads.hold(batch.iter().map(|c| c.user_id.as_str())).await;
    let mut rounds = Rounds::new(batch.len());
    while let Some(todo) = rounds.next() {
        let items: Vec<&NewChange> = todo.iter().map(|&i| batch[i]).collect();
        match record_round(pool, &mut held, &items, p).await {
            Ok(rows) => rounds.took(rows),
            // Those of a later round read and plan again.
            Err(e) => rounds.failed(e, &mut held, "record")?,
        }
    }
    // The head kept moving: the request reads its links again and plans anew.
    Ok(rounds.finish(Recorded::StaleLinks))
}

/// A new change's steps document (`changes.steps`, migration 20261202000400): every planned step,
/// pending, not attempted, keyed by its number, so a settle replaces an attempted step's element
/// with a merge (`||`) instead of rebuilding the document.
fn planned_steps(steps: &[crate::domain::PlannedStep]) -> Value {
    Value::Object(
        steps
            .iter()
            .map(|s| {
                let element = serde_json::json!({
                    "step_no": s.step_no,
                    "target": s.target.as_str(),
                    "upstream_ref": s.upstream_ref,
                    "fields": crate::domain::field::names(&s.fields),
                    "status": "pending",
                    "attempts": 0,
                    "confirmed_by_read_back": false,
                });
                (s.step_no.to_string(), element)
            })
            .collect(),
    )
}

/// The elements a settle's attempts give their steps in the document (as [`planned_steps`] keys
/// them): each attempted step's whole element, its attempt count being the attempt's number.
fn attempted_steps(outcomes: &[crate::domain::change::StepOutcome]) -> Value {
    Value::Object(
        outcomes
            .iter()
            .map(|o| {
                let e = o.error.as_ref();
                let element = serde_json::json!({
                    "step_no": o.step_no,
                    "target": o.target,
                    "upstream_ref": o.upstream_ref,
                    "fields": o.fields,
                    "status": o.status.as_str(),
                    "attempts": o.attempt,
                    "error_code": e.map(|e| e.code.as_str()),
                    "error_retryable": e.map(|e| e.retryable),
                    "upstream_status": e.and_then(|e| e.upstream_status),
                    "upstream_code": e.and_then(|e| e.upstream_code.as_deref()),
                    "error_message": e.map(|e| e.message.as_str()),
                    "confirmed_by_read_back": o.confirmed_by_read_back,
                });
                (o.step_no.to_string(), element)
            })
            .collect(),
    )
}

/// One statement of [`record_changes`]: `None` for a change to chain again (its user's head moved,
/// or another change of its user could not be written).
async fn record_round(
    pool: &PgPool,
    held: &mut chain::Held,
    batch: &[&NewChange],
    p: &RecordParams<'_>,
) -> Result<Vec<Option<Recorded>>, sqlx::Error> {
    read_unknown_heads(pool, held).await?;
    // The events are dated once a connection is at hand: the database accepts a date within
    // seconds of its clock, and a wait for the pool must not use them up.
    let mut conn = pool.acquire().await?;
    let at = chain::now();
    let (ev, hd) = chain_items(
        held,
        batch,
        |c| c.user_id.as_str(),
        |c| {
            let mut e = event(
                &c.origin,
                &c.user_id,
                at,
                "change_requested",
                "accepted",
                c.id,
            );
            e.fields = c.fields.clone();
            e.values_text = verify::jsonb_text(&c.audit_values);
            e.hmac_key_id = Some(c.hmac_key_id.clone());
            vec![e]
        },
    );
    // Per user: how many changes, and the links version they all were planned against (none
    // when they differ); per change: its place among its user's.
    let mut per_user: HashMap<&str, (i64, Option<DateTime<Utc>>)> = HashMap::new();
    let ranks: Vec<i64> = batch
        .iter()
        .map(|c| {
            let u = per_user
                .entry(c.user_id.as_str())
                .or_insert((0, Some(c.links_version)));
            u.0 += 1;
            if u.1 != Some(c.links_version) {
                u.1 = None;
            }
            u.0
        })
        .collect();
    let (counts, head_versions): (Vec<i64>, Vec<Option<DateTime<Utc>>>) =
        hd.user_id.iter().map(|u| per_user[u.as_str()]).unzip();
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
    let actors: Vec<Option<Value>> = batch.iter().map(|c| c.origin.actor_json()).collect();
    let steps: Vec<Value> = batch.iter().map(|c| planned_steps(&c.steps)).collect();
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
        &actors as &[Option<Value>],
        &steps,
        &hd.user_id,
        &hd.seq,
        &hd.hash,
        &hd.new_seq,
        &hd.new_hash,
        &ev.occurred_at,
        &ev.user_id,
        &ev.seq,
        &ev.prev_hash,
        &ev.hash,
        &ev.change_id as &[Option<Uuid>],
        &ev.fields,
        &ev.values,
        &ev.hmac_key_id as &[Option<String>],
        p.key_in_flight.as_secs_f64(),
        p.key_retention.as_secs_f64(),
        p.lease_owner,
        p.lease.as_secs_f64(),
        p.max_pending,
        &counts,
        &head_versions as &[Option<DateTime<Utc>>],
        &ranks,
    )
    .fetch_all(&mut *conn)
    .await?;
    note_rows(
        held,
        &hd,
        batch.iter().zip(&rows).map(|(c, r)| UserRow {
            user: c.user_id.as_str(),
            written: r.seq.is_some(),
            refused: r.known_key || r.over_limit || !r.links_ok,
            seen: r.chain_seq.zip(r.chain_hash.clone()),
        }),
    );
    Ok(rows
        .into_iter()
        .map(|r| match (r.seq, r.created_at) {
            (Some(seq), Some(created_at)) => Some(Recorded::Accepted {
                seq,
                turn: r.finished_seq.is_some_and(|f| seq <= f + 1),
                created_at,
            }),
            _ if r.known_key => Some(Recorded::DuplicateKey),
            _ if r.over_limit => Some(Recorded::TooManyPending),
            // No row for the user (gone), or the links moved on since they were read.
            _ if r.chain_seq.is_none() || !r.links_ok => Some(Recorded::StaleLinks),
            _ => None,
        })
        .collect())
}

/// Whether [`record_changes`] would now refuse one more change of `user` as
/// [`Recorded::TooManyPending`] (a dry run): the same count (`last_change_seq - finished_seq`)
/// and bound as the condition of its update of the user's row, for a batch of one, read without a
/// lock. Keep the two together when either changes. Not asked for a key already recorded: that
/// one is never refused for the bound. An unknown user is not over it (the links said so first).
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

/// The settle statement's abort (`pgw_abort`, SQLSTATE 40001, with this reason in
/// `settle_changes.sql`) when a completer claimed one of its changes between the statement's
/// snapshot and its write.
fn lease_generation_moved(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if d.code().as_deref() == Some("40001")
            && d.message().contains("a lease generation moved during the settle"))
}

/// Records step outcomes with their audit events and, for the changes that are final, the final
/// state in the same statement: it erases an applied change's payload (a failed one's is kept for
/// the retry window), advances the user's `finished_seq`, releases the idempotency key, writes the
/// final audit event after the step events, writes the settle's webhook events to the outbox and
/// wakes the user's next change (NOTIFY, delivered at commit). Returns, per change, whether it was
/// recorded ([`Settled`]).
pub async fn settle_changes(
    pool: &PgPool,
    heads: &ChainHeads,
    batch: &[Settle],
    keep_failed_payload: Duration,
) -> Result<Vec<Settled>, sqlx::Error> {
    let mut held = heads.hold(batch.iter().map(|c| c.user_id.as_str())).await;
    let mut rounds = Rounds::new(batch.len());
    while let Some(todo) = rounds.next() {
        let items: Vec<&Settle> = todo.iter().map(|&i| &batch[i]).collect();
        match settle_round(pool, &mut held, &items, keep_failed_payload).await {
            Ok(rows) => rounds.took(rows),
            // Nothing of it committed: the next round's snapshot answers the claimed change
            // `Stale` and writes the others.
            Err(e) if lease_generation_moved(&e) => {
                rounds.took(items.iter().map(|_| None).collect())
            }
            // Never written twice by this call (it could count an attempt twice): a completer
            // settles those of a later round.
            Err(e) => rounds.failed(e, &mut held, "settle")?,
        }
    }
    Ok(rounds.finish(Settled::NotWritten))
}

/// A settle's audit event, unchained: one per settle, `change_completed` (outcome: the final
/// state) when it makes the change final, else `round` (outcome `pending`). Its `values` hold the
/// round's step attempts (`steps`: step, target, object, fields, status, attempt number, error
/// code, read-back flag), not the values: those are in the change's `change_requested` event, and
/// the auditor views join them (docs/auditing.md). A settle with neither writes no event.
fn settle_events(c: &Settle, at: DateTime<Utc>) -> Vec<EventRow> {
    if c.outcomes.is_empty() && c.finish.is_none() {
        return Vec::new();
    }
    let (event_type, outcome, fields) = match &c.finish {
        Some(f) => ("change_completed", f.status.as_str(), f.fields.clone()),
        None => {
            let mut fields: Vec<String> = Vec::new();
            for f in c.outcomes.iter().flat_map(|o| &o.fields) {
                if !fields.contains(f) {
                    fields.push(f.clone());
                }
            }
            ("round", "pending", fields)
        }
    };
    let mut e = event(&c.origin, &c.user_id, at, event_type, outcome, c.change_id);
    e.fields = fields;
    e.values_text = crate::audit::steps_values_text(&c.outcomes);
    vec![e]
}

/// One statement of [`settle_changes`]: `None` for a settle to chain again.
async fn settle_round(
    pool: &PgPool,
    held: &mut chain::Held,
    batch: &[&Settle],
    keep_failed_payload: Duration,
) -> Result<Vec<Option<Settled>>, sqlx::Error> {
    read_unknown_heads(pool, held).await?;
    // The events are dated once a connection is at hand: the database accepts a date within
    // seconds of its clock, and a wait for the pool must not use them up.
    let mut conn = pool.acquire().await?;
    let at = chain::now();
    let (ev, hd) = chain_items(
        held,
        batch,
        |c| c.user_id.as_str(),
        |c| settle_events(c, at),
    );
    let ids: Vec<Uuid> = batch.iter().map(|c| c.change_id).collect();
    let fences: Vec<i64> = batch.iter().map(|c| c.fence).collect();
    let users: Vec<String> = batch
        .iter()
        .map(|c| c.user_id.as_str().to_string())
        .collect();
    let final_statuses: Vec<Option<String>> = batch
        .iter()
        .map(|c| c.finish.as_ref().map(|f| f.status.as_str().to_string()))
        .collect();
    let finished_at: Vec<Option<DateTime<Utc>>> = batch
        .iter()
        .map(|c| c.finish.as_ref().map(|f| f.finished_at))
        .collect();
    let steps_patch: Vec<Value> = batch.iter().map(|c| attempted_steps(&c.outcomes)).collect();
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
        &final_statuses as &[Option<String>],
        &finished_at as &[Option<DateTime<Utc>>],
        &steps_patch,
        &w_parent,
        &w_id,
        &w_caller,
        &w_type,
        &w_body,
        &hd.user_id,
        &hd.seq,
        &hd.hash,
        &hd.new_seq,
        &hd.new_hash,
        &ev.parent,
        &ev.occurred_at,
        &ev.user_id,
        &ev.seq,
        &ev.prev_hash,
        &ev.hash,
        &ev.event_type,
        &ev.caller,
        &ev.outcome,
        &ev.change_id as &[Option<Uuid>],
        &ev.step_no as &[Option<i32>],
        &ev.target as &[Option<String>],
        &ev.upstream_ref as &[Option<String>],
        &ev.fields,
        &ev.values,
        &ev.hmac_key_id as &[Option<String>],
        &ev.error_code as &[Option<String>],
        &ev.request_id as &[Option<String>],
        &ev.trace_id as &[Option<String>],
        &ev.caller_addr as &[Option<String>],
        &ev.actor as &[Option<String>],
        keep_failed_payload.as_secs_f64(),
        super::changes::FINAL_CHANNEL,
    )
    .fetch_all(&mut *conn)
    .await?;
    note_rows(
        held,
        &hd,
        batch.iter().zip(&rows).map(|(c, r)| UserRow {
            user: c.user_id.as_str(),
            written: r.settled,
            refused: !r.held,
            seen: r.chain_seq.zip(r.chain_hash.clone()),
        }),
    );
    Ok(rows
        .into_iter()
        .map(|r| match (r.settled, r.held) {
            (true, _) => Some(Settled::Written),
            (false, false) => Some(Settled::Stale),
            (false, true) => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost() -> sqlx::Error {
        sqlx::Error::PoolTimedOut
    }

    #[test]
    fn rounds_chain_again_what_a_round_left_and_stop_after_the_last() {
        let mut rounds = Rounds::new(3);
        let mut seen = Vec::new();
        while let Some(todo) = rounds.next() {
            seen.push(todo.to_vec());
            // Item 1 is written in the second round, item 2 never.
            let rows = todo
                .iter()
                .map(|&i| (i == 0 || (i == 1 && seen.len() == 2)).then_some(i))
                .collect();
            rounds.took(rows);
        }
        assert_eq!(seen.len(), CHAIN_ROUNDS);
        assert_eq!(seen[0], [0, 1, 2]);
        assert_eq!(seen[1], [1, 2]);
        assert_eq!(seen[2], [2]);
        assert_eq!(rounds.finish(9), [0, 1, 9]);
    }

    #[tokio::test]
    async fn a_head_that_lost_a_race_is_read_again_a_refused_users_is_kept() {
        let heads = ChainHeads::default();
        let mut held = heads.hold(["raced", "refused", "moved"]).await;
        let h = |seq: i64| Head {
            seq,
            hash: format!("{seq:064}"),
        };
        let mut sent = HeadColumns::default();
        for user in ["moved", "raced", "refused"] {
            held.set(user, h(1));
            sent.user_id.push(user.to_string());
            sent.seq.push(1);
            sent.hash.push(h(1).hash);
            sent.new_seq.push(2);
            sent.new_hash.push(h(2).hash);
        }
        let written: HashMap<String, bool> =
            sent.user_id.iter().map(|u| (u.clone(), false)).collect();
        // The snapshot saw the head the write chained from for `raced` and `refused`, a later one
        // for `moved`; only `refused` had a reason of its own.
        let seen: HashMap<String, Option<Head>> = [
            ("raced", Some(h(1))),
            ("refused", Some(h(1))),
            ("moved", Some(h(5))),
        ]
        .into_iter()
        .map(|(u, head)| (u.to_string(), head))
        .collect();
        let refused = HashSet::from(["refused".to_string()]);
        note_heads(&mut held, &sent, &written, &seen, &refused);
        assert_eq!(held.unknown(), ["raced"]);
        assert_eq!(held.head("refused").map(|h| h.seq), Some(1));
        assert_eq!(held.head("moved").map(|h| h.seq), Some(5));
    }

    #[tokio::test]
    async fn a_first_round_that_fails_is_the_error_a_later_one_keeps_the_earlier_answers() {
        let heads = ChainHeads::default();
        let mut held = heads.hold(["u"]).await;
        let mut first: Rounds<usize> = Rounds::new(2);
        assert!(first.next().is_some());
        assert!(first.failed(lost(), &mut held, "test").is_err());

        let mut later: Rounds<usize> = Rounds::new(2);
        later.took(vec![Some(7), None]);
        assert!(later.failed(lost(), &mut held, "test").is_ok());
        assert!(later.next().is_none(), "no round after a failed later one");
        assert_eq!(later.finish(0), [7, 0]);
    }
}
