//! `audit verify`: re-walks every user's chain of audit events and recomputes each hash here, in
//! Rust, from the stored columns (independently of the database's own functions), then checks the
//! chain against its recorded head and retention anchors. Also computes the digest of all chain
//! heads that operators keep outside the database.
//!
//! The canonical encodings (also in the migrations and docs/auditing.md). An event without an actor
//! has version 1 (migration 20261122000003): the tag `pgw-audit-v1`, then each field as
//! `<byte length>:<utf-8 bytes>` or `~` for NULL, in the order id, occurred_at (microseconds since
//! the Unix epoch), user_id, seq, prev_hash, event_type, caller, outcome, change_id, step_no,
//! target, upstream_ref, fields (element count, then each element), values (jsonb's text form),
//! hmac_key_id, error_code, request_id, trace_id, caller_addr. An event with an actor has version 2
//! (migration 20261201000700): the tag `pgw-audit-v2`, the same fields in the same order except
//! that fields is one field, the jsonb text form of the array (`["a", "b"]`), then the actor's
//! jsonb text form last. An event the gateway chained itself (`format` = 3, migration
//! 20261202000200, written by `audit::chain`) has version 3: the tag `pgw-audit-v3` and the v2
//! fields without `id` (the database assigns it after the hash is computed; `(user_id, seq)`
//! names the event), the actor `~` when there is none. `hash` = lowercase hex SHA-256 of that; the
//! first event of a chain has `prev_hash` = 64 zeros.
//!
//! Over 400 lines on purpose: the encodings and the walk that re-hashes with them are one independent
//! re-implementation of the chain, read and reviewed together so they cannot drift apart.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

/// `prev_hash` of the first event of every chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Events younger than this are left out of a default digest, so that a transaction still in
/// flight when the digest is taken cannot make a later comparison fail.
pub const DIGEST_SETTLE_SECS: i64 = 5;

