//! One client writes changes one at a time (the gateway at a low rate: every batch holds one
//! change), each recorded then settled as applied, in one of three shapes:
//!
//! - `one-statement`: the gateway's own `record_changes.sql` and `settle_changes.sql`, verbatim,
//!   with arrays of one element, as sqlx sends them (one prepared statement each, Bind, Execute,
//!   Sync, one round trip);
//! - `modest`: one modest statement per write (a few CTEs taking arrays, no locking CTE, the
//!   compare-and-set and the limits in the UPDATE's WHERE), one round trip with either driver;
//! - `sequential`: the same rows written by several simple statements in one transaction, each
//!   awaited before the next is sent (what sqlx can do: one round trip per statement);
//! - `pipelined`: those statements sent at once and their answers read together (what
//!   tokio-postgres does with requests issued concurrently: one round trip per transaction).
//!
//! It prints one JSON line: the wall time per change (record + settle, mean, p50, p99), the
//! measured backend's CPU per change (utime + stime of its process), the whole cluster's CPU per
//! change (the postmaster and its children: WAL writer, checkpointer...), and WAL bytes per change.
//! After the warm-up and half way through, another session runs ANALYZE on the written tables (as
//! bench/run does mid-round), so a plan that flips on fresh statistics shows in the figures.
//!
//! Usage: pipeline-bench <url> <postmaster pid> <variant> <changes> <warmup>

use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};
use uuid::Uuid;

const RECORD_SQL: &str = include_str!("../../../src/store/sql/record_changes.sql");
const SETTLE_SQL: &str = include_str!("../../../src/store/sql/settle_changes.sql");
const CHANNEL: &str = "profile_gateway_change_final";
const TARGETS: [&str; 3] = ["juspay_wallet", "juspay_customer", "razorpay_upi"];
const FIELDS: &str = "mobile_number,email";

// The record as simple statements. The head's compare-and-set, the links version and the pending
// bound are the UPDATE's conditions (re-checked on the latest row version if a concurrent write
// got there first); everything after it writes only if it moved the head.
const R_USER: &str = "update profile_links
    set last_change_seq = last_change_seq + 1, chain_seq = $5, chain_hash = $6
  where user_id = $1 and chain_seq = $2 and chain_hash = $3 and updated_at = $4
    and last_change_seq - finished_seq < $7
  returning last_change_seq, finished_seq";
const R_RELEASE: &str = "update changes
    set idem_key = null, idem_fingerprint = null, idem_in_flight_until = null,
        idem_expires_at = null
  where caller = $1 and user_id = $2 and idem_key = $3 and idem_expires_at <= now()
    and status <> 'pending'";
// No ON CONFLICT: a live key fails the transaction (23505), which the caller reads as a known key.
const R_CHANGE: &str = "insert into changes (id, user_id, user_seq, caller, request_id, trace_id,
    caller_addr, fields, payload_key_id, payload_enc, lease_owner, lease_expires_at, actor,
    idem_key, idem_fingerprint, idem_in_flight_until, idem_expires_at, steps)
  select $1, p.user_id, p.last_change_seq, $3, $4, $5, $6, string_to_array($7, ','), $8, $9,
         $10, now() + make_interval(secs => $11), $12, $13, $14,
         now() + make_interval(secs => $15), now() + make_interval(secs => $16), $17
    from profile_links p where p.user_id = $2 and p.chain_hash = $18
  returning created_at";
const R_EVENT: &str =
    "insert into audit_events (occurred_at, user_id, seq, prev_hash, hash, format,
    event_type, caller, outcome, change_id, fields, \"values\", hmac_key_id, request_id, trace_id,
    caller_addr, actor)
  select $1, c.user_id, $2, $3, $4, 3, 'change_requested', c.caller, 'accepted', c.id,
         c.fields, $5::text::jsonb, $6, c.request_id, c.trace_id, c.caller_addr, c.actor
    from changes c where c.id = $7";

// The settle as simple statements: the fenced update of the change, the user's head and turn,
// the finished event, the NOTIFY, and a last guard that fails the transaction when the change
// was written but the head was not (the head moved: the whole settle is for a completer).
const S_CHANGE: &str = "update changes
    set steps = steps || $3, status = $4, finished_at = $5, updated_at = now(),
        payload_enc = null, payload_key_id = null, payload_expires_at = null,
        lease_owner = null, lease_expires_at = null, idem_in_flight_until = null
  where id = $1 and fence = $2 and status = 'pending'
  returning user_seq";
