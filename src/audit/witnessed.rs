//! `audit verify --public-key K --checkpoints DIR`: checks the database against the signed
//! checkpoints of the witness, trusting nothing the database says about itself.
//!
//! (a) every checkpoint file is signed by K, its leaves hash to its signed root, and the files
//! form one chain (1, 2, 3, ... each naming its predecessor's hash); (b) every chain in every
//! checkpoint is still in the database at that length with that head, so a rewrite, a deleted
//! chain, a truncated tail or a database restored to an earlier state shows as the user, the seq
//! and the checkpoint; (c) the chains, including the events after the last checkpoint, re-hash
//! (verify.rs).
//!
//! Just over 400 lines: checks (a) to (c) are one procedure over the same loaded checkpoints.

use super::checkpoint::{self, Leaf, Witnessed, ZERO};
use ed25519_dalek::VerifyingKey;
use sqlx::PgConnection;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: &'static str,
    pub user: Option<String>,
    pub seq: Option<i64>,
    pub checkpoint: Option<String>,
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind)?;
        if let Some(u) = &self.user {
            write!(f, " user={u}")?;
        }
        if let Some(s) = self.seq {
            write!(f, " seq={s}")?;
        }
        if let Some(c) = &self.checkpoint {
            write!(f, " checkpoint={c}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

fn finding(kind: &'static str, checkpoint: impl Into<String>, detail: String) -> Finding {
    Finding {
        kind,
        user: None,
        seq: None,
        checkpoint: Some(checkpoint.into()),
        detail,
    }
}

#[derive(Debug, Default)]
pub struct DirReport {
    /// The valid checkpoints, by seq.
    pub checkpoints: BTreeMap<i64, Witnessed>,
    pub findings: Vec<Finding>,
}

/// (a): reads and checks every checkpoint file of `dir`.
pub fn check_dir(dir: &Path, key: &VerifyingKey) -> Result<DirReport, String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("--checkpoints {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-") && n.ends_with(".txt"))
        .collect();
    names.sort();
    let mut report = DirReport::default();
    for name in names {
        let text = match std::fs::read_to_string(dir.join(&name)) {
            Ok(t) => t,
            Err(e) => {
                report
                    .findings
                    .push(finding("unreadable_checkpoint", &name, e.to_string()));
                continue;
            }
        };
        let w = match Witnessed::parse(&text) {
            Ok(w) => w,
            Err(e) => {
                report
                    .findings
                    .push(finding("malformed_checkpoint", &name, e));
                continue;
            }
        };
        if let Err(e) = w.note.verify(key).and_then(|()| w.check_leaves()) {
            report.findings.push(finding(
                "forged_checkpoint",
                &name,
                format!("{e}: this file was not written by the gateway as it stands"),
            ));
            continue;
        }
        if checkpoint::file_name(w.note.body.seq) != name {
            report.findings.push(finding(
                "misfiled_checkpoint",
                &name,
                format!("holds checkpoint {}", w.note.body.seq),
            ));
            continue;
        }
        report.checkpoints.insert(w.note.body.seq, w);
    }
    // One chain from checkpoint 1, each naming its predecessor.
    let mut prev: Option<&Witnessed> = None;
    for (seq, w) in &report.checkpoints {
        let want_seq = prev.map_or(1, |p| p.note.body.seq + 1);
        if *seq != want_seq {
            report.findings.push(finding(
                "missing_checkpoint",
                want_seq.to_string(),
                format!(
                    "checkpoints {want_seq}..{} are not in the witness directory (removed?)",
                    seq - 1
                ),
            ));
        } else {
            let want_prev = prev.map_or(ZERO.to_string(), |p| p.note.body.hash());
            if w.note.body.prev != want_prev {
                report.findings.push(finding(
                    "broken_checkpoint_chain",
                    seq.to_string(),
                    "does not name the previous checkpoint's hash".into(),
                ));
            }
        }
        if let Some(p) = prev {
            if w.note.body.time < p.note.body.time {
                report.findings.push(finding(
                    "broken_checkpoint_chain",
                    seq.to_string(),
                    "is older than the checkpoint before it".into(),
                ));
            }
            report.findings.extend(extends(p, w));
        }
        prev = Some(w);
    }
    Ok(report)
}

