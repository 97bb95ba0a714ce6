//! Signed checkpoints and the witness directory: tampering that the in-database checks cannot
//! see (a consistent re-hash, a deleted chain, a restore) is caught against the checkpoints, with
//! keys made by the openssl CLI.
//!
//! (Over ~400 lines on purpose: each tampering the witness must catch is one test over the same signing fixtures; split, it would scatter them.)

use crate::helpers::*;
use profile_gateway::audit::checkpoint::{self, CheckpointSigner};
use profile_gateway::audit::{verify, witnessed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Keys {
    _dir: tempfile::TempDir,
    pub private: PathBuf,
    pub public: PathBuf,
}

/// A key pair exactly as an operator makes one.
pub fn openssl_keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("signing.pem");
    let public = dir.path().join("public.pem");
    let ok = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&private)
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl genpkey");
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl pkey -pubout");
    Keys {
        _dir: dir,
        private,
        public,
    }
}

pub fn url_of(db: &str) -> String {
    format!("{}/{db}", admin_url().rsplit_once('/').unwrap().0)
}

async fn add_events(pool: &PgPool, user: &str, n: usize) {
    for i in 0..n {
        sqlx::query(
            r#"insert into audit_events (user_id, event_type, caller, outcome, fields, "values", request_id)
               values ($1, 'change_requested', 'test-writer', 'accepted', '{mobile_number}',
                       jsonb_build_object('mobile_number', jsonb_build_object('new', '******12' || $2::text)), $3)"#,
        )
        .bind(user)
        .bind(format!("{i:02}"))
        .bind(uuid::Uuid::new_v4().to_string())
        .execute(pool)
        .await
        .unwrap();
    }
}

async fn checkpoint_now(pool: &PgPool, signer: &CheckpointSigner, dir: &Path) -> i64 {
    let seq = checkpoint::take(pool, signer, None).await.unwrap().unwrap();
    assert_eq!(checkpoint::flush_witness(pool, dir).await.unwrap(), 0);
    seq
}