const S_USER: &str = "update profile_links p
    set finished_seq = greatest(p.finished_seq, c.user_seq), chain_seq = $4, chain_hash = $5
   from changes c
  where p.user_id = $1 and p.chain_seq = $2 and p.chain_hash = $3
    and c.id = $6 and c.finished_at = $7";
const S_EVENT: &str =
    "insert into audit_events (occurred_at, user_id, seq, prev_hash, hash, format,
    event_type, caller, outcome, change_id, fields, \"values\", hmac_key_id, error_code,
    request_id, trace_id, caller_addr, actor)
  select $1, p.user_id, $2, $3, $4, 3, 'change_finished', $5, 'applied', $6,
         string_to_array($7, ','), $8::text::jsonb, null, null, $9, $10, $11, $12::text::jsonb
    from profile_links p where p.user_id = $13 and p.chain_hash = $4";
const S_NOTIFY: &str = "select pg_notify($1, c.user_seq::text || ' ' || c.user_id)
    from changes c where c.id = $2 and c.finished_at = $3";
const S_GUARD: &str = "select pgw_abort('the chain head moved under a settle')
    from changes c where c.id = $1 and c.finished_at = $2
     and not exists (select 1 from profile_links p where p.user_id = c.user_id and p.chain_hash = $3)";