#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this user's chain (the digest still covers every chain).
    pub user: Option<String>,
    /// Only events from this time on (each chain is checked from the event just before it).
    pub since: Option<DateTime<Utc>>,
    /// The digest covers events that occurred at or before this time (default: the database
    /// clock minus [`DIGEST_SETTLE_SECS`]).
    pub as_of: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// The stored hash does not match the event's content: a field was changed.
    Altered,
    /// `prev_hash` is not the previous event's hash.
    BrokenLink,
    /// The event links to another event of the chain than the one before it: rows were reordered.
    Reordered,
    /// A sequence number is missing (an event was removed) or the chain starts late.
    Gap,
    /// Two events carry the same sequence number.
    Duplicate,
    /// The chain does not end where its head says it does (events removed or added at the end).
    HeadMismatch,
    /// A retention anchor that no `partition_detached` event accounts for, or that does not match it.
    AnchorMismatch,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Altered => "altered",
            Self::BrokenLink => "broken_link",
            Self::Reordered => "reordered",
            Self::Gap => "gap",
            Self::Duplicate => "duplicate",
            Self::HeadMismatch => "head_mismatch",
            Self::AnchorMismatch => "anchor_mismatch",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Problem {
    pub user_id: String,
    pub seq: Option<i64>,
    pub event_id: Option<i64>,
    pub kind: ProblemKind,
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} user={}", self.kind.as_str(), self.user_id)?;
        if let Some(seq) = self.seq {
            write!(f, " seq={seq}")?;
        }
        if let Some(id) = self.event_id {
            write!(f, " event_id={id}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub chains: usize,
    pub events: usize,
    /// The first problem of each broken chain, plus anchor problems.
    pub problems: Vec<Problem>,
    pub as_of: DateTime<Utc>,
    /// `v1:<as_of, microseconds since the epoch>:<sha256 hex>`.
    pub digest: String,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One stored event, as the verifier reads it.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub id: i64,
    pub occurred_at: DateTime<Utc>,
    pub user_id: String,
    pub seq: i64,
    pub prev_hash: String,
    pub hash: String,
    pub event_type: String,
    pub caller: String,
    pub outcome: String,
    pub change_id: Option<Uuid>,
    pub step_no: Option<i32>,
    pub target: Option<String>,
    pub upstream_ref: Option<String>,
    pub fields: Vec<String>,
    /// `fields` is not a flat list of strings (a NULL element, or more dimensions): the gateway
    /// never writes one, and `fields` is then read as empty. The event is reported as altered.
    pub fields_malformed: bool,
    /// jsonb's text form of `values`.
    pub values_text: String,
    pub hmac_key_id: Option<String>,
    pub error_code: Option<String>,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub caller_addr: Option<String>,
    /// jsonb's text form of `actor`; `None` for an event without one (encoding v1).
    pub actor_text: Option<String>,
    /// 3 for an event the gateway chained (encoding v3); `None` for one the database chained.
    pub format: Option<i16>,
}

fn put(out: &mut Vec<u8>, v: Option<&str>) {
    use std::io::Write;
    match v {
        None => out.push(b'~'),
        Some(s) => {
            // Into the buffer, not through a `String` per field: every event is encoded on
            // the write path (bench/README.md, "Where the gateway's CPU goes").
            let _ = write!(out, "{}:", s.len());
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// [`put`] of a number, a uuid or a time's text, formatted on the stack (all fit in 40 bytes).
fn put_display(out: &mut Vec<u8>, v: impl std::fmt::Display) {
    use std::io::Write;
    let mut buf = [0u8; 40];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let written = write!(cursor, "{v}").is_ok();
    let len = cursor.position() as usize;
    match std::str::from_utf8(&buf[..len]) {
        Ok(text) if written => put(out, Some(text)),
        _ => put(out, Some(&v.to_string())),
    }
}

/// A string as PostgreSQL's jsonb text form writes it (`escape_json`): `"` and `\` escaped, the
/// control characters as `\b \f \n \r \t` or `\u00XX` (lower-case hex), everything else as is.
pub(crate) fn jsonb_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON value as PostgreSQL's jsonb text form writes it, so that the gateway can hash what the
/// database will store: object keys shortest first, then bytewise (jsonb's order), `", "` and
/// `": "` between items. Numbers as `numeric` writes the shortest form that reads back the same
/// (tests/it/audit_chain.rs compares both on odd values).
pub fn jsonb_text(v: &serde_json::Value) -> String {
    let mut out = String::new();
    write_jsonb(&mut out, v);
    out
}

fn write_jsonb(out: &mut String, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (_, Some(u), _) => out.push_str(&u.to_string()),
            // numeric's text form: plain digits, no exponent (Rust's Display), no negative zero.
            (_, _, Some(0.0)) => out.push('0'),
            (_, _, Some(f)) => out.push_str(&f.to_string()),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => jsonb_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_jsonb(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| {
                a.len()
                    .cmp(&b.len())
                    .then_with(|| a.as_bytes().cmp(b.as_bytes()))
            });
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                jsonb_string(out, k);
                out.push_str(": ");
                write_jsonb(out, &map[k]);
            }
            out.push('}');
        }
    }
}

/// `to_jsonb(fields)::text`: `["a", "b"]`, `[]` for none.
pub fn jsonb_text_array(items: &[String]) -> String {
    let mut out = String::new();
    write_jsonb_text_array(&mut out, items);
    out
}

pub(crate) fn write_jsonb_text_array(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        jsonb_string(out, s);
    }
    out.push(']');
}

/// The canonical encoding of an event (see the module docs): v3 when the gateway chained it, else
/// v1 without an actor, v2 with one.
pub fn canonical(e: &EventRow) -> Vec<u8> {
    let v3 = e.format == Some(3);
    let v2 = v3 || e.actor_text.is_some();
    // One allocation for the whole encoding: the texts plus room for the prefixes.
    let mut out = Vec::with_capacity(
        256 + e.values_text.len() + e.actor_text.as_ref().map_or(0, String::len),
    );
    out.extend_from_slice(if v3 {
        b"pgw-audit-v3"
    } else if v2 {
        b"pgw-audit-v2"
    } else {
        b"pgw-audit-v1"
    });
    if !v3 {
        put_display(&mut out, e.id);
    }
    put_display(&mut out, e.occurred_at.timestamp_micros());
    put(&mut out, Some(&e.user_id));
    put_display(&mut out, e.seq);
    put(&mut out, Some(&e.prev_hash));
    put(&mut out, Some(&e.event_type));
    put(&mut out, Some(&e.caller));
    put(&mut out, Some(&e.outcome));
    match e.change_id {
        Some(id) => put_display(&mut out, id),
        None => put(&mut out, None),
    }
    match e.step_no {
        Some(n) => put_display(&mut out, n),
        None => put(&mut out, None),
    }
    put(&mut out, e.target.as_deref());
    put(&mut out, e.upstream_ref.as_deref());
    if v2 {
        put(&mut out, Some(&jsonb_text_array(&e.fields)));
    } else {
        put_display(&mut out, e.fields.len());
        for f in &e.fields {
            put(&mut out, Some(f));
        }
    }
    put(&mut out, Some(&e.values_text));
    put(&mut out, e.hmac_key_id.as_deref());
    put(&mut out, e.error_code.as_deref());
    put(&mut out, e.request_id.as_deref());
    put(&mut out, e.trace_id.as_deref());
    put(&mut out, e.caller_addr.as_deref());
    if v2 {
        put(&mut out, e.actor_text.as_deref());
    }
    out
}