/// Every chain of `a` is in `b`, as long or longer, with the same head when as long.
fn extends(a: &Witnessed, b: &Witnessed) -> Vec<Finding> {
    let later: HashMap<&str, &Leaf> = b.leaves.iter().map(|l| (l.user.as_str(), l)).collect();
    let mut out = Vec::new();
    for l in &a.leaves {
        let bad = match later.get(l.user.as_str()) {
            None => Some("is missing from".to_string()),
            Some(n) if n.len < l.len => Some(format!("is shorter ({}) in", n.len)),
            Some(n) if n.len == l.len && n.head != l.head => {
                Some("has another head at the same length in".to_string())
            }
            _ => None,
        };
        if let Some(how) = bad {
            out.push(Finding {
                kind: "checkpoint_rollback",
                user: Some(l.user.clone()),
                seq: Some(l.len),
                checkpoint: Some(b.note.body.seq.to_string()),
                detail: format!(
                    "the chain of length {} in checkpoint {} {how} checkpoint {}",
                    l.len, a.note.body.seq, b.note.body.seq
                ),
            });
        }
    }
    out
}

/// (b): every chain of every checkpoint against the database. One finding per user (its first
/// checkpoint that the database contradicts), plus one for a database behind the last checkpoint.
pub async fn check_database(
    conn: &mut PgConnection,
    checkpoints: &BTreeMap<i64, Witnessed>,
) -> Result<Vec<Finding>, sqlx::Error> {
    let mut users = Vec::new();
    let mut seqs = Vec::new();
    for w in checkpoints.values() {
        for l in &w.leaves {
            users.push(l.user.clone());
            seqs.push(l.len);
        }
    }
    let at: HashMap<(String, i64), String> = sqlx::query!(
        r#"select e.user_id, e.seq, e.hash
             from audit_events e
             join (select distinct u, s from unnest($1::text[], $2::bigint[]) as w(u, s)) w
               on e.user_id = w.u and e.seq = w.s"#,
        &users,
        &seqs
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| ((r.user_id, r.seq), r.hash))
    .collect();
    let anchors: HashMap<(String, i64), String> =
        sqlx::query!("select user_id, seq, hash from audit_chain_anchors")
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|r| ((r.user_id, r.seq), r.hash))
            .collect();
    let last_anchor: HashMap<&str, i64> = anchors.keys().fold(HashMap::new(), |mut m, (u, s)| {
        let e = m.entry(u.as_str()).or_insert(*s);
        *e = (*e).max(*s);
        m
    });
    // Where each chain ends: its last live event, or where retention detached it.
    let mut ends: HashMap<String, i64> = sqlx::query!(
        r#"select user_id as "user_id!", max(seq) as "seq!" from audit_events group by user_id"#
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| (r.user_id, r.seq))
    .collect();
    for (user, seq) in &last_anchor {
        let e = ends.entry(user.to_string()).or_insert(*seq);
        *e = (*e).max(*seq);
    }

    let mut out = Vec::new();
    let mut reported: std::collections::HashSet<String> = Default::default();
    let mut behind = 0usize;
    for (cp, w) in checkpoints {
        let last = Some(cp) == checkpoints.keys().next_back();
        for l in &w.leaves {
            let key = (l.user.clone(), l.len);
            let end = ends.get(&l.user).copied();
            let (kind, detail) = match at.get(&key).or_else(|| anchors.get(&key)) {
                Some(h) if *h == l.head => continue,
                Some(_) => (
                    "rewritten",
                    format!(
                        "the event at seq {} is not the one checkpoint {cp} signed: the chain was rewritten from there or earlier",
                        l.len
                    ),
                ),
                // Detached by retention: the archive holds it, the anchors vouch for the rest.
                None if last_anchor
                    .get(l.user.as_str())
                    .is_some_and(|a| *a >= l.len) =>
                {
                    continue;
                }
                None if end.is_none() => (
                    "deleted_chain",
                    format!(
                        "checkpoint {cp} saw {} event(s) of this chain; none is in the database",
                        l.len
                    ),
                ),
                None if end.is_some_and(|e| e < l.len) => {
                    if last {
                        behind += 1;
                    }
                    (
                        "truncated",
                        format!(
                            "the chain ends at seq {} but checkpoint {cp} saw it at length {}: its tail was removed or the database was restored to an earlier state",
                            end.unwrap_or(0),
                            l.len
                        ),
                    )
                }
                None => (
                    "missing_event",
                    format!(
                        "checkpoint {cp} saw this chain at length {}, whose last event is gone",
                        l.len
                    ),
                ),
            };
            if reported.insert(l.user.clone()) {
                out.push(Finding {
                    kind,
                    user: Some(l.user.clone()),
                    seq: Some(l.len),
                    checkpoint: Some(cp.to_string()),
                    detail,
                });
            }
        }
    }
    if let Some((cp, w)) = checkpoints.iter().next_back() {
        let total: i64 = ends.values().sum();
        if behind > 0 || total < w.note.body.events {
            out.push(Finding {
                kind: "rolled_back",
                user: None,
                seq: None,
                checkpoint: Some(cp.to_string()),
                detail: format!(
                    "the database holds {total} event(s) at the chain ends, checkpoint {cp} ({}) signed {}; {behind} chain(s) are shorter than it saw: restored from an earlier backup, or events removed",
                    w.note.body.time.to_rfc3339(),
                    w.note.body.events
                ),
            });
        }
    }
    Ok(out)
}