/// `audit verify --public-key --checkpoints` on `db`: (success, output).
fn cli(db: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_profile-gateway"))
        .arg("audit")
        .args(args)
        .env("PROFILE_GATEWAY__DATABASE__URL", url_of(db))
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn cli_verify(db: &str, keys: &Keys, dir: &Path) -> (bool, String) {
    cli(
        db,
        &[
            "verify",
            "--public-key",
            keys.public.to_str().unwrap(),
            "--checkpoints",
            dir.to_str().unwrap(),
        ],
    )
}

async fn clone_db(from: &str) -> String {
    let name = format!("pgw_test_{}", uuid::Uuid::new_v4().simple());
    let admin = PgPool::connect(&admin_url()).await.unwrap();
    // The template must have no session; a closed pool's may linger under load (seen: an idle
    // one for minutes), so end them as an operator would before copying.
    let mut tries = 0;
    loop {
        sqlx::query(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()",
        )
        .bind(from)
        .execute(&admin)
        .await
        .unwrap();
        match sqlx::query(&format!("create database {name} template {from}"))
            .execute(&admin)
            .await
        {
            Ok(_) => break,
            Err(e) => {
                tries += 1;
                assert!(tries < 10, "create database from {from}: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
    admin.close().await;
    name
}

/// Several users' history across three checkpoints and events after the last, plus a copy of
/// the database as it was at the second checkpoint (a backup).
struct History {
    db: String,
    backup: String,
    keys: Keys,
    witness: tempfile::TempDir,
}

const USERS: [&str; 6] = ["u1", "u2", "u3", "u4", "u5", "u6"];

async fn history() -> History {
    let (db, url) = fresh_database().await;
    let pool = PgPool::connect(&url).await.unwrap();
    profile_gateway::db::migrate(&pool).await.unwrap();
    let keys = openssl_keys();
    let signer = CheckpointSigner::from_file(&keys.private).unwrap();
    let witness = tempfile::tempdir().unwrap();
    for u in USERS {
        add_events(&pool, u, 3).await;
    }
    checkpoint_now(&pool, &signer, witness.path()).await;
    for u in ["u1", "u2", "u4", "u5"] {
        add_events(&pool, u, 2).await;
    }
    checkpoint_now(&pool, &signer, witness.path()).await;
    pool.close().await;
    let backup = clone_db(&db).await;
    let pool = PgPool::connect(&url).await.unwrap();
    for u in ["u1", "u4", "u6"] {
        add_events(&pool, u, 2).await;
    }
    // The third on demand, through the CLI, as an operator would.
    let out = Command::new(env!("CARGO_BIN_EXE_profile-gateway"))
        .args(["audit", "checkpoint"])
        .env("PROFILE_GATEWAY__DATABASE__URL", &url)
        .env("PROFILE_GATEWAY__AUDIT__SIGNING_KEY_FILE", &keys.private)
        .env("PROFILE_GATEWAY__AUDIT__WITNESS_DIR", witness.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("checkpoint 3 signed with key {}", signer.key_id()))
            && text.contains("0 checkpoint(s) still to write"),
        "{text}"
    );
    add_events(&pool, "u2", 1).await;
    pool.close().await;
    History {
        db,
        backup,
        keys,
        witness,
    }
}

async fn exec(conn: &mut sqlx::PgConnection, sql: &str) {
    sqlx::query(sql)
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// What an attacker holding the owner's or a superuser's rights does to hide an edit: recompute
/// every hash of `user`'s chain from `from_seq` on, and the head.
async fn rehash(conn: &mut sqlx::PgConnection, user: &str, from_seq: i64) {
    let ids: Vec<i64> = sqlx::query_scalar(
        "select id from audit_events where user_id = $1 and seq >= $2 order by seq",
    )
    .bind(user)
    .bind(from_seq)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    for id in ids {
        exec(conn, &format!(
            "update audit_events e set
                prev_hash = coalesce((select p.hash from audit_events p where p.user_id = e.user_id and p.seq = e.seq - 1), repeat('0', 64))
              where id = {id}")).await;
        exec(
            conn,
            &format!("update audit_events e set hash = audit_event_row_hash(e) where id = {id}"),
        )
        .await;
    }
    exec(
        conn,
        &format!(
            "update audit_chain_heads h set seq = coalesce(x.seq, 0), hash = coalesce(x.hash, repeat('0', 64))
               from (select max(seq) as seq, (array_agg(hash order by seq desc))[1] as hash
                       from audit_events where user_id = '{user}') x
              where h.user_id = '{user}'"
        ),
    )
    .await;
    exec(
        conn,
        &format!(
            "update profile_links p set chain_seq = coalesce(x.seq, 0), chain_hash = coalesce(x.hash, repeat('0', 64))
               from (select max(seq) as seq, (array_agg(hash order by seq desc))[1] as hash
                       from audit_events where user_id = '{user}') x
              where p.user_id = '{user}'"
        ),
    )
    .await;
}

async fn disable_guards(conn: &mut sqlx::PgConnection) {
    exec(conn, LOCK_THE_TRAIL).await;
    for t in ["audit_events", "audit_chain_heads", "audit_chain_anchors"] {
        exec(conn, &format!("alter table {t} disable trigger user")).await;
    }
    exec(conn, DROP_SEQ_INDEXES).await;
}

/// A copy of the history's database with `tamper` applied by a superuser.
async fn tampered(h: &History, sql: &[&str], rehash_user: Option<(&str, i64)>) -> String {
    let db = clone_db(&h.db).await;
    let pool = PgPool::connect(&url_of(&db)).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    disable_guards(&mut tx).await;
    for s in sql {
        exec(&mut tx, s).await;
    }
    if let Some((user, from)) = rehash_user {
        rehash(&mut tx, user, from).await;
    }
    for t in ["audit_events", "audit_chain_heads", "audit_chain_anchors"] {
        exec(&mut tx, &format!("alter table {t} enable trigger user")).await;
    }
    tx.commit().await.unwrap();
    pool.close().await;
    db
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.path().join(e.file_name())).unwrap();
    }
    to
}

#[tokio::test]
async fn verify_against_the_witness_names_the_user_of_every_tampering() {
    let h = history().await;
    let (ok, out) = cli_verify(&h.db, &h.keys, h.witness.path());
    assert!(ok, "the untouched database passes: {out}");
    assert!(
        out.contains("checked 3 signed checkpoint(s), the last 3"),
        "{out}"
    );

    // An edited event with the rest of that chain re-hashed: invisible inside the database.
    let db = tampered(
        &h,
        &["update audit_events set caller = 'mallory' where user_id = 'u2' and seq = 2"],
        Some(("u2", 2)),
    )
    .await;
    let (ok, out) = cli_verify(&db, &h.keys, h.witness.path());
    assert!(!ok, "{out}");
    assert!(
        out.contains("PROBLEM rewritten user=u2 seq=3 checkpoint=1"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("checked ") && l.ends_with(" chains: 0 problem(s)")),
        "the re-hash is consistent inside the database: {out}"
    );

    // A deleted chain, head and all.
    let db = tampered(
        &h,
        &[
            "delete from audit_events where user_id = 'u3'",
            "delete from audit_chain_heads where user_id = 'u3'",
        ],
        None,
    )
    .await;
    let (ok, out) = cli_verify(&db, &h.keys, h.witness.path());
    assert!(!ok, "{out}");
    assert!(
        out.contains("PROBLEM deleted_chain user=u3 seq=3 checkpoint=1"),
        "{out}"
    );

    // A truncated tail (seen by checkpoint 3), head moved back.
    let db = tampered(
        &h,
        &["delete from audit_events where user_id = 'u4' and seq > 5"],
        Some(("u4", 1_000)),
    )
    .await;
    let (ok, out) = cli_verify(&db, &h.keys, h.witness.path());
    assert!(!ok, "{out}");
    assert!(
        out.contains("PROBLEM truncated user=u4 seq=7 checkpoint=3"),
        "{out}"
    );

    // The whole database restored to the backup taken at checkpoint 2.
    let (ok, out) = cli_verify(&h.backup, &h.keys, h.witness.path());
    assert!(!ok, "{out}");
    for u in ["u1", "u4", "u6"] {
        assert!(
            out.contains(&format!("truncated user={u} ")) && out.contains("checkpoint=3"),
            "{u}: {out}"
        );
    }
    assert!(out.contains("PROBLEM rolled_back checkpoint=3"), "{out}");

    // A forged checkpoint file: another key signed it, to hide a rewrite of u5.
    let db = tampered(
        &h,
        &["update audit_events set outcome = 'failed' where user_id = 'u5' and seq = 5"],
        Some(("u5", 5)),
    )
    .await;
    let forged = copy_dir(h.witness.path());
    let mallory = openssl_keys();
    let mallory_signer = CheckpointSigner::from_file(&mallory.private).unwrap();
    {
        let pool = PgPool::connect(&url_of(&db)).await.unwrap();
        let path = forged.path().join(checkpoint::file_name(3));
        let real = checkpoint::Witnessed::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let (len, head): (i64, String) =
            sqlx::query_as("select seq, hash from audit_chain_heads where user_id = 'u5'")
                .fetch_one(&pool)
                .await
                .unwrap();
        let mut leaves = real.leaves.clone();
        for l in &mut leaves {
            if l.user == "u5" {
                (l.len, l.head) = (len, head.clone());
            }
        }
        let mut body = real.note.body.clone();
        body.root = hex::encode(checkpoint::root_of(&mut leaves));
        body.key = mallory_signer.key_id();
        let note = mallory_signer.sign(body);
        std::fs::write(
            &path,
            checkpoint::Witnessed::file_text(&note.text(), &checkpoint::leaves_text(&leaves)),
        )
        .unwrap();
        pool.close().await;
    }
    let (ok, out) = cli_verify(&db, &h.keys, forged.path());
    assert!(!ok, "{out}");
    assert!(
        out.contains("PROBLEM forged_checkpoint checkpoint=checkpoint-000000000003.txt"),
        "{out}"
    );
    assert!(
        out.contains("PROBLEM rewritten user=u5 seq=5 checkpoint=2"),
        "the genuine checkpoints still name the user: {out}"
    );
    // The forged file alone, on the untouched database.
    let (ok, out) = cli_verify(&h.db, &h.keys, forged.path());
    assert!(!ok && out.contains("forged_checkpoint"), "{out}");

    // A checkpoint removed from the middle of the witness directory.
    let gap = copy_dir(h.witness.path());
    std::fs::remove_file(gap.path().join(checkpoint::file_name(2))).unwrap();
    let (ok, out) = cli_verify(&h.db, &h.keys, gap.path());
    assert!(!ok, "{out}");
    assert!(
        out.contains("PROBLEM missing_checkpoint checkpoint=2"),
        "{out}"
    );
    // And one removed at the end is seen as the database being ahead, which is fine: the
    // witness is behind, never the other way.
    let tail = copy_dir(h.witness.path());
    std::fs::remove_file(tail.path().join(checkpoint::file_name(3))).unwrap();
    let (ok, out) = cli_verify(&h.db, &h.keys, tail.path());
    assert!(ok, "{out}");

    // Another public key than the signer's: every checkpoint is refused.
    let (ok, out) = cli_verify(&h.db, &mallory, h.witness.path());
    assert!(!ok && out.contains("not by the given public key"), "{out}");

    // Each read through the CLI is an audit event.
    let pool = PgPool::connect(&url_of(&h.db)).await.unwrap();
    let reads: i64 = sqlx::query_scalar(
        "select count(*) from audit_events where user_id = '_system' and event_type = 'audit_read'
            and caller = 'postgres' and \"values\"->>'command' = 'audit verify'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(reads, 5, "one per `audit verify` on this database");
    pool.close().await;
}

#[tokio::test]
async fn a_hundred_random_tamperings_are_all_detected() {
    let h = history().await;
    let key =
        checkpoint::public_key_from_pem(&std::fs::read_to_string(&h.keys.public).unwrap()).unwrap();
    let dir = witnessed::check_dir(h.witness.path(), &key).unwrap();
    assert!(dir.findings.is_empty(), "{:?}", dir.findings);
    let last = dir.checkpoints.values().next_back().unwrap();
    let seen: std::collections::HashMap<String, i64> = last
        .leaves
        .iter()
        .map(|l| (l.user.clone(), l.len))
        .collect();
    let pool = PgPool::connect(&url_of(&h.db)).await.unwrap();
    {
        let mut conn = pool.acquire().await.unwrap();
        assert!(
            witnessed::check_database(&mut conn, &dir.checkpoints)
                .await
                .unwrap()
                .is_empty()
        );
    }
    let mut rng = StdRng::seed_from_u64(0xc4ec_4901);
    let kinds = ["edit", "insert", "delete", "reorder", "re-hash", "truncate"];
    let mut counts = std::collections::BTreeMap::new();
    let mut only_by_checkpoints = 0;
    for round in 0..120 {
        let mut tx = pool.begin().await.unwrap();
        disable_guards(&mut tx).await;
        let user = USERS[rng.gen_range(0..USERS.len())];
        let len = seen[user];
        // A seq the last checkpoint saw: after it, only the in-database checks can tell.
        let seq = rng.gen_range(1..=len);
        let kind = kinds[round % kinds.len()];
        // Whether the attacker re-hashes afterwards (the in-database checks then pass).
        let thorough = rng.gen_bool(0.7);
        match kind {
            "edit" => {
                let col = [
                    "caller = 'mallory'",
                    "outcome = 'failed'",
                    "request_id = 'forged'",
                    "caller_addr = '10.6.6.6'",
                    "\"values\" = '{}'",
                ][rng.gen_range(0..5)];
                exec(
                    &mut tx,
                    &format!(
                        "update audit_events set {col} where user_id = '{user}' and seq = {seq}"
                    ),
                )
                .await;
            }
            "insert" => {
                exec(&mut tx, &format!("update audit_events set seq = seq + 1 where user_id = '{user}' and seq >= {seq}")).await;
                exec(&mut tx, &format!(
                    "insert into audit_events (occurred_at, user_id, event_type, caller, outcome, seq, prev_hash, hash)
                     select occurred_at, user_id, 'change_requested', 'mallory', 'accepted', {seq}, prev_hash, hash
                       from audit_events where user_id = '{user}' and seq = {seq} + 1")).await;
            }
            "delete" => {
                exec(
                    &mut tx,
                    &format!("delete from audit_events where user_id = '{user}' and seq = {seq}"),
                )
                .await;
                exec(&mut tx, &format!("update audit_events set seq = seq - 1 where user_id = '{user}' and seq > {seq}")).await;
            }
            "reorder" => {
                let other = if seq == len { seq - 1 } else { seq + 1 };
                exec(
                    &mut tx,
                    &format!(
                    "update audit_events set seq = case seq when {seq} then {other} else {seq} end
                      where user_id = '{user}' and seq in ({seq}, {other})"),
                )
                .await;
            }
            "re-hash" => {
                // Re-hashing alone changes nothing; with a new occurred_at it rewrites history.
                exec(&mut tx, &format!("update audit_events set occurred_at = occurred_at - interval '1 hour' where user_id = '{user}' and seq = {seq}")).await;
            }
            _ => {
                exec(
                    &mut tx,
                    &format!("delete from audit_events where user_id = '{user}' and seq >= {seq}"),
                )
                .await;
            }
        }
        if thorough || kind == "insert" || kind == "delete" || kind == "reorder" {
            rehash(&mut tx, user, 1).await;
        }
        let db_report = verify::verify(&mut tx, &verify::Filter::default())
            .await
            .unwrap();
        let findings = witnessed::check_database(&mut tx, &dir.checkpoints)
            .await
            .unwrap();
        let named = findings.iter().any(|f| f.user.as_deref() == Some(user))
            || db_report.problems.iter().any(|p| p.user_id == user);
        assert!(
            named,
            "round {round}: {kind} of {user} seq {seq} (re-hashed: {thorough}) not detected: {findings:?} {:?}",
            db_report.problems
        );
        if db_report.is_ok() {
            only_by_checkpoints += 1;
        }
        *counts.entry(kind).or_insert(0) += 1;
        tx.rollback().await.unwrap();
    }
    assert_eq!(counts.values().sum::<i32>(), 120, "{counts:?}");
    // Most were re-hashed consistently: only the checkpoints could tell.
    assert!(only_by_checkpoints >= 60, "{only_by_checkpoints}");
    pool.close().await;
}

#[tokio::test]
async fn a_proof_of_inclusion_checks_offline_with_the_public_key() {
    let h = history().await;
    let proof = |args: &[&str]| {
        let (ok, out) = cli(&h.db, args);
        assert!(ok, "{out}");
        out
    };
    let latest = proof(&["prove", "--user", "u4"]);
    assert!(latest.contains("checkpoint 3\n"), "{latest}");
    let early = proof(&["prove", "--user", "u4", "--seq", "4"]);
    assert!(early.contains("checkpoint 2\n"), "{early}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proof.txt");
    std::fs::write(&path, &early).unwrap();
    let public = h.keys.public.to_str().unwrap();
    let (ok, out) = cli(
        "postgres",
        &[
            "verify-proof",
            "--public-key",
            public,
            "--proof",
            path.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("OK user=u4 length=5 "), "{out}");
    assert!(out.contains("in checkpoint 2 at "), "{out}");

    // Another user's leaf, another length, or another key: refused.
    for (from, to) in [("u4\nindex", "u5\nindex"), ("leaf 5 ", "leaf 6 ")] {
        std::fs::write(&path, early.replacen(from, to, 1)).unwrap();
        let (ok, out) = cli(
            "postgres",
            &[
                "verify-proof",
                "--public-key",
                public,
                "--proof",
                path.to_str().unwrap(),
            ],
        );
        assert!(
            !ok && out.contains("do not lead to the signed root"),
            "{out}"
        );
    }
    std::fs::write(&path, &early).unwrap();
    let other = openssl_keys();
    let (ok, out) = cli(
        "postgres",
        &[
            "verify-proof",
            "--public-key",
            other.public.to_str().unwrap(),
            "--proof",
            path.to_str().unwrap(),
        ],
    );
    assert!(!ok && out.contains("not by the given public key"), "{out}");
    let (ok, out) = cli(&h.db, &["prove", "--user", "nobody"]);
    assert!(
        !ok && out.contains("no checkpoint has seen nobody's chain"),
        "{out}"
    );
}

#[tokio::test]
async fn a_witness_that_is_down_delays_no_request_and_its_backlog_is_written_later() {
    let keys = openssl_keys();
    let parent = tempfile::tempdir().unwrap();
    let witness = parent.path().join("witness");
    std::fs::create_dir(&witness).unwrap();
    let (private, dir) = (keys.private.clone(), witness.clone());
    let app = spawn_app_with(move |s| {
        s.audit.signing_key_file = Some(private.to_str().unwrap().into());
        s.audit.witness_dir = Some(dir.to_str().unwrap().into());
        s.audit.checkpoint_interval_s = 1;
    })
    .await;
    // The mount goes away.
    let away = parent.path().join("away");
    std::fs::rename(&witness, &away).unwrap();
    let resp = app
        .patch("alice", &serde_json::json!({"mobile_number": "9812345678"}))
        .await;
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let backlog = checkpoint::witness_backlog(&app.pool).await.unwrap();
    assert!(
        backlog >= 2,
        "checkpoints kept while the witness is down: {backlog}"
    );
    // It comes back: the backlog is written, oldest first, none lost.
    std::fs::rename(&away, &witness).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let taken: i64 = sqlx::query_scalar("select max(seq) from audit_checkpoints")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let files = std::fs::read_dir(&witness).unwrap().count() as i64;
    assert!(files >= taken - 1 && files >= backlog, "{files} of {taken}");
    let ready: serde_json::Value = app.get("/health/ready").await.json().await.unwrap();
    assert_eq!(ready["audit_witness"]["failing"], false, "{ready}");
    let (ok, out) = cli_verify(&app.db_name, &keys, &witness);
    assert!(ok, "{out}");
    assert!(out.contains("checked "), "{out}");
}