pub fn event_hash(e: &EventRow) -> String {
    hex::encode(Sha256::digest(canonical(e)))
}

struct Anchor {
    seq: i64,
    hash: String,
}

/// Where the walk of one chain starts.
enum Start<'a> {
    /// Seq 1, linked to [`GENESIS`].
    Genesis,
    /// After a detached partition: seq anchor+1, linked to the anchor's hash.
    Anchor(&'a Anchor),
    /// `--since`: the event with this seq is taken as given (its own hash is still checked).
    Trusted(i64),
}

/// Walks one chain (rows sorted by seq) and returns its first problem.
fn walk(user: &str, rows: &[EventRow], start: Start<'_>) -> Option<Problem> {
    let problem = |row: &EventRow, kind: ProblemKind, detail: String| Problem {
        user_id: user.to_string(),
        seq: Some(row.seq),
        event_id: Some(row.id),
        kind,
        detail,
    };
    let skip_to = match &start {
        Start::Anchor(a) => a.seq,
        _ => i64::MIN,
    };
    let rows: Vec<&EventRow> = rows.iter().filter(|r| r.seq > skip_to).collect();
    let hashes: HashSet<&str> = rows.iter().map(|r| r.hash.as_str()).collect();
    let mut last: Option<&EventRow> = None;
    for row in rows {
        match last {
            None => {
                let (want_seq, want_prev) = match &start {
                    Start::Genesis => (1, Some(GENESIS)),
                    Start::Anchor(a) => (a.seq + 1, Some(a.hash.as_str())),
                    Start::Trusted(s) => (*s, None),
                };
                if row.seq != want_seq {
                    return Some(problem(
                        row,
                        ProblemKind::Gap,
                        format!(
                            "the chain starts at seq {} where seq {want_seq} was expected",
                            row.seq
                        ),
                    ));
                }
                if let Some(prev) = want_prev
                    && row.prev_hash != prev
                {
                    return Some(problem(
                        row,
                        ProblemKind::BrokenLink,
                        "the first event does not link to the chain's start".into(),
                    ));
                }
            }
            Some(prev) => {
                if row.seq == prev.seq {
                    return Some(problem(
                        row,
                        ProblemKind::Duplicate,
                        format!("seq {} appears twice", row.seq),
                    ));
                }
                if row.seq != prev.seq + 1 {
                    return Some(problem(
                        row,
                        ProblemKind::Gap,
                        format!("seq {} follows seq {}", row.seq, prev.seq),
                    ));
                }
                if row.prev_hash != prev.hash {
                    let (kind, detail) = if hashes.contains(row.prev_hash.as_str()) {
                        (
                            ProblemKind::Reordered,
                            "the event links to another event of the chain than the one before it",
                        )
                    } else {
                        (
                            ProblemKind::BrokenLink,
                            "prev_hash is not the previous event's hash",
                        )
                    };
                    return Some(problem(row, kind, detail.into()));
                }
            }
        }
        if row.fields_malformed {
            return Some(problem(
                row,
                ProblemKind::Altered,
                "fields is not a flat list of names (a NULL element or more than one dimension)"
                    .into(),
            ));
        }
        let computed = event_hash(row);
        if computed != row.hash {
            return Some(problem(
                row,
                ProblemKind::Altered,
                "the stored hash does not match the event's content".into(),
            ));
        }
        last = Some(row);
    }
    None
}