// The same writes as one modest statement each (a few CTEs, no locking CTE, the conditions in the
// UPDATE's WHERE), taking arrays as the gateway's batches do: one round trip without pipelining.
const R_MODEST: &str = "with rel as (
  update changes k
     set idem_key = null, idem_fingerprint = null, idem_in_flight_until = null,
         idem_expires_at = null
    from unnest($13::text[], $14::text[], $22::text[]) as r(user_id, caller, idem_key)
   where k.caller = r.caller and k.user_id = r.user_id and k.idem_key = r.idem_key
     and k.idem_expires_at <= now() and k.status <> 'pending'
  returning 1
), u as (
  update profile_links p
     set last_change_seq = p.last_change_seq + 1, chain_seq = h.new_seq, chain_hash = h.new_hash
    from unnest($1::text[], $2::bigint[], $3::text[], $4::timestamptz[], $5::bigint[], $6::text[])
         as h(user_id, seq, hash, links_version, new_seq, new_hash)
   where p.user_id = h.user_id and p.chain_seq = h.seq and p.chain_hash = h.hash
     and p.updated_at = h.links_version and p.last_change_seq - p.finished_seq < $7
     and (select count(*) from rel) >= 0
  returning p.user_id, p.last_change_seq, p.finished_seq
), ch as (
  insert into changes (id, user_id, user_seq, caller, request_id, trace_id, caller_addr, fields,
      payload_key_id, payload_enc, lease_owner, lease_expires_at, actor, idem_key,
      idem_fingerprint, idem_in_flight_until, idem_expires_at, steps)
  select i.id, u.user_id, u.last_change_seq, i.caller, i.request_id, i.trace_id, i.caller_addr,
         string_to_array(i.fields, ','), i.key_id, i.payload, $8,
         now() + make_interval(secs => $9), i.actor, i.idem_key, i.fp,
         now() + make_interval(secs => $10), now() + make_interval(secs => $11), i.steps
    from unnest($12::uuid[], $13::text[], $14::text[], $15::text[], $16::text[], $17::text[],
                $18::text[], $19::text[], $20::bytea[], $21::jsonb[], $22::text[], $23::bytea[],
                $24::jsonb[])
         as i(id, user_id, caller, request_id, trace_id, caller_addr, fields, key_id, payload,
              actor, idem_key, fp, steps)
    join u on u.user_id = i.user_id
  on conflict (caller, user_id, idem_key) where idem_key is not null do nothing
  returning id, user_id, user_seq, created_at, caller, request_id, trace_id, caller_addr, actor
), ev as (
  insert into audit_events (occurred_at, user_id, seq, prev_hash, hash, format, event_type,
      caller, outcome, change_id, fields, \"values\", hmac_key_id, request_id, trace_id,
      caller_addr, actor)
  select e.occurred_at, ch.user_id, e.seq, e.prev_hash, e.hash, 3, 'change_requested', ch.caller,
         'accepted', ch.id, string_to_array(e.fields, ','), e.vals::jsonb, e.hmac_key_id,
         ch.request_id, ch.trace_id, ch.caller_addr, ch.actor
    from unnest($25::timestamptz[], $26::uuid[], $27::bigint[], $28::text[], $29::text[],
                $30::text[], $31::text[], $32::text[])
         as e(occurred_at, change_id, seq, prev_hash, hash, fields, vals, hmac_key_id)
    join ch on ch.id = e.change_id
  returning 1
)
select ch.id, ch.user_seq, ch.created_at, (select count(*) from ev) as events from ch";
const S_MODEST: &str = "with c as (
  update changes ch
     set steps = ch.steps || s.patch, status = s.status, finished_at = s.finished_at,
         updated_at = now(), payload_enc = null, payload_key_id = null,
         payload_expires_at = null, lease_owner = null, lease_expires_at = null,
         idem_in_flight_until = null
    from unnest($1::uuid[], $2::bigint[], $3::jsonb[], $4::text[], $5::timestamptz[])
         as s(id, fence, patch, status, finished_at)
   where ch.id = s.id and ch.fence = s.fence and ch.status = 'pending'
  returning ch.id, ch.user_id, ch.user_seq
), u as (
  update profile_links p
     set finished_seq = greatest(p.finished_seq, c.user_seq), chain_seq = h.new_seq,
         chain_hash = h.new_hash
    from unnest($6::text[], $7::bigint[], $8::text[], $9::bigint[], $10::text[])
         as h(user_id, seq, hash, new_seq, new_hash)
    join c on c.user_id = h.user_id
   where p.user_id = h.user_id and p.chain_seq = h.seq and p.chain_hash = h.hash
  returning p.user_id
), ev as (
  insert into audit_events (occurred_at, user_id, seq, prev_hash, hash, format, event_type,
      caller, outcome, change_id, fields, \"values\", hmac_key_id, error_code, request_id,
      trace_id, caller_addr, actor)
  select e.occurred_at, c.user_id, e.seq, e.prev_hash, e.hash, 3, e.event_type, e.caller,
         e.outcome, c.id, string_to_array(e.fields, ','), e.vals::jsonb, null, null,
         e.request_id, e.trace_id, e.caller_addr, e.actor::jsonb
    from unnest($11::timestamptz[], $12::uuid[], $13::bigint[], $14::text[], $15::text[],
                $16::text[], $17::text[], $18::text[], $19::text[], $20::text[], $21::text[],
                $22::text[], $23::text[], $24::text[])
         as e(occurred_at, change_id, seq, prev_hash, hash, event_type, caller, outcome, fields,
              vals, request_id, trace_id, caller_addr, actor)
    join c on c.id = e.change_id
  returning 1
), n as (
  select pg_notify($25, c.user_seq::text || ' ' || c.user_id) from c
)
select (select count(*) from c) as settled,
       case when (select count(*) from u) <> (select count(distinct user_id) from c)
            then pgw_abort('the chain head moved under a settle') end as aborted,
       (select count(*) from ev) + (select count(*) from n) as written";

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    OneStatement,
    Modest,
    Sequential,
    Pipelined,
}

struct User {
    id: String,
    version: SystemTime,
    seq: i64,
    hash: String,
}

struct Statements {
    record: Statement,
    settle: Statement,
    record_modest: Statement,
    settle_modest: Statement,
    r: [Statement; 4],
    s: [Statement; 5],
}

/// One change's values, the same in every variant.
struct Change {
    id: Uuid,
    request_id: String,
    trace_id: Option<String>,
    addr: Option<String>,
    payload: Vec<u8>,
    idem_key: String,
    fingerprint: Vec<u8>,
    actor: Value,
    steps: Value,
    requested_values: String,
}

fn hex64(n: u64, salt: u64) -> String {
    format!(
        "{:016x}{:016x}{:016x}{:016x}",
        n,
        salt,
        n ^ salt,
        n.wrapping_mul(31)
    )
}

