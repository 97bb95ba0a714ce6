//! Signed checkpoints of the audit log: for every user chain its length and head hash, combined
//! into one RFC 9162 Merkle root (leaves sorted by user), with the total event count, the time
//! and the previous checkpoint's hash, signed with Ed25519. A checkpoint depends only on each
//! chain's (length, head), never on how an event is encoded, so it outlives encoding versions.
//!
//! The note (docs/auditing.md "Checkpoint format"), every line ending in `\n`:
//!
//! ```text
//! profile-gateway audit checkpoint v1
//! checkpoint <seq, from 1>
//! time <RFC 3339, UTC, microseconds>
//! chains <number of leaves>
//! events <sum of the chain lengths>
//! root <hex Merkle root>
//! prev <hex SHA-256 of the previous checkpoint's body, 64 zeros for the first>
//! key <hex of the first 8 bytes of SHA-256 of the raw public key>
//!
//! signature <base64 Ed25519 signature of the body: every byte before the blank line>
//! ```
//!
//! A leaf is `<byte length of user>:<user> <length> <head>`; the witness file carries the
//! leaves after the note as `leaves <n>` and one `<length> <head> <user>` line each.
//!
//! Over 400 lines on purpose: the note's format, its Merkle root, its signature and taking one are a
//! single contract with the witness, which a reviewer checks in one reading.

use super::merkle::{self, Hash};
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub const HEADER: &str = "profile-gateway audit checkpoint v1";
pub const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Transaction-scoped advisory lock serializing checkpoints across replicas.
const LOCK_KEY: &str = "profile_gateway.audit_checkpoint";

/// One chain's state in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub user: String,
    pub len: i64,
    pub head: String,
}

impl Leaf {
    pub fn bytes(&self) -> Vec<u8> {
        format!(
            "{}:{} {} {}",
            self.user.len(),
            self.user,
            self.len,
            self.head
        )
        .into_bytes()
    }

    pub fn hash(&self) -> Hash {
        merkle::leaf_hash(&self.bytes())
    }
}

/// Sorts leaves by user (bytes) and computes their Merkle root.
pub fn root_of(leaves: &mut [Leaf]) -> Hash {
    leaves.sort_by(|a, b| a.user.as_bytes().cmp(b.user.as_bytes()));
    merkle::root(&leaves.iter().map(Leaf::hash).collect::<Vec<_>>())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    pub seq: i64,
    pub time: DateTime<Utc>,
    pub chains: usize,
    pub events: i64,
    pub root: String,
    pub prev: String,
    pub key: String,
}

impl Body {
    pub fn text(&self) -> String {
        format!(
            "{HEADER}\ncheckpoint {}\ntime {}\nchains {}\nevents {}\nroot {}\nprev {}\nkey {}\n",
            self.seq,
            self.time.to_rfc3339_opts(SecondsFormat::Micros, true),
            self.chains,
            self.events,
            self.root,
            self.prev,
            self.key
        )
    }

    /// What the next checkpoint's `prev` names.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.text().as_bytes()))
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err("not a profile-gateway checkpoint (first line)".into());
        }
        let mut field = |name: &str| -> Result<String, String> {
            let line = lines.next().ok_or(format!("missing `{name}` line"))?;
            line.strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .map(str::to_string)
                .ok_or(format!("expected `{name} ...`, found `{line}`"))
        };
        let seq = field("checkpoint")?.parse().map_err(|_| "bad checkpoint")?;
        let time = DateTime::parse_from_rfc3339(&field("time")?)
            .map_err(|_| "bad time")?
            .with_timezone(&Utc);
        let chains = field("chains")?.parse().map_err(|_| "bad chains")?;
        let events = field("events")?.parse().map_err(|_| "bad events")?;
        let hex64 = |name: &str, v: String| {
            if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(v)
            } else {
                Err(format!("bad {name}"))
            }
        };
        let root = hex64("root", field("root")?)?;
        let prev = hex64("prev", field("prev")?)?;
        let key = field("key")?;
        let body = Self {
            seq,
            time,
            chains,
            events,
            root,
            prev,
            key,
        };
        // Exactly one encoding: anything else is not what was signed.
        if body.text() != text {
            return Err("the body is not in canonical form".into());
        }
        Ok(body)
    }
}