/// Verifies the chains selected by `filter` and computes the digest of all chain heads.
/// Works on any connection, including an open transaction.
/// Checks every chain (or `filter.user`'s) and computes the digest, reading the events, the heads
/// and the anchors in one snapshot: read one by one, a change written between two reads would show
/// as a head that does not match its chain. On a connection already in a transaction, that
/// transaction's snapshot is used (REPEATABLE READ, or locks that keep writers out, make it one).
pub async fn verify(conn: &mut PgConnection, filter: &Filter) -> Result<Report, sqlx::Error> {
    if conn.is_in_transaction() {
        return verify_in(conn, filter).await;
    }
    let mut tx = conn
        .begin_with("start transaction isolation level repeatable read read only")
        .await?;
    let report = verify_in(&mut tx, filter).await;
    tx.rollback().await?;
    report
}

async fn verify_in(conn: &mut PgConnection, filter: &Filter) -> Result<Report, sqlx::Error> {
    let rows = sqlx::query_file!("src/audit/sql/verify_chains.sql", filter.user, filter.since,)
        .fetch_all(&mut *conn)
        .await?;
    let heads: HashMap<String, (i64, String)> = sqlx::query!(
        r#"select user_id as "user_id!", seq as "seq!", hash as "hash!" from audit_heads
            where ($1::text is null or user_id = $1)"#,
        filter.user,
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|h| (h.user_id, (h.seq, h.hash)))
    .collect();
    let anchor_rows = sqlx::query!(
        "select user_id, seq, hash, partition_name from audit_chain_anchors order by user_id, seq"
    )
    .fetch_all(&mut *conn)
    .await?;

    let mut problems = Vec::new();
    let mut anchors: HashMap<String, Anchor> = HashMap::new();
    let mut by_partition: BTreeMap<String, Vec<(String, i64, String)>> = BTreeMap::new();
    for a in anchor_rows {
        by_partition
            .entry(a.partition_name.clone())
            .or_default()
            .push((a.user_id.clone(), a.seq, a.hash.clone()));
        // Rows are ordered by seq: the last anchor of a user is where its chain resumes.
        anchors.insert(
            a.user_id,
            Anchor {
                seq: a.seq,
                hash: a.hash,
            },
        );
    }
    problems.extend(check_anchors(&mut *conn, by_partition).await?);

    // Group the rows by user, keeping each chain's start.
    let mut chains: BTreeMap<String, (i64, Vec<EventRow>)> = BTreeMap::new();
    let mut events = 0;
    for r in rows {
        events += 1;
        let entry = chains
            .entry(r.user_id.clone())
            .or_insert_with(|| (r.from_seq, Vec::new()));
        entry.1.push(EventRow {
            id: r.id,
            occurred_at: r.occurred_at,
            user_id: r.user_id,
            seq: r.seq,
            prev_hash: r.prev_hash,
            hash: r.hash,
            event_type: r.event_type,
            caller: r.caller,
            outcome: r.outcome,
            change_id: r.change_id,
            step_no: r.step_no,
            target: r.target,
            upstream_ref: r.upstream_ref,
            fields_malformed: r.fields.is_none(),
            fields: r.fields.unwrap_or_default(),
            values_text: r.values_text,
            hmac_key_id: r.hmac_key_id,
            error_code: r.error_code,
            request_id: r.request_id,
            trace_id: r.trace_id,
            caller_addr: r.caller_addr,
            actor_text: r.actor_text,
            format: r.format,
        });
    }
    for (user, (from_seq, rows)) in &chains {
        let anchor = anchors.get(user);
        let start = match anchor {
            Some(a) if *from_seq <= a.seq => Start::Anchor(a),
            _ if *from_seq <= 0 => Start::Genesis,
            _ => Start::Trusted(*from_seq),
        };
        if let Some(p) = walk(user, rows, start) {
            problems.push(p);
            continue;
        }
        let last = rows.last().expect("a chain has at least one row");
        match heads.get(user) {
            Some((seq, hash)) if *seq == last.seq && *hash == last.hash => {}
            Some((seq, _)) => problems.push(Problem {
                user_id: user.clone(),
                seq: Some(last.seq),
                event_id: Some(last.id),
                kind: ProblemKind::HeadMismatch,
                detail: format!(
                    "the chain ends at seq {} but its head is seq {seq}",
                    last.seq
                ),
            }),
            None => problems.push(Problem {
                user_id: user.clone(),
                seq: Some(last.seq),
                event_id: Some(last.id),
                kind: ProblemKind::HeadMismatch,
                detail: "the chain has no head".into(),
            }),
        }
    }
    // Heads whose chain is gone entirely (unless every event was detached by retention).
    if filter.since.is_none() {
        for (user, (seq, hash)) in &heads {
            if chains.contains_key(user) {
                continue;
            }
            let detached = anchors
                .get(user)
                .is_some_and(|a| a.seq == *seq && a.hash == *hash);
            if !detached && *seq > 0 {
                problems.push(Problem {
                    user_id: user.clone(),
                    seq: Some(*seq),
                    event_id: None,
                    kind: ProblemKind::Gap,
                    detail: format!("the head is at seq {seq} but no event of the chain remains"),
                });
            }
        }
    }

    let as_of = match filter.as_of {
        Some(t) => t,
        None => {
            sqlx::query_scalar!(
                r#"select now() - make_interval(secs => $1) as "t!""#,
                DIGEST_SETTLE_SECS as f64
            )
            .fetch_one(&mut *conn)
            .await?
        }
    };
    let digest = digest(&mut *conn, as_of).await?;
    Ok(Report {
        chains: chains.len(),
        events,
        problems,
        as_of,
        digest,
    })
}