fn change(i: u64) -> Change {
    let steps = Value::Object(
        (1..=3)
            .map(|n| {
                (
                    n.to_string(),
                    json!({"step_no": n, "target": TARGETS[n - 1],
                           "upstream_ref": format!("obj_{i}_{n}"), "fields": ["mobile_number"],
                           "status": "pending", "attempts": 0, "confirmed_by_read_back": false}),
                )
            })
            .collect(),
    );
    Change {
        id: Uuid::new_v4(),
        request_id: format!("req-{i}"),
        trace_id: Some(hex64(i, 7)[..32].to_string()),
        addr: Some("10.1.2.3".into()),
        payload: (0..180).map(|b| (b as u64 ^ i) as u8).collect(),
        idem_key: format!("key-{i}"),
        fingerprint: hex64(i, 9).into_bytes()[..32].to_vec(),
        actor: json!({"auth": "token", "subject": null, "assertion_subject": null,
                      "assertion_jti": null, "gateway_request_id": format!("gw-{i}")}),
        steps,
        requested_values: format!(
            "{{\"email\": {{\"new\": \"a****@example.com\", \"new_hmac\": \"{}\"}}, \
             \"mobile_number\": {{\"new\": \"******3210\", \"new_hmac\": \"{}\"}}}}",
            hex64(i, 1),
            hex64(i, 2)
        ),
    }
}

fn attempted(c: &Change) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in c.steps.as_object().unwrap() {
        let mut v = v.clone();
        v["status"] = json!("applied");
        v["attempts"] = json!(1);
        for k in [
            "error_code",
            "error_retryable",
            "upstream_status",
            "upstream_code",
            "error_message",
        ] {
            v[k] = Value::Null;
        }
        out.insert(k.clone(), v);
    }
    Value::Object(out)
}

fn finished_values(c: &Change) -> String {
    let steps: Vec<String> = c
        .steps
        .as_object()
        .unwrap()
        .values()
        .map(|s| {
            format!(
                "{{\"fields\": [\"mobile_number\"], \"status\": \"applied\", \"target\": \"{}\", \
                 \"attempt\": 1, \"step_no\": {}, \"error_code\": null, \"upstream_ref\": \"{}\", \
                 \"confirmed_by_read_back\": false}}",
                s["target"].as_str().unwrap(),
                s["step_no"],
                s["upstream_ref"].as_str().unwrap()
            )
        })
        .collect();
    format!("{{\"steps\": [{}]}}", steps.join(", "))
}

type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;
type Owned = Vec<Box<dyn ToSql + Sync + Send>>;

fn refs(o: &Owned) -> Params<'_> {
    o.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect()
}

macro_rules! owned {
    ($($e:expr),* $(,)?) => { vec![$(Box::new($e) as Box<dyn ToSql + Sync + Send>),*] };
}