/// A signed checkpoint note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub body: Body,
    pub signature: String,
}

impl Note {
    pub fn text(&self) -> String {
        format!("{}\nsignature {}\n", self.body.text(), self.signature)
    }

    /// Parses a note from the start of `text`; returns it and the rest of the text.
    pub fn parse(text: &str) -> Result<(Self, &str), String> {
        let (body, rest) = text
            .split_once("\n\n")
            .ok_or("no blank line after the checkpoint body")?;
        let body = Body::parse(&format!("{body}\n"))?;
        let (line, rest) = rest.split_once('\n').unwrap_or((rest, ""));
        let signature = line
            .strip_prefix("signature ")
            .ok_or("missing `signature` line")?
            .to_string();
        Ok((Self { body, signature }, rest))
    }

    pub fn verify(&self, key: &VerifyingKey) -> Result<(), String> {
        if self.body.key != key_id(key) {
            return Err(format!(
                "signed by key {}, not by the given public key ({})",
                self.body.key,
                key_id(key)
            ));
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&self.signature)
            .map_err(|_| "the signature is not base64")?;
        let sig = Signature::from_slice(&raw).map_err(|_| "the signature is malformed")?;
        key.verify(self.body.text().as_bytes(), &sig)
            .map_err(|_| "the signature does not match the body".to_string())
    }
}

pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// The gateway's signing key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes it).
pub struct CheckpointSigner {
    key: SigningKey,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointSigner(key {})", self.key_id())
    }
}

impl CheckpointSigner {
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        SigningKey::from_pkcs8_pem(pem)
            .map(|key| Self { key })
            .map_err(|e| format!("not an Ed25519 PKCS#8 PEM private key: {e}"))
    }

    pub fn from_file(path: &Path) -> Result<Self, String> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("audit.signing_key_file {}: {e}", path.display()))?;
        Self::from_pem(&pem).map_err(|e| format!("audit.signing_key_file {}: {e}", path.display()))
    }

    pub fn key_id(&self) -> String {
        key_id(&self.key.verifying_key())
    }

    pub fn sign(&self, body: Body) -> Note {
        let sig = self.key.sign(body.text().as_bytes());
        Note {
            body,
            signature: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
        }
    }
}

/// A verifier's key: the SPKI PEM that `openssl pkey -pubout` writes.
pub fn public_key_from_pem(pem: &str) -> Result<VerifyingKey, String> {
    VerifyingKey::from_public_key_pem(pem)
        .map_err(|e| format!("not an Ed25519 SPKI PEM public key: {e}"))
}

pub fn leaves_text(leaves: &[Leaf]) -> String {
    let mut out = String::new();
    for l in leaves {
        out.push_str(&format!("{} {} {}\n", l.len, l.head, l.user));
    }
    out
}

pub fn parse_leaves(text: &str) -> Result<Vec<Leaf>, String> {
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(3, ' ');
            let len = parts.next().and_then(|s| s.parse().ok());
            let head = parts.next();
            let user = parts.next();
            match (len, head, user) {
                (Some(len), Some(head), Some(user)) => Ok(Leaf {
                    user: user.to_string(),
                    len,
                    head: head.to_string(),
                }),
                _ => Err(format!("malformed leaf line `{line}`")),
            }
        })
        .collect()
}

/// A checkpoint as the witness holds it: the note and its leaves.
#[derive(Debug, Clone)]
pub struct Witnessed {
    pub note: Note,
    pub leaves: Vec<Leaf>,
}