/// Every anchor set must be the one its `partition_detached` event recorded.
async fn check_anchors(
    conn: &mut PgConnection,
    by_partition: BTreeMap<String, Vec<(String, i64, String)>>,
) -> Result<Vec<Problem>, sqlx::Error> {
    let detaches = sqlx::query!(
        r#"select id, seq, "values"->>'partition' as "partition", "values"->>'anchors_sha256' as anchors_sha256
             from audit_events
            where user_id = '_system' and event_type = 'partition_detached'"#
    )
    .fetch_all(&mut *conn)
    .await?;
    let recorded: HashMap<String, (i64, i64, Option<String>)> = detaches
        .into_iter()
        .filter_map(|d| {
            let name = d.partition?;
            let name = name.rsplit('.').next().unwrap_or(&name).to_string();
            Some((name, (d.id, d.seq, d.anchors_sha256)))
        })
        .collect();
    let mut problems = Vec::new();
    for (partition, mut anchors) in by_partition {
        anchors.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut text = String::new();
        for (user, seq, hash) in &anchors {
            text.push_str(&format!("{user}\t{seq}\t{hash}\n"));
        }
        let sha = hex::encode(Sha256::digest(text.as_bytes()));
        match recorded.get(&partition) {
            Some((_, _, Some(want))) if *want == sha => {}
            Some((id, seq, _)) => problems.push(Problem {
                user_id: "_system".into(),
                seq: Some(*seq),
                event_id: Some(*id),
                kind: ProblemKind::AnchorMismatch,
                detail: format!("the anchors of {partition} differ from those its detach recorded"),
            }),
            None => problems.push(Problem {
                user_id: "_system".into(),
                seq: None,
                event_id: None,
                kind: ProblemKind::AnchorMismatch,
                detail: format!(
                    "anchors for {partition}, which no partition_detached event records"
                ),
            }),
        }
    }
    Ok(problems)
}

/// The digest of every chain head as of `as_of`: for each user (in byte order), the event of
/// highest seq among those that occurred at or before `as_of` (or the retention anchor when the
/// chain's older events were detached), as `user\tseq\thash\n`, hashed with SHA-256.
pub async fn digest(conn: &mut PgConnection, as_of: DateTime<Utc>) -> Result<String, sqlx::Error> {
    let rows = sqlx::query!(
        r#"select user_id as "user_id!", seq as "seq!", hash as "hash!" from (
             select distinct on (user_id) user_id, seq, hash
               from audit_events where occurred_at <= $1
              order by user_id, seq desc) as live
           union all
           select user_id, seq, hash from audit_chain_anchors where range_end <= $1"#,
        as_of
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut heads: BTreeMap<Vec<u8>, (i64, String)> = BTreeMap::new();
    for r in rows {
        let entry = heads
            .entry(r.user_id.into_bytes())
            .or_insert((r.seq, r.hash.clone()));
        if r.seq > entry.0 {
            *entry = (r.seq, r.hash);
        }
    }
    let mut hasher = Sha256::new();
    for (user, (seq, hash)) in &heads {
        hasher.update(user);
        hasher.update(format!("\t{seq}\t{hash}\n").as_bytes());
    }
    Ok(format!(
        "v1:{}:{}",
        as_of.timestamp_micros(),
        hex::encode(hasher.finalize())
    ))
}