async fn record(
    db: &Client,
    st: &Statements,
    v: Variant,
    u: &mut User,
    c: &Change,
    hash_no: &mut u64,
) -> Result<(), tokio_postgres::Error> {
    *hash_no += 1;
    let new_hash = hex64(*hash_no, 3);
    let new_seq = u.seq + 1;
    let at = SystemTime::now();
    let actor_text = c.actor.to_string();
    match v {
        Variant::OneStatement => {
            let o: Owned = owned![
                vec![c.id],
                vec![u.id.clone()],
                vec!["bench-app"],
                vec![c.request_id.clone()],
                vec![c.trace_id.clone()],
                vec![c.addr.clone()],
                vec![FIELDS],
                vec!["k1"],
                vec![c.payload.clone()],
                vec![c.idem_key.clone()],
                vec![c.fingerprint.clone()],
                vec![u.version],
                vec![Some(c.actor.clone())],
                vec![c.steps.clone()],
                vec![u.id.clone()],
                vec![u.seq],
                vec![u.hash.clone()],
                vec![new_seq],
                vec![new_hash.clone()],
                vec![at],
                vec![u.id.clone()],
                vec![new_seq],
                vec![u.hash.clone()],
                vec![new_hash.clone()],
                vec![Some(c.id)],
                vec![FIELDS],
                vec![c.requested_values.clone()],
                vec![Some("h1")],
                30.0f64,
                86_400.0f64,
                "bench-replica",
                30.0f64,
                16i64,
                vec![1i64],
                vec![Some(u.version)],
                vec![1i64],
            ];
            let p = refs(&o);
            let rows = db.query(&st.record, &p).await?;
            assert!(
                rows[0].get::<_, Option<i64>>("seq?").is_some(),
                "record refused"
            );
        }
        Variant::Modest => {
            let o: Owned = owned![
                vec![u.id.clone()],
                vec![u.seq],
                vec![u.hash.clone()],
                vec![u.version],
                vec![new_seq],
                vec![new_hash.clone()],
                16i64,
                "bench-replica",
                30.0f64,
                30.0f64,
                86_400.0f64,
                vec![c.id],
                vec![u.id.clone()],
                vec!["bench-app"],
                vec![c.request_id.clone()],
                vec![c.trace_id.clone()],
                vec![c.addr.clone()],
                vec![FIELDS],
                vec!["k1"],
                vec![c.payload.clone()],
                vec![Some(c.actor.clone())],
                vec![c.idem_key.clone()],
                vec![c.fingerprint.clone()],
                vec![c.steps.clone()],
                vec![at],
                vec![c.id],
                vec![new_seq],
                vec![u.hash.clone()],
                vec![new_hash.clone()],
                vec![FIELDS],
                vec![c.requested_values.clone()],
                vec![Some("h1")],
            ];
            let rows = db.query(&st.record_modest, &refs(&o)).await?;
            assert_eq!(rows.len(), 1, "record refused");
            assert_eq!(rows[0].get::<_, i64>("events"), 1);
        }
        Variant::Sequential | Variant::Pipelined => {
            let p_user: Params = vec![
                &u.id, &u.seq, &u.hash, &u.version, &new_seq, &new_hash, &16i64,
            ];
            let p_rel: Params = vec![&"bench-app", &u.id, &c.idem_key];
            let p_change: Params = vec![
                &c.id,
                &u.id,
                &"bench-app",
                &c.request_id,
                &c.trace_id,
                &c.addr,
                &FIELDS,
                &"k1",
                &c.payload,
                &"bench-replica",
                &30.0f64,
                &c.actor,
                &c.idem_key,
                &c.fingerprint,
                &30.0f64,
                &86_400.0f64,
                &c.steps,
                &new_hash,
            ];
            let p_event: Params = vec![
                &at,
                &new_seq,
                &u.hash,
                &new_hash,
                &c.requested_values,
                &"h1",
                &c.id,
            ];
            let _ = &actor_text;
            transaction(
                db,
                v,
                &[
                    (&st.r[0], p_user),
                    (&st.r[1], p_rel),
                    (&st.r[2], p_change),
                    (&st.r[3], p_event),
                ],
                &[1, 0, 1, 1],
            )
            .await?;
        }
    }
    u.seq = new_seq;
    u.hash = new_hash;
    Ok(())
}