impl Witnessed {
    pub fn file_text(note_text: &str, leaves_text: &str) -> String {
        format!(
            "{note_text}leaves {}\n{leaves_text}",
            leaves_text.lines().count()
        )
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let (note, rest) = Note::parse(text)?;
        let (count, rest) = rest.split_once('\n').ok_or("missing `leaves` line")?;
        let n: usize = count
            .strip_prefix("leaves ")
            .and_then(|n| n.parse().ok())
            .ok_or("missing `leaves` line")?;
        let leaves = parse_leaves(rest)?;
        if leaves.len() != n {
            return Err(format!("`leaves {n}` but {} leaf lines", leaves.len()));
        }
        Ok(Self { note, leaves })
    }

    /// The leaves are sorted, unique and hash to the signed root; the counts match.
    pub fn check_leaves(&self) -> Result<(), String> {
        let mut sorted = self.leaves.clone();
        let root = hex::encode(root_of(&mut sorted));
        if sorted != self.leaves || sorted.windows(2).any(|w| w[0].user == w[1].user) {
            return Err("the leaves are not sorted by user or repeat a user".into());
        }
        if root != self.note.body.root {
            return Err("the leaves do not hash to the signed root".into());
        }
        if self.leaves.len() != self.note.body.chains {
            return Err("the number of leaves differs from the signed `chains`".into());
        }
        if self.leaves.iter().map(|l| l.len).sum::<i64>() != self.note.body.events {
            return Err("the chain lengths do not add up to the signed `events`".into());
        }
        Ok(())
    }
}

/// The name of a checkpoint's file in the witness directory.
pub fn file_name(seq: i64) -> String {
    format!("checkpoint-{seq:012}.txt")
}

/// Takes a checkpoint when none was taken for the current interval (`slot_secs` = Some(interval))
/// or unconditionally (`None`, on demand). Scheduled callers skip when another replica holds the
/// lock: that replica is taking this interval's checkpoint. Returns the new checkpoint's seq.
pub async fn take(
    pool: &sqlx::PgPool,
    signer: &CheckpointSigner,
    slot_secs: Option<u64>,
) -> Result<Option<i64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let slot = match slot_secs {
        Some(secs) => {
            let got = sqlx::query_scalar!(
                r#"select pg_try_advisory_xact_lock(hashtext($1)) as "got!""#,
                LOCK_KEY
            )
            .fetch_one(&mut *tx)
            .await?;
            if !got {
                return Ok(None);
            }
            // The database clock, so that replicas with skewed clocks agree on the interval.
            let slot = sqlx::query_scalar!(
                r#"select (floor(extract(epoch from clock_timestamp()) / $1::float8))::bigint as "slot!""#,
                secs as f64
            )
            .fetch_one(&mut *tx)
            .await?;
            let taken = sqlx::query_scalar!(
                r#"select exists(select 1 from audit_checkpoints where slot = $1) as "taken!""#,
                slot
            )
            .fetch_one(&mut *tx)
            .await?;
            if taken {
                return Ok(None);
            }
            Some(slot)
        }
        None => {
            sqlx::query!("select pg_advisory_xact_lock(hashtext($1))", LOCK_KEY)
                .execute(&mut *tx)
                .await?;
            None
        }
    };
    let last = sqlx::query!("select seq, note from audit_checkpoints order by seq desc limit 1")
        .fetch_optional(&mut *tx)
        .await?;
    let (seq, prev) = match last {
        Some(l) => {
            let (note, _) = Note::parse(&l.note).map_err(|e| {
                sqlx::Error::Protocol(format!("stored checkpoint {} unreadable: {e}", l.seq))
            })?;
            (l.seq + 1, note.body.hash())
        }
        None => (1, ZERO.to_string()),
    };
    // One statement, so one snapshot of every head. Heads moved by transactions still open are
    // left for the next checkpoint.
    let heads = sqlx::query!(
        r#"select user_id as "user_id!", seq as "seq!", hash as "hash!", clock_timestamp() as "now!"
             from audit_heads where seq > 0"#
    )
    .fetch_all(&mut *tx)
    .await?;
    let time = match heads.first() {
        Some(h) => h.now,
        None => {
            sqlx::query_scalar!(r#"select clock_timestamp() as "now!""#)
                .fetch_one(&mut *tx)
                .await?
        }
    };
    let mut leaves: Vec<Leaf> = heads
        .into_iter()
        .map(|h| Leaf {
            user: h.user_id,
            len: h.seq,
            head: h.hash,
        })
        .collect();
    let root = hex::encode(root_of(&mut leaves));
    let note = signer.sign(Body {
        seq,
        time,
        chains: leaves.len(),
        events: leaves.iter().map(|l| l.len).sum(),
        root,
        prev,
        key: signer.key_id(),
    });
    sqlx::query!(
        "insert into audit_checkpoints (seq, slot, taken_at, note, leaves) values ($1, $2, $3, $4, $5)",
        seq,
        slot,
        time,
        note.text(),
        leaves_text(&leaves),
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(seq))
}