/// The time a digest was taken at, from its text.
pub fn digest_as_of(digest: &str) -> Option<DateTime<Utc>> {
    let mut parts = digest.trim().split(':');
    if parts.next()? != "v1" {
        return None;
    }
    let micros: i64 = parts.next()?.parse().ok()?;
    let hash = parts.next()?;
    if hash.len() != 64 || parts.next().is_some() {
        return None;
    }
    DateTime::from_timestamp_micros(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, prev: &str) -> EventRow {
        let mut r = EventRow {
            id: seq,
            occurred_at: DateTime::from_timestamp_micros(1_767_225_600_123_456).unwrap(),
            user_id: "alice".into(),
            seq,
            prev_hash: prev.into(),
            hash: String::new(),
            event_type: "change_requested".into(),
            caller: "app".into(),
            outcome: "accepted".into(),
            change_id: None,
            step_no: Some(1),
            target: None,
            upstream_ref: None,
            fields: vec!["mobile_number".into()],
            fields_malformed: false,
            values_text: "{}".into(),
            hmac_key_id: None,
            error_code: None,
            request_id: Some("r".into()),
            trace_id: None,
            caller_addr: None,
            actor_text: None,
            format: None,
        };
        r.hash = event_hash(&r);
        r
    }

    #[test]
    fn canonical_encoding_is_length_prefixed() {
        let r = row(1, GENESIS);
        let text = String::from_utf8(canonical(&r)).unwrap();
        assert_eq!(
            text,
            format!(
                "pgw-audit-v11:116:17672256001234565:alice1:164:{GENESIS}16:change_requested3:app8:accepted~1:1~~1:113:mobile_number2:{{}}~~1:r~~"
            )
        );
    }

    #[test]
    fn version_2_adds_the_actor_and_encodes_fields_as_jsonb() {
        let mut r = row(1, GENESIS);
        r.fields = vec!["mobile_number".into(), "a\"b\\c\n\u{1}é".into()];
        r.actor_text = Some(r#"{"auth": "token"}"#.into());
        let text = String::from_utf8(canonical(&r)).unwrap();
        assert_eq!(
            text,
            format!(
                "pgw-audit-v21:116:17672256001234565:alice1:164:{GENESIS}16:change_requested3:app8:accepted~1:1~~38:[\"mobile_number\", \"a\\\"b\\\\c\\n\\u0001é\"]2:{{}}~~1:r~~17:{{\"auth\": \"token\"}}"
            )
        );
        assert_eq!(jsonb_text_array(&[]), "[]");
        // The actor is part of the hash: another actor, or none (v1), is another hash.
        let h = event_hash(&r);
        r.actor_text = Some(r#"{"auth": "jwt"}"#.into());
        assert_ne!(event_hash(&r), h);
        r.actor_text = None;
        assert_ne!(event_hash(&r), h);
    }

    #[test]
    fn walk_flags_the_first_problem() {
        let a = row(1, GENESIS);
        let b = row(2, &a.hash);
        let c = row(3, &b.hash);
        assert!(walk("alice", &[a.clone(), b.clone(), c.clone()], Start::Genesis).is_none());
        let p = walk("alice", &[a.clone(), c.clone()], Start::Genesis).unwrap();
        assert_eq!(p.kind, ProblemKind::Gap);
        let mut b2 = b.clone();
        b2.caller = "someone".into();
        let p = walk("alice", &[a.clone(), b2, c.clone()], Start::Genesis).unwrap();
        assert_eq!(p.kind, ProblemKind::Altered);
        let p = walk("alice", &[b.clone(), c.clone()], Start::Genesis).unwrap();
        assert_eq!(p.kind, ProblemKind::Gap);
        assert!(walk("alice", &[b, c], Start::Trusted(2)).is_none());
    }

    #[test]
    fn digest_round_trips_its_time() {
        let t = DateTime::from_timestamp_micros(1_767_225_600_123_456).unwrap();
        let d = format!("v1:{}:{}", t.timestamp_micros(), "a".repeat(64));
        assert_eq!(digest_as_of(&d), Some(t));
        assert_eq!(digest_as_of("v2:1:aa"), None);
    }
}