async fn settle(
    db: &Client,
    st: &Statements,
    v: Variant,
    u: &mut User,
    c: &Change,
    hash_no: &mut u64,
) -> Result<(), tokio_postgres::Error> {
    *hash_no += 1;
    let new_hash = hex64(*hash_no, 3);
    let new_seq = u.seq + 1;
    let at = SystemTime::now();
    let patch = attempted(c);
    let values = finished_values(c);
    let actor_text = c.actor.to_string();
    match v {
        Variant::OneStatement => {
            let o: Owned = owned![
                vec![c.id],
                vec![1i64],
                vec![u.id.clone()],
                vec![Some("applied")],
                vec![Some(at)],
                vec![patch.clone()],
                Vec::<i64>::new(),
                Vec::<Uuid>::new(),
                Vec::<&str>::new(),
                Vec::<&str>::new(),
                Vec::<&str>::new(),
                vec![u.id.clone()],
                vec![u.seq],
                vec![u.hash.clone()],
                vec![new_seq],
                vec![new_hash.clone()],
                vec![1i64],
                vec![at],
                vec![u.id.clone()],
                vec![new_seq],
                vec![u.hash.clone()],
                vec![new_hash.clone()],
                vec!["change_finished"],
                vec!["bench-app"],
                vec!["applied"],
                vec![Some(c.id)],
                vec![None::<i32>],
                vec![None::<&str>],
                vec![None::<&str>],
                vec![FIELDS],
                vec![values.clone()],
                vec![None::<&str>],
                vec![None::<&str>],
                vec![Some(c.request_id.clone())],
                vec![c.trace_id.clone()],
                vec![c.addr.clone()],
                vec![Some(actor_text.clone())],
                0.0f64,
                CHANNEL,
            ];
            let p = refs(&o);
            let rows = db.query(&st.settle, &p).await?;
            assert!(rows[0].get::<_, bool>("settled!"), "settle refused");
        }
        Variant::Modest => {
            let o: Owned = owned![
                vec![c.id],
                vec![1i64],
                vec![patch.clone()],
                vec!["applied"],
                vec![at],
                vec![u.id.clone()],
                vec![u.seq],
                vec![u.hash.clone()],
                vec![new_seq],
                vec![new_hash.clone()],
                vec![at],
                vec![c.id],
                vec![new_seq],
                vec![u.hash.clone()],
                vec![new_hash.clone()],
                vec!["change_finished"],
                vec!["bench-app"],
                vec!["applied"],
                vec![FIELDS],
                vec![values.clone()],
                vec![c.request_id.clone()],
                vec![c.trace_id.clone()],
                vec![c.addr.clone()],
                vec![actor_text.clone()],
                CHANNEL,
            ];
            let rows = db.query(&st.settle_modest, &refs(&o)).await?;
            assert_eq!(rows[0].get::<_, i64>("settled"), 1, "settle refused");
            assert_eq!(rows[0].get::<_, i64>("written"), 2);
        }
        Variant::Sequential | Variant::Pipelined => {
            let p_change: Params = vec![&c.id, &1i64, &patch, &"applied", &at];
            let p_user: Params = vec![&u.id, &u.seq, &u.hash, &new_seq, &new_hash, &c.id, &at];
            let p_event: Params = vec![
                &at,
                &new_seq,
                &u.hash,
                &new_hash,
                &"bench-app",
                &c.id,
                &FIELDS,
                &values,
                &c.request_id,
                &c.trace_id,
                &c.addr,
                &actor_text,
                &u.id,
            ];
            let p_notify: Params = vec![&CHANNEL, &c.id, &at];
            let p_guard: Params = vec![&c.id, &at, &new_hash];
            transaction(
                db,
                v,
                &[
                    (&st.s[0], p_change),
                    (&st.s[1], p_user),
                    (&st.s[2], p_event),
                    (&st.s[3], p_notify),
                    (&st.s[4], p_guard),
                ],
                &[1, 1, 1, 1, 0],
            )
            .await?;
        }
    }
    u.seq = new_seq;
    u.hash = new_hash;
    Ok(())
}