#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("{0}")]
    Db(#[from] sqlx::Error),
    #[error("witness directory {dir}: {err}")]
    Io { dir: String, err: std::io::Error },
    #[error(
        "witness file {0} already exists with other content: the database's checkpoints fork from the witness's (rolled back or restored?)"
    )]
    Fork(PathBuf),
}

/// Writes every checkpoint the witness does not have yet, oldest first, each to a new file
/// (never rewriting one). Returns how many remain (0 when the witness is current).
pub async fn flush_witness(pool: &sqlx::PgPool, dir: &Path) -> Result<i64, WitnessError> {
    let pending = sqlx::query!(
        "select c.seq, c.note, c.leaves from audit_checkpoints c
          where not exists (select 1 from audit_checkpoint_witnessed w where w.seq = c.seq)
          order by c.seq limit 100"
    )
    .fetch_all(pool)
    .await?;
    for c in &pending {
        let path = dir.join(file_name(c.seq));
        let text = Witnessed::file_text(&c.note, &c.leaves);
        write_once(&path, &text).map_err(|e| match e {
            WriteOnce::Io(err) => WitnessError::Io {
                dir: dir.display().to_string(),
                err,
            },
            WriteOnce::Differs => WitnessError::Fork(path.clone()),
        })?;
        sqlx::query!(
            "insert into audit_checkpoint_witnessed (seq) values ($1) on conflict do nothing",
            c.seq
        )
        .execute(pool)
        .await?;
    }
    witness_backlog(pool).await.map_err(Into::into)
}

/// Checkpoints not yet in the witness.
pub async fn witness_backlog(pool: &sqlx::PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"select count(*) as "n!" from audit_checkpoints c
            where not exists (select 1 from audit_checkpoint_witnessed w where w.seq = c.seq)"#
    )
    .fetch_one(pool)
    .await
}

enum WriteOnce {
    Io(std::io::Error),
    Differs,
}

/// Creates `path` with `text` (create_new, synced). A file already there with the same text is
/// fine (another replica, or a crash after the write and before it was recorded).
fn write_once(path: &Path, text: &str) -> Result<(), WriteOnce> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    // Written whole under a temporary name, then linked into place: a reader never sees half a
    // checkpoint, and hard_link fails rather than replace an existing file.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(WriteOnce::Io)?;
    let written = f
        .write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    // Object-store mounts (e.g. an S3 bucket with object lock) have no hard links, but publish an
    // object only when it is closed: there, create the file itself, exclusively.
    let written = match written {
        Err(e)
            if e.kind() != std::io::ErrorKind::AlreadyExists
                && e.kind() != std::io::ErrorKind::NotFound =>
        {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .and_then(|mut f| {
                    f.write_all(text.as_bytes())?;
                    f.sync_all()
                })
        }
        other => other,
    };
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            match std::fs::read_to_string(path) {
                Ok(existing) if existing == text => Ok(()),
                Ok(_) => Err(WriteOnce::Differs),
                Err(e) => Err(WriteOnce::Io(e)),
            }
        }
        Err(e) => Err(WriteOnce::Io(e)),
    }
}

/// What readiness reports of the witness (detail only: a witness that is down never makes the
/// gateway unready, since requests do not wait for it).
#[derive(Debug, Clone, Default)]
pub struct WitnessStatus(std::sync::Arc<WitnessState>);