#[derive(Debug)]
pub struct Proof {
    pub witnessed: Witnessed,
    pub index: usize,
}

impl Proof {
    /// The proof's text: the signed note, then `proof`, `leaf <len> <head> <user>`,
    /// `index <i>` and one `path <hex>` line per audit path node.
    pub fn text(&self) -> String {
        let hashes: Vec<_> = self.witnessed.leaves.iter().map(Leaf::hash).collect();
        let l = &self.witnessed.leaves[self.index];
        let mut out = self.witnessed.note.text();
        out.push_str(&format!(
            "proof\nleaf {} {} {}\nindex {}\n",
            l.len, l.head, l.user, self.index
        ));
        for p in super::merkle::inclusion_path(&hashes, self.index) {
            out.push_str(&format!("path {}\n", hex::encode(p)));
        }
        out
    }
}

/// What a checked proof shows.
#[derive(Debug, PartialEq, Eq)]
pub struct Proven {
    pub leaf: Leaf,
    pub checkpoint: i64,
    pub time: chrono::DateTime<chrono::Utc>,
}

/// Checks a proof from `audit prove` with the public key alone.
pub fn verify_proof(text: &str, key: &VerifyingKey) -> Result<Proven, String> {
    let (note, rest) = checkpoint::Note::parse(text)?;
    note.verify(key)?;
    let mut lines = rest.lines();
    if lines.next() != Some("proof") {
        return Err("missing `proof` line".into());
    }
    let leaf = lines
        .next()
        .and_then(|l| l.strip_prefix("leaf "))
        .ok_or("missing `leaf` line")?;
    let leaf = checkpoint::parse_leaves(leaf)?
        .pop()
        .ok_or("missing `leaf` line")?;
    let index: usize = lines
        .next()
        .and_then(|l| l.strip_prefix("index "))
        .and_then(|n| n.parse().ok())
        .ok_or("missing `index` line")?;
    let mut path = Vec::new();
    for line in lines {
        let h = line
            .strip_prefix("path ")
            .and_then(|h| hex::decode(h).ok())
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
            .ok_or_else(|| format!("malformed line `{line}`"))?;
        path.push(h);
    }
    let root = super::merkle::root_from_path(leaf.hash(), index, note.body.chains, &path)
        .ok_or("the audit path does not fit the checkpoint's size")?;
    if hex::encode(root) != note.body.root {
        return Err("the leaf and audit path do not lead to the signed root".into());
    }
    Ok(Proven {
        leaf,
        checkpoint: note.body.seq,
        time: note.body.time,
    })
}

/// The proof of `user`'s chain in the latest checkpoint, or with `seq`, in the earliest
/// checkpoint whose chain of `user` has reached `seq`.
pub async fn prove(
    conn: &mut PgConnection,
    user: &str,
    seq: Option<i64>,
) -> Result<Option<Proof>, String> {
    use futures_util::TryStreamExt;
    let mut rows = sqlx::query!(
        r#"select seq, note, leaves from audit_checkpoints
            where position(($1::text) in leaves) > 0
            order by case when $2::bigint is null then -seq else seq end"#,
        user,
        seq
    )
    .fetch(&mut *conn);
    while let Some(r) = rows.try_next().await.map_err(|e| e.to_string())? {
        let w = Witnessed::parse(&Witnessed::file_text(&r.note, &r.leaves))?;
        if let Some(index) = w
            .leaves
            .iter()
            .position(|l| l.user == user && seq.is_none_or(|s| l.len >= s))
        {
            return Ok(Some(Proof {
                witnessed: w,
                index,
            }));
        }
    }
    Ok(None)
}