/// BEGIN, the statements, COMMIT: awaited one by one, or all sent before any answer is read.
/// `rows` is how many rows each statement must touch (a bench that silently wrote nothing would
/// measure nothing).
async fn transaction(
    db: &Client,
    v: Variant,
    stmts: &[(&Statement, Params<'_>)],
    rows: &[u64],
) -> Result<(), tokio_postgres::Error> {
    if v == Variant::Sequential {
        db.batch_execute("begin").await?;
        for ((s, p), &want) in stmts.iter().zip(rows) {
            let n = db.execute(*s, p).await?;
            assert_eq!(n, want, "{:?}", s.columns());
        }
        db.batch_execute("commit").await?;
        return Ok(());
    }
    let begin = db.batch_execute("begin");
    let each = futures_util::future::join_all(stmts.iter().map(|(s, p)| db.execute(*s, p)));
    let commit = db.batch_execute("commit");
    let (b, each, c) = tokio::join!(begin, each, commit);
    b?;
    for (n, &want) in each.into_iter().zip(rows) {
        assert_eq!(n?, want);
    }
    c
}

fn ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn cluster_ticks(postmaster: u32) -> u64 {
    let mut total = ticks(postmaster);
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|a| a.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        if ppid == Some(postmaster) {
            total += ticks(pid);
        }
    }
    total
}

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("connection: {e}");
        }
    });
    // As the gateway's pool sets it (src/db.rs).
    client
        .batch_execute("set plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    client
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, postmaster, variant, n, warmup] = &args[..] else {
        eprintln!("usage: pipeline-bench <url> <postmaster pid> <variant> <changes> <warmup>");
        std::process::exit(2);
    };
    let postmaster: u32 = postmaster.parse().unwrap();
    let shape = |name: &str| match name {
        "one-statement" => Variant::OneStatement,
        "modest" => Variant::Modest,
        "sequential" => Variant::Sequential,
        "pipelined" => Variant::Pipelined,
        other => panic!("unknown variant {other}"),
    };
    // `shape` for both writes, or `record shape/settle shape`.
    let (rv, sv) = match variant.split_once('/') {
        Some((r, s)) => (shape(r), shape(s)),
        None => (shape(variant), shape(variant)),
    };
    let n: usize = n.parse().unwrap();
    let warmup: usize = warmup.parse().unwrap();
    let db = connect(url).await;
    let backend: i32 = db
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let prep = |sql: &'static str| db.prepare(sql);
    let st = Statements {
        record: prep(RECORD_SQL).await.unwrap(),
        settle: prep(SETTLE_SQL).await.unwrap(),
        record_modest: prep(R_MODEST).await.unwrap(),
        settle_modest: prep(S_MODEST).await.unwrap(),
        r: [
            prep(R_USER).await.unwrap(),
            prep(R_RELEASE).await.unwrap(),
            prep(R_CHANGE).await.unwrap(),
            prep(R_EVENT).await.unwrap(),
        ],
        s: [
            prep(S_CHANGE).await.unwrap(),
            prep(S_USER).await.unwrap(),
            prep(S_EVENT).await.unwrap(),
            prep(S_NOTIFY).await.unwrap(),
            prep(S_GUARD).await.unwrap(),
        ],
    };
    let mut users: Vec<User> = db
        .query(
            "select user_id, updated_at, chain_seq, chain_hash from profile_links order by user_id",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| User {
            id: r.get(0),
            version: r.get(1),
            seq: r.get(2),
            hash: r.get(3),
        })
        .collect();
    let index: HashMap<String, usize> = users
        .iter()
        .enumerate()
        .map(|(i, u)| (u.id.clone(), i))
        .collect();
    assert_eq!(index.len(), users.len());
    let salt = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut hash_no = salt << 20;
    let mut lat = Vec::with_capacity(n);
    // The record's share: its wall time and its backend ticks.
    let mut halves = (Duration::ZERO, 0u64);
    let (mut t0, mut b0, mut c0, mut w0) = (0, 0, 0, String::new());
    for i in 0..warmup + n {
        if i == warmup {
            w0 = db
                .query_one("select pg_current_wal_insert_lsn()::text", &[])
                .await
                .unwrap()
                .get(0);
            t0 = ticks(backend as u32);
            c0 = cluster_ticks(postmaster);
        }
        // After the warm-up, so that the measured plans are those of tables with rows in them,
        // and half way through, so that a plan that flips on fresh statistics shows.
        if i + 1 == warmup || i == warmup + n / 2 {
            let other = connect(url).await;
            other
                .batch_execute("analyze changes, profile_links, audit_events")
                .await
                .unwrap();
        }
        let len = users.len();
        let u = &mut users[i % len];
        let c = change((salt << 24) + i as u64);
        let started = Instant::now();
        let b = ticks(backend as u32);
        record(&db, &st, rv, u, &c, &mut hash_no).await.unwrap();
        let (recorded, rb) = (started.elapsed(), ticks(backend as u32));
        settle(&db, &st, sv, u, &c, &mut hash_no).await.unwrap();
        if i >= warmup {
            lat.push(started.elapsed());
            halves.0 += recorded;
            halves.1 += rb - b;
        }
        if i == warmup + n - 1 {
            b0 = ticks(backend as u32) - t0;
            t0 = cluster_ticks(postmaster) - c0;
        }
    }
    let wal: i64 = db
        .query_one(
            "select (pg_current_wal_insert_lsn() - $1::text::pg_lsn)::bigint",
            &[&w0],
        )
        .await
        .unwrap()
        .get(0);
    let applied: i64 = db
        .query_one("select count(*) from changes where status = 'applied'", &[])
        .await
        .unwrap()
        .get(0);
    lat.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = lat.iter().map(|d| us(*d)).sum::<f64>() / n as f64;
    let pct = |p: f64| us(lat[((n as f64 * p) as usize).min(n - 1)]);
    let hz = 100.0; // CLK_TCK on Linux
    println!(
        "{}",
        json!({
            "variant": variant, "changes": n, "applied_in_db": applied,
            "latency_us": {"mean": mean.round(), "p50": pct(0.5).round(), "p99": pct(0.99).round()},
            "backend_cpu_us_per_change": (b0 as f64 * 1e6 / hz / n as f64).round(),
            "record_latency_us": (us(halves.0) / n as f64).round(),
            "record_backend_cpu_us": (halves.1 as f64 * 1e6 / hz / n as f64).round(),
            "cluster_cpu_us_per_change": (t0 as f64 * 1e6 / hz / n as f64).round(),
            "wal_bytes_per_change": wal / n as i64,
        })
    );
}