#[derive(Debug, Default)]
struct WitnessState {
    backlog: std::sync::atomic::AtomicI64,
    failing: std::sync::atomic::AtomicBool,
}

impl WitnessStatus {
    /// Checkpoints not yet written to the witness, as of the last attempt.
    pub fn backlog(&self) -> i64 {
        self.0.backlog.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the last attempt to write to the witness failed.
    pub fn failing(&self) -> bool {
        self.0.failing.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set(&self, backlog: i64, failing: bool) {
        self.0
            .backlog
            .store(backlog, std::sync::atomic::Ordering::Relaxed);
        self.0
            .failing
            .store(failing, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Every `interval`, by whichever replica gets the lock first: one checkpoint per interval, then
/// the witness backlog. Never on the request path; failures are logged and retried next tick.
pub async fn run(
    pool: sqlx::PgPool,
    signer: std::sync::Arc<CheckpointSigner>,
    interval: std::time::Duration,
    witness_dir: Option<PathBuf>,
    status: WitnessStatus,
) {
    let secs = interval.as_secs().max(1);
    // Several looks per interval, so that a replica that stops mid-interval leaves the interval
    // to another rather than to a gap.
    let mut tick = tokio::time::interval((interval / 4).max(std::time::Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut witness_failing = false;
    loop {
        tick.tick().await;
        match take(&pool, &signer, Some(secs)).await {
            Ok(Some(seq)) => tracing::debug!(seq, "audit checkpoint taken"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "audit checkpoint failed; will retry"),
        }
        if let Some(dir) = &witness_dir {
            match flush_witness(&pool, dir).await {
                Ok(left) => {
                    status.set(left, false);
                    if witness_failing {
                        witness_failing = false;
                        tracing::info!("audit witness caught up");
                    }
                }
                Err(e) => {
                    let left = witness_backlog(&pool).await.unwrap_or(status.backlog());
                    status.set(left, true);
                    if !witness_failing {
                        tracing::error!(error = %e, "audit witness write failed; checkpoints are kept and retried");
                    }
                    witness_failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> CheckpointSigner {
        CheckpointSigner {
            key: SigningKey::from_bytes(&[7u8; 32]),
        }
    }

    fn body() -> Body {
        Body {
            seq: 3,
            time: DateTime::from_timestamp_micros(1_767_225_600_123_456).unwrap(),
            chains: 2,
            events: 5,
            root: "ab".repeat(32),
            prev: ZERO.into(),
            key: signer().key_id(),
        }
    }

    #[test]
    fn a_note_round_trips_and_verifies() {
        let s = signer();
        let note = s.sign(body());
        let text = note.text();
        assert!(text.starts_with(
            "profile-gateway audit checkpoint v1\ncheckpoint 3\ntime 2026-01-01T00:00:00.123456Z\n"
        ));
        let (parsed, rest) = Note::parse(&text).unwrap();
        assert_eq!(parsed, note);
        assert_eq!(rest, "");
        let key = s.key.verifying_key();
        parsed.verify(&key).unwrap();
        let forged = text.replace("events 5", "events 6");
        let (forged, _) = Note::parse(&forged).unwrap();
        assert!(forged.verify(&key).is_err());
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        assert!(
            note.verify(&other)
                .unwrap_err()
                .contains("not by the given")
        );
    }

    #[test]
    fn leaves_hash_to_the_root_whatever_their_order() {
        let mut a = vec![
            Leaf {
                user: "bob".into(),
                len: 2,
                head: "b".repeat(64),
            },
            Leaf {
                user: "alice".into(),
                len: 3,
                head: "a".repeat(64),
            },
        ];
        let mut b = a.clone();
        b.reverse();
        assert_eq!(root_of(&mut a), root_of(&mut b));
        assert_eq!(a[0].user, "alice");
        assert_eq!(parse_leaves(&leaves_text(&a)).unwrap(), a);
        assert_eq!(
            a[0].bytes(),
            format!("5:alice 3 {}", "a".repeat(64)).into_bytes()
        );
    }
}
