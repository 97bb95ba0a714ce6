//! The audit trail: every event with its fields, append-only in the database, tamper-evident
//! (the verifier flags every tampering), free of plaintext PII, and the documented queries work.
//!
//! (Over ~400 lines on purpose: every audit property a user or auditor relies on, one test each over shared fixtures; split, it would scatter them.)

use crate::helpers::*;
use chrono::{DateTime, Utc};
use profile_gateway::audit::verify::{self, Filter, ProblemKind};
use profile_gateway::crypto::hmac_hex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn hmac_key() -> [u8; 32] {
    let s = base_settings("postgres://u@127.0.0.1/db", "http://127.0.0.1:1");
    profile_gateway::crypto::decode_key(s.audit.hmac_key.as_ref().unwrap()).unwrap()
}

fn hmac_key_b64() -> String {
    let s = base_settings("postgres://u@127.0.0.1/db", "http://127.0.0.1:1");
    s.audit.hmac_key.unwrap().expose().to_string()
}

fn db_url(app: &TestApp) -> String {
    format!(
        "{}/{}",
        admin_url().rsplit_once('/').unwrap().0,
        app.db_name
    )
}

#[derive(Debug, Clone)]
struct Ev {
    seq: i64,
    user_id: String,
    event_type: String,
    outcome: String,
    caller: String,
    change_id: Option<uuid::Uuid>,
    step_no: Option<i32>,
    target: Option<String>,
    upstream_ref: Option<String>,
    fields: Vec<String>,
    values: Value,
    hmac_key_id: Option<String>,
    error_code: Option<String>,
    request_id: Option<String>,
    trace_id: Option<String>,
    caller_addr: Option<String>,
    prev_hash: String,
    hash: String,
}

async fn events(app: &TestApp, user: &str) -> Vec<Ev> {
    sqlx::query(
        r#"select id, seq, user_id, event_type, outcome, caller, change_id, step_no, target,
                  upstream_ref, fields, "values", hmac_key_id, error_code, request_id, trace_id,
                  caller_addr, prev_hash, hash
             from audit_events where user_id = $1 order by seq"#,
    )
    .bind(user)
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| Ev {
        seq: r.get("seq"),
        user_id: r.get("user_id"),
        event_type: r.get("event_type"),
        outcome: r.get("outcome"),
        caller: r.get("caller"),
        change_id: r.get("change_id"),
        step_no: r.get("step_no"),
        target: r.get("target"),
        upstream_ref: r.get("upstream_ref"),
        fields: r.get("fields"),
        values: r.get("values"),
        hmac_key_id: r.get("hmac_key_id"),
        error_code: r.get("error_code"),
        request_id: r.get("request_id"),
        trace_id: r.get("trace_id"),
        caller_addr: r.get("caller_addr"),
        prev_hash: r.get("prev_hash"),
        hash: r.get("hash"),
    })
    .collect()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

async fn patch_with_headers(app: &TestApp, user: &str, body: &Value, request_id: &str) -> Value {
    let resp = app
        .client
        .patch(app.url(&format!("/profile/{user}")))
        .bearer_auth(TOKEN)
        .header("x-request-id", request_id)
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn verify_now(app: &TestApp) -> verify::Report {
    let mut conn = app.pool.acquire().await.unwrap();
    verify::verify(&mut conn, &Filter::default()).await.unwrap()
}

/// old_value_masked, new_value_masked, old_hmac, new_hmac of `audit_field_changes`.
type OldAndNew = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

#[tokio::test]
async fn every_event_kind_is_written_with_its_fields_and_old_values() {
    let app = spawn_app().await;
    let key = hmac_key();
    let body = json!({
        "mobile_number": "9812345678", "mobile_country_code": "91",
        "email_address": "Alice.New@EXAMPLE.com", "first_name": "Alice", "last_name": "Kingsleigh",
        "upi": upi_body("Alice.New@OKAXIS", "change_vpa"),
    });
    let first = patch_with_headers(&app, "alice", &body, "req-audit-1").await;
    let change_id: uuid::Uuid = first["change_id"].as_str().unwrap().parse().unwrap();

    let evs = events(&app, "alice").await;
    // Seeding the links is alice's first event.
    assert_eq!(evs[0].event_type, "links_updated");
    assert_eq!(evs[0].caller, "sandbox-seed");
    let of_change: Vec<&Ev> = evs
        .iter()
        .filter(|e| e.change_id == Some(change_id))
        .collect();
    let kinds: Vec<&str> = of_change.iter().map(|e| e.event_type.as_str()).collect();
    // One event for the request, one for the settle that made it final.
    assert_eq!(kinds, ["change_requested", "change_completed"]);
    for e in &of_change {
        assert_eq!(e.user_id, "alice");
        assert_eq!(e.caller, "test-writer");
        assert_eq!(e.request_id.as_deref(), Some("req-audit-1"));
        assert_eq!(e.trace_id.as_deref(), Some(TRACE));
        assert!(
            e.caller_addr.as_deref().unwrap().starts_with("127.0.0.1"),
            "{e:?}"
        );
        assert_eq!(e.hash.len(), 64);
    }
    let req = of_change[0];
    assert_eq!(req.outcome, "accepted");
    assert_eq!(req.hmac_key_id.as_deref(), Some("k1"));
    let fields: BTreeSet<&str> = req.fields.iter().map(String::as_str).collect();
    for f in ["mobile_number", "email_address", "first_name", "last_name"] {
        assert!(fields.contains(f), "{fields:?}");
    }
    let v = &req.values;
    assert_eq!(v["mobile_number"]["new"], "******5678");
    assert_eq!(v["mobile_number"]["new_hmac"], hmac_hex(&key, "9812345678"));
    assert!(v["mobile_number"].get("old").is_none(), "{v}");
    assert_eq!(v["email_address"]["new"], "A***@example.com");
    assert_eq!(
        v["email_address"]["new_hmac"],
        hmac_hex(&key, "Alice.New@example.com")
    );
    assert_eq!(v["vpa"]["new"], "****@okaxis");
    assert_eq!(v["vpa"]["new_hmac"], hmac_hex(&key, "alice.new@okaxis"));
    assert_eq!(v["first_name"]["new"], "A***");
    assert_eq!(v["mobile_country_code"]["new"], "91");

    // The final event carries the round's attempts: step, object, fields, outcome, attempt
    // number, no error, no read-back; no values (they are the request's, above).
    let done = of_change[1];
    assert_eq!(done.outcome, "applied");
    assert_eq!(
        (
            done.step_no,
            done.target.as_deref(),
            done.upstream_ref.as_deref()
        ),
        (None, None, None)
    );
    assert!(done.error_code.is_none());
    assert_eq!(done.values.as_object().unwrap().len(), 1, "{}", done.values);
    let mut steps: Vec<(String, String, String, i64, bool)> = done.values["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert!(s["error_code"].is_null(), "{s}");
            assert!(s.get("new").is_none() && s.get("values").is_none(), "{s}");
            let step_fields: BTreeSet<&str> = s["fields"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap())
                .collect();
            assert!(!step_fields.is_empty(), "{s}");
            if s["target"] == "juspay_wallet" {
                assert_eq!(step_fields, BTreeSet::from(["mobile_number"]));
            }
            (
                s["target"].as_str().unwrap().to_string(),
                s["upstream_ref"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
                s["attempt"].as_i64().unwrap(),
                s["confirmed_by_read_back"].as_bool().unwrap(),
            )
        })
        .collect();
    steps.sort();
    let step = |t: &str, r: &str| {
        (
            t.to_string(),
            r.to_string(),
            "applied".to_string(),
            1,
            false,
        )
    };
    assert_eq!(
        steps,
        [
            step("juspay_customer", "cst_demo_alice"),
            step("juspay_wallet", "wlt_demo_alice_mobikwik"),
            step("juspay_wallet", "wlt_demo_alice_paytm"),
            step("razorpay_upi", "cref_demo_alice"),
        ]
    );
    // The auditor view gives each attempt the masked values of its fields, from the request.
    let wallet_values: Vec<Value> = sqlx::query_scalar(
        "select masked_values from audit_step_attempts where change_id = $1 and target = 'juspay_wallet'",
    )
    .bind(change_id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        wallet_values,
        vec![json!({"mobile_number": v["mobile_number"]}); 2]
    );

    // A second change: every masked value now has an old one, with its HMAC (derived by the
    // auditor view from the last applied step, at the same object or, for the request, any).
    let second = patch_with_headers(
        &app,
        "alice",
        &json!({"mobile_number": "9812340000"}),
        "req-audit-2",
    )
    .await;
    let second_id: uuid::Uuid = second["change_id"].as_str().unwrap().parse().unwrap();
    let evs = events(&app, "alice").await;
    let of_second: Vec<&Ev> = evs
        .iter()
        .filter(|e| e.change_id == Some(second_id))
        .collect();
    assert_eq!(of_second.len(), 2, "requested, completed");
    let olds: Vec<OldAndNew> = sqlx::query_as(
        "select old_value_masked, new_value_masked, old_hmac, new_hmac from audit_field_changes
          where change_id = $1 and field = 'mobile_number' order by event_id",
    )
    .bind(second_id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(olds.len(), 4, "{olds:?}");
    for (old, new, old_hmac, new_hmac) in &olds {
        assert_eq!(new.as_deref(), Some("******0000"));
        assert_eq!(
            new_hmac.as_deref(),
            Some(hmac_hex(&key, "9812340000").as_str())
        );
        assert_eq!(old.as_deref(), Some("******5678"), "{olds:?}");
        assert_eq!(
            old_hmac.as_deref(),
            Some(hmac_hex(&key, "9812345678").as_str())
        );
    }

    // Links: old and new ids, the caller who changed them.
    let resp = app
        .client
        .put(app.url("/profile/bob/links"))
        .bearer_auth(TOKEN)
        .json(
            &json!({"juspay_customer_id": "cst_demo_bob", "juspay_wallet_ids": [],
                      "razorpay_customer_reference": "cref_demo_bob"}),
        )
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let bob = events(&app, "bob").await;
    let last = bob.last().unwrap();
    assert_eq!(last.event_type, "links_updated");
    assert_eq!(last.caller, "test-writer");
    assert_eq!(last.outcome, "applied");
    assert_eq!(
        last.values["old"]["juspay_wallet_ids"],
        json!(["wlt_demo_bob_paytm"])
    );
    assert_eq!(last.values["new"]["juspay_wallet_ids"], json!([]));
    assert!(last.request_id.is_some());

    // Chains: per-user seq from 1 without gaps, each linked to the one before.
    for user in ["alice", "bob"] {
        let evs = events(&app, user).await;
        let mut prev = verify::GENESIS.to_string();
        for (i, e) in evs.iter().enumerate() {
            assert_eq!(e.seq, i as i64 + 1);
            assert_eq!(e.prev_hash, prev);
            prev = e.hash.clone();
        }
    }
    let report = verify_now(&app).await;
    assert!(report.is_ok(), "{:?}", report.problems);
    // alice's seed, two requests and two completions; bob's seed and links update.
    assert!(report.events >= 7, "{}", report.events);
}

#[tokio::test]
async fn the_app_role_cannot_update_delete_or_truncate_and_replica_mode_does_not_help() {
    let app = spawn_app().await;
    app.patch("alice", &json!({"mobile_number": "9812345678"}))
        .await;
    let partition: String = sqlx::query_scalar(
        "select tableoid::regclass::text from audit_events order by id desc limit 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();

    // As the gateway's role: INSERT and SELECT work; nothing else does.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("set local role profile_gateway_app")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "insert into audit_events (user_id, event_type, caller, outcome) values ('alice', 'probe', 'test', 'ok')",
    )
    .execute(&mut *tx)
    .await
    .expect("the app role may insert");
    let n: i64 = sqlx::query_scalar("select count(*) from audit_events")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert!(n > 0);
    tx.rollback().await.unwrap();

    // A '_system' event, so that audit_chain_heads has a row for the statements below (users'
    // heads are in profile_links, which the app role updates by design: docs/auditing.md).
    sqlx::query("select audit_record_read('probe', null)")
        .execute(&app.pool)
        .await
        .unwrap();
    let statements = [
        "update audit_events set caller = 'mallory'".to_string(),
        "delete from audit_events".to_string(),
        "truncate audit_events".to_string(),
        format!("update {partition} set caller = 'mallory'"),
        format!("delete from {partition}"),
        format!("truncate {partition}"),
        "update audit_chain_heads set seq = 0".to_string(),
        "delete from audit_chain_heads".to_string(),
        "insert into audit_chain_anchors (user_id, seq, hash, partition_name, range_end) values ('alice', 99, 'x', 'p', now())".to_string(),
        "insert into audit_events (user_id, event_type, caller, outcome, occurred_at) values ('alice', 'probe', 'test', 'ok', now() - interval '1 day')".to_string(),
    ];
    for (i, sql) in statements.iter().enumerate() {
        let mut tx = app.pool.begin().await.unwrap();
        sqlx::query("set local role profile_gateway_app")
            .execute(&mut *tx)
            .await
            .unwrap();
        let r = sqlx::query(sql).execute(&mut *tx).await;
        // The backdated insert is refused by the trigger only for non-owners; the test's login
        // role is the superuser, so it is checked separately below.
        if i == statements.len() - 1 {
            tx.rollback().await.unwrap();
            continue;
        }
        assert!(r.is_err(), "the app role could run: {sql}");
        tx.rollback().await.unwrap();
    }

    // As superuser in replica mode: the ALWAYS triggers still refuse.
    for sql in &statements[..6] {
        let mut tx = app.pool.begin().await.unwrap();
        sqlx::query("set local session_replication_role = replica")
            .execute(&mut *tx)
            .await
            .unwrap();
        let err = sqlx::query(sql)
            .execute(&mut *tx)
            .await
            .expect_err(sql)
            .to_string();
        assert!(err.contains("append-only"), "{sql}: {err}");
        tx.rollback().await.unwrap();
    }
    for sql in [
        "update audit_chain_heads set seq = 0",
        "delete from audit_chain_heads",
    ] {
        let mut tx = app.pool.begin().await.unwrap();
        sqlx::query("set local session_replication_role = replica")
            .execute(&mut *tx)
            .await
            .unwrap();
        assert!(sqlx::query(sql).execute(&mut *tx).await.is_err(), "{sql}");
        tx.rollback().await.unwrap();
    }
    let report = verify_now(&app).await;
    assert!(report.is_ok(), "{:?}", report.problems);
}

/// Columns an attacker may edit, each with an expression that always changes the value.
const EDITS: &[&str] = &[
    "caller = caller || 'x'",
    "outcome = outcome || 'x'",
    "event_type = event_type || 'x'",
    "user_id = user_id || 'x'",
    "request_id = coalesce(request_id, '') || 'x'",
    "trace_id = coalesce(trace_id, '') || 'x'",
    "caller_addr = coalesce(caller_addr, '') || 'x'",
    "target = coalesce(target, '') || 'x'",
    "upstream_ref = coalesce(upstream_ref, '') || 'x'",
    "error_code = coalesce(error_code, '') || 'x'",
    "hmac_key_id = coalesce(hmac_key_id, '') || 'x'",
    r#""values" = "values" || '{"mobile_number": {"new": "******0000"}}'"#,
    "fields = array_append(fields, 'x')",
    "occurred_at = occurred_at - interval '1 microsecond'",
    "step_no = coalesce(step_no, 0) + 1",
    "change_id = gen_random_uuid()",
    // Who acted: another subject, or an actor added to an event that had none.
    r#"actor = coalesce(actor, '{}') || '{"subject": "mallory"}'"#,
];

async fn random_row(
    tx: &mut sqlx::PgConnection,
    rng: &mut StdRng,
    user: Option<&str>,
) -> (i64, String, i64) {
    let rows: Vec<(i64, String, i64)> = sqlx::query_as(
        "select id, user_id, seq from audit_events where ($1::text is null or user_id = $1) order by id",
    )
    .bind(user)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    rows[rng.gen_range(0..rows.len())].clone()
}

async fn exec(tx: &mut sqlx::PgConnection, sql: &str) {
    sqlx::query(sql)
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test]
async fn the_verifier_flags_every_tampering() {
    let app = spawn_app().await;
    for (i, user) in ["alice", "bob", "alice", "bob", "alice"].iter().enumerate() {
        app.patch(
            user,
            &json!({"mobile_number": format!("98123456{i:02}"), "email_address": format!("u{i}@example.com")}),
        )
        .await;
    }
    let clean = verify_now(&app).await;
    assert!(clean.is_ok(), "{:?}", clean.problems);
    let as_of: DateTime<Utc> = sqlx::query_scalar("select now()")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let filter = Filter {
        as_of: Some(as_of),
        ..Filter::default()
    };
    let baseline = {
        let mut conn = app.pool.acquire().await.unwrap();
        verify::verify(&mut conn, &filter).await.unwrap()
    };
    assert!(baseline.is_ok());

    let mut rng = StdRng::seed_from_u64(0x5eed_a0d1);
    let mut kinds_seen: BTreeMap<&'static str, usize> = BTreeMap::new();
    const ROUNDS: usize = 130;
    for round in 0..ROUNDS {
        let mut tx = lock_the_trail(&app.pool).await;
        for t in ["audit_events", "audit_chain_heads", "audit_chain_anchors"] {
            exec(&mut tx, &format!("alter table {t} disable trigger user")).await;
        }
        exec(&mut tx, DROP_SEQ_INDEXES).await;
        let user = if rng.gen_bool(0.5) { "alice" } else { "bob" };
        let kind = round % 11;
        let (name, digest_only): (&'static str, bool) = match kind {
            0 | 1 => {
                let (id, _, _) = random_row(&mut tx, &mut rng, None).await;
                let edit = EDITS[rng.gen_range(0..EDITS.len())];
                exec(
                    &mut tx,
                    &format!("update audit_events set {edit} where id = {id}"),
                )
                .await;
                ("edit a field", false)
            }
            2 => {
                let (id, _, _) = random_row(&mut tx, &mut rng, None).await;
                exec(
                    &mut tx,
                    &format!("delete from audit_events where id = {id}"),
                )
                .await;
                ("delete a row", false)
            }
            3 => {
                let (a, _, seq_a) = random_row(&mut tx, &mut rng, Some(user)).await;
                let (mut b, mut seq_b) = (a, seq_a);
                while b == a {
                    (b, _, seq_b) = random_row(&mut tx, &mut rng, Some(user)).await;
                }
                exec(
                    &mut tx,
                    &format!("update audit_events set seq = {seq_b} where id = {a}"),
                )
                .await;
                exec(
                    &mut tx,
                    &format!("update audit_events set seq = {seq_a} where id = {b}"),
                )
                .await;
                ("swap two rows' seqs", false)
            }
            4 => {
                let (id, _, _) = random_row(&mut tx, &mut rng, None).await;
                let h: [u8; 32] = rng.r#gen();
                exec(
                    &mut tx,
                    &format!(
                        "update audit_events set hash = '{}' where id = {id}",
                        hex::encode(h)
                    ),
                )
                .await;
                ("alter a hash", false)
            }
            5 => {
                let (id, _, _) = random_row(&mut tx, &mut rng, None).await;
                let h: [u8; 32] = rng.r#gen();
                exec(
                    &mut tx,
                    &format!(
                        "update audit_events set prev_hash = '{}' where id = {id}",
                        hex::encode(h)
                    ),
                )
                .await;
                ("alter a prev_hash", false)
            }
            6 => {
                // Append a forged event that looks chained (valid hash) without moving the head,
                // or with a duplicate seq.
                let (id, _, seq) = random_row(&mut tx, &mut rng, Some(user)).await;
                let new_seq = if rng.gen_bool(0.5) { seq } else { 1000 + seq };
                exec(&mut tx, &format!(
                    "insert into audit_events (id, occurred_at, user_id, event_type, caller, outcome, fields, \"values\", seq, prev_hash, hash)
                     overriding system value
                     select id + 5000000, occurred_at, user_id, 'change_requested', 'mallory', outcome, fields, \"values\", {new_seq}, hash,
                            audit_event_hash(id + 5000000, occurred_at, user_id, {new_seq}, hash, 'change_requested', 'mallory', outcome,
                                             null, null, null, null, fields, \"values\", null, null, null, null, null)
                       from audit_events where id = {id}")).await;
                ("insert a forged event", false)
            }
            7 => {
                exec(&mut tx, &format!(
                    "delete from audit_events where user_id = '{user}' and seq = (select max(seq) from audit_events where user_id = '{user}')")).await;
                ("delete a chain's last event", false)
            }
            8 => {
                let (id, _, seq) = random_row(&mut tx, &mut rng, Some(user)).await;
                let delta = rng.gen_range(1..5);
                exec(
                    &mut tx,
                    &format!(
                        "update audit_events set seq = {} where id = {id}",
                        seq + delta
                    ),
                )
                .await;
                ("renumber a row", false)
            }
            9 => {
                exec(
                    &mut tx,
                    &format!("delete from audit_events where user_id = '{user}'"),
                )
                .await;
                ("delete a whole chain", false)
            }
            _ => {
                // The thorough attacker: edit a row and recompute every hash after it, and the
                // head. Only the digest kept outside the database catches this.
                let (_, _, seq) = random_row(&mut tx, &mut rng, Some(user)).await;
                exec(&mut tx, &format!("update audit_events set caller = 'mallory' where user_id = '{user}' and seq = {seq}")).await;
                let ids: Vec<i64> = sqlx::query_scalar(&format!(
                    "select id from audit_events where user_id = '{user}' and seq >= {seq} order by seq"))
                    .fetch_all(&mut *tx).await.unwrap();
                for id in ids {
                    exec(&mut tx, &format!(
                        "update audit_events e set
                            prev_hash = coalesce((select p.hash from audit_events p where p.user_id = e.user_id and p.seq = e.seq - 1), repeat('0', 64))
                          where id = {id}")).await;
                    exec(&mut tx, &format!(
                        "update audit_events e set hash = audit_event_row_hash(e) where id = {id}")).await;
                }
                exec(
                    &mut tx,
                    &format!(
                        "update profile_links p set chain_hash = e.hash from audit_events e
                      where p.user_id = '{user}' and e.user_id = p.user_id and e.seq = p.chain_seq"
                    ),
                )
                .await;
                ("rewrite a chain with valid hashes", true)
            }
        };
        *kinds_seen.entry(name).or_default() += 1;
        let report = verify::verify(&mut tx, &filter).await.unwrap();
        if digest_only {
            assert!(
                report.is_ok(),
                "a consistent rewrite passes the in-database checks"
            );
            assert_ne!(
                report.digest, baseline.digest,
                "round {round}: {name} not caught by the digest"
            );
        } else {
            assert!(!report.is_ok(), "round {round}: {name} not flagged");
        }
        tx.rollback().await.unwrap();
    }
    assert_eq!(kinds_seen.values().sum::<usize>(), ROUNDS);
    assert_eq!(kinds_seen.len(), 10, "{kinds_seen:?}");

    // Each kind of problem is named.
    let mut tx = lock_the_trail(&app.pool).await;
    exec(&mut tx, "alter table audit_events disable trigger user").await;
    exec(&mut tx, DROP_SEQ_INDEXES).await;
    exec(
        &mut tx,
        "update audit_events set caller = 'mallory' where user_id = 'alice' and seq = 2",
    )
    .await;
    exec(
        &mut tx,
        "delete from audit_events where user_id = 'bob' and seq = 3",
    )
    .await;
    let report = verify::verify(&mut tx, &filter).await.unwrap();
    let kinds: Vec<(String, ProblemKind, Option<i64>)> = report
        .problems
        .iter()
        .map(|p| (p.user_id.clone(), p.kind, p.seq))
        .collect();
    assert_eq!(
        kinds,
        [
            ("alice".to_string(), ProblemKind::Altered, Some(2)),
            ("bob".to_string(), ProblemKind::Gap, Some(4)),
        ]
    );
    tx.rollback().await.unwrap();

    // Nothing was left changed.
    let after = verify_now(&app).await;
    assert!(after.is_ok(), "{:?}", after.problems);
}

#[tokio::test]
async fn concurrent_changes_of_one_user_chain_without_gaps() {
    // More changes at once than the default changes.max_pending_per_user.
    let app = spawn_app_with(|s| s.changes.max_pending_per_user = 100).await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let client = app.client.clone();
        let url = app.url("/profile/alice");
        tasks.push(tokio::spawn(async move {
            client
                .patch(url)
                .bearer_auth(TOKEN)
                .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                .json(&json!({"mobile_number": format!("98000000{i:02}")}))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().is_success());
    }
    let evs = events(&app, "alice").await;
    // The seed's links event, then per change its request and its completion.
    assert_eq!(evs.len(), 1 + 6 * 2);
    let report = verify_now(&app).await;
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[tokio::test]
async fn verify_while_changes_are_written_reports_no_problem() {
    // Events, heads and anchors are read in one snapshot: read one by one, a change committed
    // between the reads shows as a head that does not match its chain.
    let app = spawn_app_with(|s| s.changes.max_pending_per_user = 100).await;
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut writers = Vec::new();
    for user in ["alice", "bob"] {
        let (client, url, writing) = (
            app.client.clone(),
            app.url(&format!("/profile/{user}")),
            writing.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut written = 0;
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                let status = client
                    .patch(&url)
                    .bearer_auth(TOKEN)
                    .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                    .json(&json!({"mobile_number": format!("98000001{:02}", written % 100)}))
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert!(status.is_success(), "{status}");
                written += 1;
            }
            written
        }));
    }
    for round in 0..40 {
        let report = verify_now(&app).await;
        assert!(report.is_ok(), "round {round}: {:?}", report.problems);
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        assert!(
            w.await.unwrap() > 0,
            "a writer wrote nothing while verify ran"
        );
    }
}

const CANARY_MOBILE: &str = "9000011122";
const CANARY_UPI_NUMBER: &str = "9000033344";
const CANARY_EMAIL_LOCAL: &str = "canary.zed";
const CANARY_FIRST: &str = "Zebedeecanary";
const CANARY_LAST: &str = "Quixotecanary";
const CANARY_VPA_HANDLE: &str = "canaryvpa.zed";

#[tokio::test]
async fn no_plaintext_pii_in_a_dump_of_the_database() {
    let app = spawn_app().await;
    let body = json!({
        "mobile_number": CANARY_MOBILE,
        "email_address": format!("{CANARY_EMAIL_LOCAL}@canary-mail.example"),
        "first_name": CANARY_FIRST, "last_name": CANARY_LAST,
        "upi": {"upi_number": CANARY_UPI_NUMBER, "vpa": format!("{CANARY_VPA_HANDLE}@okaxis"),
                "action": "change_vpa", "consent": true,
                "device": {"fingerprint": "3f1c0d2e9a7b", "fingerprint_timestamp": now_ms()}},
    });
    // The simulator knows another UPI number for alice, so that step fails: the change and its
    // events are recorded all the same.
    let resp = app.patch("alice", &body).await;
    assert!(
        [200, 422].contains(&resp.status().as_u16()),
        "{}",
        resp.text().await.unwrap()
    );
    // A failing change too, and a second one so old values are recorded.
    app.sandbox.add_fault(
        upstream_sandbox::FaultSpec::status(
            "juspay_wallet_update",
            404,
            r#"{"status":"invalid_request_error","error_code":"object_not_found","error_message":"no wallet for 9000011122"}"#,
            Some("application/json"),
        )
        .times(2),
    );
    app.patch("alice", &json!({"mobile_number": "9000055566"}))
        .await;

    let out = std::process::Command::new("/usr/bin/pg_dump")
        .arg("--no-owner")
        .arg(db_url(&app))
        .output()
        .expect("pg_dump runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8(out.stdout).unwrap();
    assert!(
        dump.contains("******1122"),
        "the dump holds the masked events"
    );
    for canary in [
        CANARY_MOBILE,
        CANARY_UPI_NUMBER,
        CANARY_EMAIL_LOCAL,
        CANARY_FIRST,
        CANARY_LAST,
        CANARY_VPA_HANDLE,
        "9000055566",
    ] {
        assert!(
            !dump.to_lowercase().contains(&canary.to_lowercase()),
            "plaintext {canary} in the database dump"
        );
    }
}

/// The gateway must never hand PII values to its logs: no `tracing` call in src/ (outside the
/// upstream simulator, whose data is fake) mentions a value-bearing variable. Capturing the live
/// logs is not possible here (the subscriber is process-global), so this checks the source.
#[test]
fn tracing_calls_never_mention_pii_values() {
    let suspicious = [
        "patch",
        "mobile",
        "mobile_number",
        "email",
        "email_address",
        "vpa",
        "first_name",
        "last_name",
        "upi",
        "upi_number",
        "payload",
        "plain",
        "plaintext",
        "body",
        "value",
        "values",
        "raw",
        "request",
    ];
    let mut offenders = Vec::new();
    let mut stack = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("sandbox") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let Some(pos) = line.find("tracing::") else {
                    continue;
                };
                let rest = &line[pos..];
                let is_event = [
                    "trace!", "debug!", "info!", "warn!", "error!", "event!", "span!",
                ]
                .iter()
                .any(|m| rest.contains(m));
                if !is_event {
                    continue;
                }
                // The call, up to its closing `);` (calls span a few lines at most).
                let mut call = rest.to_string();
                let mut j = i;
                while !call.contains(");") && j + 1 < lines.len() && j < i + 8 {
                    j += 1;
                    call.push_str(lines[j]);
                }
                // String literals are messages, not values; look at the identifiers only.
                let code: String = call.split('"').step_by(2).collect::<Vec<_>>().join(" ");
                let idents: BTreeSet<&str> = code
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .collect();
                if suspicious.iter().any(|s| idents.contains(s)) {
                    offenders.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}

#[tokio::test]
async fn the_hmac_sql_function_matches_the_gateway_and_the_cli() {
    let app = spawn_app().await;
    let key = hmac_key();
    let b64 = hmac_key_b64();
    for (field, raw) in [
        ("mobile_number", "9812345678"),
        ("email_address", "Jane.Doe@ExAmple.COM"),
        ("vpa", "Jane.Doe@OKAXIS"),
        ("first_name", "Jane"),
    ] {
        let normalized = match field {
            "email_address" => profile_gateway::domain::Email::parse(raw)
                .unwrap()
                .as_str()
                .to_string(),
            "vpa" => profile_gateway::domain::Vpa::parse(raw)
                .unwrap()
                .as_str()
                .to_string(),
            _ => raw.to_string(),
        };
        let (sql_norm, sql_hmac): (String, String) = sqlx::query_as(
            "select audit_pii_normalize($1, $2), audit_pii_hmac(audit_pii_normalize($1, $2), $3)",
        )
        .bind(field)
        .bind(raw)
        .bind(&b64)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(sql_norm, normalized, "{field}");
        assert_eq!(sql_hmac, hmac_hex(&key, &normalized), "{field}");
    }

    // `profile-gateway audit hmac` reads the value from stdin.
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_profile-gateway"))
        .args(["audit", "hmac"])
        .env("PROFILE_GATEWAY__AUDIT__HMAC_KEY", &b64)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"9812345678\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        hmac_hex(&key, "9812345678")
    );
}

fn run_cli(app: &TestApp, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_profile-gateway"))
        .arg("audit")
        .args(args)
        .env("PROFILE_GATEWAY__DATABASE__URL", db_url(app))
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

#[tokio::test]
async fn audit_verify_cli_reports_tampering_and_compares_digests() {
    let app = spawn_app().await;
    app.patch("alice", &json!({"mobile_number": "9812345678"}))
        .await;
    let as_of: DateTime<Utc> = sqlx::query_scalar("select now()")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let as_of = as_of.to_rfc3339();
    let (ok, out) = run_cli(&app, &["verify", "--as-of", &as_of]);
    assert!(ok, "{out}");
    let digest = out
        .lines()
        .find_map(|l| l.strip_prefix("digest as of "))
        .and_then(|l| l.split(": ").nth(1))
        .unwrap()
        .to_string();
    assert!(digest.starts_with("v1:"), "{out}");

    // Later events do not change a digest taken earlier.
    app.patch("bob", &json!({"mobile_number": "9812345679"}))
        .await;
    let (ok, out) = run_cli(&app, &["verify", "--against", &digest]);
    assert!(ok, "{out}");
    assert!(out.contains("digest matches"), "{out}");
    let (ok, out) = run_cli(
        &app,
        &["verify", "--user", "alice", "--since", "2020-01-01"],
    );
    assert!(ok, "{out}");

    // A superuser edits a row, for real this time.
    let mut tx = lock_the_trail(&app.pool).await;
    exec(&mut tx, "alter table audit_events disable trigger user").await;
    exec(&mut tx, DROP_SEQ_INDEXES).await;
    exec(
        &mut tx,
        "update audit_events set outcome = 'failed' where user_id = 'alice' and seq = 3",
    )
    .await;
    exec(
        &mut tx,
        "alter table audit_events enable always trigger audit_events_chain",
    )
    .await;
    exec(
        &mut tx,
        "alter table audit_events enable always trigger audit_events_no_update",
    )
    .await;
    tx.commit().await.unwrap();
    let (ok, out) = run_cli(&app, &["verify"]);
    assert!(!ok, "{out}");
    assert!(out.contains("altered user=alice seq=3"), "{out}");
    let (ok, out) = run_cli(&app, &["verify", "--user", "bob"]);
    assert!(ok, "bob's chain is intact: {out}");
    let (ok, out) = run_cli(&app, &["verify", "--against", &digest]);
    assert!(!ok, "{out}");
    let (ok, out) = run_cli(&app, &["verify", "--against", "v1:nonsense"]);
    assert!(!ok && out.contains("--against"), "{out}");
}

#[tokio::test]
async fn old_partitions_are_detached_and_the_detach_is_an_audit_event() {
    let app = spawn_app().await;
    // Months of history: carol has events in January 2020 and now; dave only in 2020.
    sqlx::query("select audit_create_partition('2020-01-01')")
        .execute(&app.pool)
        .await
        .unwrap();
    for (user, when) in [
        ("carol", "2020-01-10T10:00:00Z"),
        ("carol", "2020-01-11T10:00:00Z"),
        ("dave", "2020-01-12T10:00:00Z"),
    ] {
        // Only the owner (migrations) and superusers may date an event: this is a superuser.
        sqlx::query(
            "insert into audit_events (occurred_at, user_id, event_type, caller, outcome) values ($1::timestamptz, $2, 'links_updated', 'test', 'applied')",
        )
        .bind(when)
        .bind(user)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    sqlx::query("insert into audit_events (user_id, event_type, caller, outcome) values ('carol', 'links_updated', 'test', 'applied')")
        .execute(&app.pool)
        .await
        .unwrap();
    let before = verify_now(&app).await;
    assert!(before.is_ok(), "{:?}", before.problems);
    let as_of = before.as_of;

    assert!(
        profile_gateway::audit::maintain(&app.pool, 6)
            .await
            .is_err(),
        "retention under 12 months is refused"
    );
    let report = profile_gateway::audit::maintain(&app.pool, 13)
        .await
        .unwrap();
    assert_eq!(report.detached, ["audit_events_2020_01"]);
    let again = profile_gateway::audit::maintain(&app.pool, 13)
        .await
        .unwrap();
    assert_eq!(again, Default::default(), "maintenance is idempotent");

    let (runs, sys): (Vec<_>, Vec<_>) = events(&app, "_system")
        .await
        .into_iter()
        .partition(|e| e.event_type == "maintenance_ran");
    // Each run is recorded, the one that did nothing too.
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].values["detached"], json!(["audit_events_2020_01"]));
    assert_eq!(runs[1].values["detached"], json!([]));
    assert_eq!(sys.len(), 1);
    assert_eq!(sys[0].event_type, "partition_detached");
    assert_eq!(sys[0].outcome, "detached");
    assert_eq!(sys[0].values["rows"], 3);
    assert_eq!(
        sys[0].values["partition"],
        "audit_archive.audit_events_2020_01"
    );
    let live: i64 =
        sqlx::query_scalar("select count(*) from audit_events where user_id in ('carol', 'dave')")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(live, 1);
    let archived: i64 =
        sqlx::query_scalar("select count(*) from audit_archive.audit_events_2020_01")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(archived, 3);
    let err = sqlx::query("delete from audit_archive.audit_events_2020_01")
        .execute(&app.pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");

    // Chains resume from their anchors; digests taken before the detach still compare.
    let after = verify_now(&app).await;
    assert!(after.is_ok(), "{:?}", after.problems);
    let mut conn = app.pool.acquire().await.unwrap();
    assert_eq!(
        verify::digest(&mut conn, as_of).await.unwrap(),
        before.digest
    );
    // The partitions ahead exist: this month and the next two.
    let ahead: i64 = sqlx::query_scalar(
        "select count(*) from pg_inherits where inhparent = 'audit_events'::regclass",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert!(ahead >= 3, "{ahead}");

    // A forged anchor (hiding deleted history) is flagged.
    let mut tx = app.pool.begin().await.unwrap();
    exec(
        &mut tx,
        "alter table audit_chain_anchors disable trigger user",
    )
    .await;
    exec(&mut tx, "update audit_chain_anchors set seq = seq + 1, hash = repeat('1', 64) where user_id = 'carol'").await;
    let r = verify::verify(&mut tx, &Filter::default()).await.unwrap();
    assert!(
        r.problems
            .iter()
            .any(|p| p.kind == ProblemKind::AnchorMismatch),
        "{:?}",
        r.problems
    );
    tx.rollback().await.unwrap();
}

#[test]
fn retention_is_a_setting() {
    let s = profile_gateway::settings::Settings::load(None, Vec::new()).unwrap();
    assert_eq!(s.audit.retention_months, 13);
    let s = profile_gateway::settings::Settings::load(
        None,
        vec![(
            "PROFILE_GATEWAY__AUDIT__RETENTION_MONTHS".to_string(),
            "24".to_string(),
        )],
    )
    .unwrap();
    assert_eq!(s.audit.retention_months, 24);
}

/// Runs one ```sql block of docs/auditing.md with psql, as an auditor would.
fn psql(app: &TestApp, vars: &[(&str, String)], sql: &str) -> Vec<BTreeMap<String, String>> {
    use std::io::Write;
    let mut cmd = std::process::Command::new("psql");
    cmd.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-A",
        "-F",
        "\t",
        "-P",
        "footer=off",
    ])
    .arg(db_url(app));
    for (k, v) in vars {
        cmd.arg("-v").arg(format!("{k}={v}"));
    }
    let mut child = cmd
        .arg("-f")
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{sql}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let cols: Vec<&str> = header.split('\t').collect();
    lines
        .map(|l| {
            cols.iter()
                .zip(l.split('\t'))
                .map(|(c, v)| (c.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn doc_queries() -> BTreeMap<String, String> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/auditing.md")).unwrap();
    let mut out = BTreeMap::new();
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("```sql\n") {
        let body = &rest[start + 7..];
        let end = body.find("```").unwrap();
        let block = &body[..end];
        let name = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("-- query:"))
            .expect("every sql block names its query")
            .trim()
            .to_string();
        out.insert(name, block.to_string());
        rest = &body[end + 3..];
    }
    out
}

#[tokio::test]
async fn every_documented_query_runs_and_returns_the_expected_rows() {
    let app = spawn_app().await;
    patch_with_headers(
        &app,
        "alice",
        &json!({"mobile_number": "9812345678", "email_address": "Alice.New@Example.com"}),
        "req-doc-1",
    )
    .await;
    patch_with_headers(
        &app,
        "alice",
        &json!({"mobile_number": "9812340000"}),
        "req-doc-2",
    )
    .await;
    app.sandbox.add_fault(
        upstream_sandbox::FaultSpec::status(
            "juspay_wallet_update",
            404,
            r#"{"status":"invalid_request_error","error_code":"object_not_found","error_message":"Cannot find what you are looking for"}"#,
            Some("application/json"),
        )
        .times(1),
    );
    let resp = app
        .patch("bob", &json!({"mobile_number": "9812349999"}))
        .await;
    assert!(!resp.status().is_success());
    sqlx::query("select audit_create_partition('2020-01-01')")
        .execute(&app.pool)
        .await
        .unwrap();
    profile_gateway::audit::maintain(&app.pool, 13)
        .await
        .unwrap();

    let vars = vec![
        ("user_id", "alice".to_string()),
        ("field", "mobile_number".to_string()),
        (
            "from",
            (Utc::now() - chrono::Duration::hours(1)).to_rfc3339(),
        ),
        ("to", (Utc::now() + chrono::Duration::hours(1)).to_rfc3339()),
        ("target", "juspay_wallet".to_string()),
        ("caller", "test-writer".to_string()),
        ("mobile", "9812345678".to_string()),
        ("email", "Alice.New@EXAMPLE.COM".to_string()),
        ("hmac_key", hmac_key_b64()),
    ];
    let queries = doc_queries();
    let names: Vec<&str> = queries.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "chain_check",
            "changes_by_caller",
            "detached_partitions",
            "field_changes_in_range",
            "find_by_email",
            "find_by_mobile",
            "provider_failures",
            "user_history",
            "webhook_deliveries",
            "who_acted",
        ],
        "every documented query has its expectations below"
    );
    let run = |name: &str| psql(&app, &vars, &queries[name]);

    let rows = run("user_history");
    let seqs: Vec<i64> = rows
        .iter()
        .map(|r| r["user_event_seq"].parse().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let kinds: BTreeSet<&str> = rows.iter().map(|r| r["event_type"].as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["links_updated", "change_requested", "change_completed"])
    );
    assert!(rows.iter().any(|r| r["request_id"] == "req-doc-2"));

    let rows = run("who_acted");
    let requested: Vec<_> = rows
        .iter()
        .filter(|r| r["event_type"] == "change_requested")
        .collect();
    assert_eq!(requested.len(), 2, "{rows:?}");
    for r in &requested {
        assert_eq!(
            (r["caller"].as_str(), r["auth_method"].as_str()),
            ("test-writer", "token")
        );
        assert!(
            uuid::Uuid::parse_str(&r["gateway_request_id"]).is_ok(),
            "{r:?}"
        );
        assert_ne!(r["gateway_request_id"], r["request_id"]);
    }
    assert_ne!(
        requested[0]["gateway_request_id"],
        requested[1]["gateway_request_id"]
    );
    let seeded = rows
        .iter()
        .find(|r| r["event_type"] == "links_updated")
        .unwrap();
    assert_eq!(seeded["auth_method"], "system", "{seeded:?}");
    // Every one of them from the event's own, hashed, actor.
    assert!(
        rows.iter().all(|r| r["actor_source"] == "event"),
        "{rows:?}"
    );

    let rows = run("field_changes_in_range");
    let alice_changes: Vec<(&str, &str, &str)> = rows
        .iter()
        .filter(|r| r["user_id"] == "alice" && r["event_type"] == "change_requested")
        .map(|r| {
            (
                r["old_value_masked"].as_str(),
                r["new_value_masked"].as_str(),
                r["outcome"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        alice_changes,
        [
            ("", "******5678", "accepted"),
            ("******5678", "******0000", "accepted")
        ]
    );
    assert!(rows.iter().any(|r| r["user_id"] == "bob"
        && r["target"] == "juspay_wallet"
        && r["outcome"] == "failed"));

    // Alice's first change was told to a receiver on the second attempt (rows as the settle and
    // the dispatcher write them); bob's failed change to nobody.
    sqlx::query(
        "with c as (select id from changes where user_id = 'alice' and user_seq = 1),
              e as (insert into webhook_events (id, change_id, caller, event_type, body, status,
                                                attempts, delivered_at)
                    select '00000000-0000-0000-0000-0000000000e1', id, 'test-writer',
                           'change.applied', '{}', 'delivered', 2, now() from c
                    returning id)
         insert into webhook_attempts (event_id, attempt_no, started_at, duration_ms, status_code,
                                       error, replica)
         select id, n, now(), 3, s, err, 'r1'
           from e, (values (1, 503, 'status'), (2, 200, null)) as a(n, s, err)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let rows = run("webhook_deliveries");
    let told: Vec<(&str, &str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["event_type"].as_str(),
                r["status"].as_str(),
                r["attempt_no"].as_str(),
                r["status_code"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        told,
        [
            ("change.applied", "delivered", "1", "503"),
            ("change.applied", "delivered", "2", "200")
        ]
    );

    let rows = run("provider_failures");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["user_id"], "bob");
    assert_eq!(rows[0]["error_code"], "upstream_not_found");
    assert_eq!(rows[0]["status"], "failed");
    assert_eq!(rows[0]["attempt"], "1");
    assert_eq!(rows[0]["upstream_status"], "404");
    assert_eq!(rows[0]["upstream_ref"], "wlt_demo_bob_paytm");

    let rows = run("changes_by_caller");
    let users: Vec<&str> = rows.iter().map(|r| r["user_id"].as_str()).collect();
    assert_eq!(users, ["alice", "alice", "bob"]);
    assert_eq!(rows[0]["change_status"], "applied");

    let rows = run("find_by_mobile");
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r["user_id"] == "alice"), "{rows:?}");
    // Found as the new value of the first change and as the old value of the second.
    assert!(rows.iter().any(|r| r["new_value_masked"] == "******5678"));
    assert!(rows.iter().any(|r| r["old_value_masked"] == "******5678"));

    let rows = run("find_by_email");
    assert!(!rows.is_empty());
    assert!(
        rows.iter()
            .all(|r| r["user_id"] == "alice" && r["new_value_masked"] == "A***@example.com"),
        "{rows:?}"
    );

    let rows = run("chain_check");
    assert!(rows.is_empty(), "{rows:?}");

    let rows = run("detached_partitions");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["partition"], "audit_archive.audit_events_2020_01");
    assert_eq!(rows[0]["rows"], "0");

    // The auditor role can run them all.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("set local role profile_gateway_auditor")
        .execute(&mut *tx)
        .await
        .unwrap();
    for v in [
        "audit_log",
        "audit_field_changes",
        "audit_step_attempts",
        "audit_events",
        "audit_chain_heads",
    ] {
        sqlx::query(&format!("select * from {v} limit 1"))
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{v}: {e}"));
    }
    assert!(
        sqlx::query("insert into audit_events (user_id, event_type, caller, outcome) values ('x','x','x','x')")
            .execute(&mut *tx)
            .await
            .is_err(),
        "the auditor is read-only"
    );
    tx.rollback().await.unwrap();
}

/// seq, field, old, new, old HMAC, old HMAC's key id (`audit_field_changes`).
type FieldRow = (
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// `audit_step_attempts` over both event shapes within one change (an old pod's `step_attempted`,
/// a new pod's `round` and `change_completed`, as in a rollout) and across an operator retry:
/// attempts are numbered from the events since the last retry, the diagnostics of the steps
/// document are shown beside the step's last attempt only, whatever the updatable document says
/// its attempt count is; a malformed event does not make the auditor views fail.
#[tokio::test]
async fn step_attempts_are_numbered_across_shapes_and_retries_and_a_malformed_event_breaks_no_view()
{
    let app = spawn_app().await;
    let change = uuid::Uuid::new_v4();
    sqlx::query(
        "insert into profile_links (user_id, last_change_seq, finished_seq) values ('zed', 1, 1)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        r#"insert into changes (id, user_id, user_seq, caller, request_id, fields, status,
                                finished_at, steps)
           values ($1, 'zed', 1, 'c', 'r', '{mobile_number}', 'failed', now(),
                   '{"1": {"step_no": 1, "target": "juspay_wallet", "upstream_ref": "w1",
                           "fields": ["mobile_number"], "status": "failed", "attempts": 1,
                           "error_code": "upstream_unavailable", "error_retryable": true,
                           "upstream_status": 503, "upstream_code": "busy",
                           "error_message": "busy now"}}')"#,
    )
    .bind(change)
    .execute(&app.pool)
    .await
    .unwrap();
    let attempt = |n: i32| {
        json!({"steps": [{"step_no": 1, "target": "juspay_wallet", "upstream_ref": "w1",
                          "fields": ["mobile_number"], "status": "failed", "attempt": n,
                          "error_code": "upstream_unavailable", "confirmed_by_read_back": false}]})
    };
    let mobile = json!({"mobile_number": {"new": "******1111", "new_hmac": "aa"}});
    let malformed = json!({"steps": [{"step_no": "one", "fields": "x", "status": 5}, 7,
                                     {"step_no": 99_999_999_999_i64, "attempt": 1.5}]});
    let events: [(&str, &str, Option<i32>, Value); 7] = [
        ("change_requested", "accepted", None, mobile.clone()),
        // An old pod's attempt 1, then a new pod's attempt 2 makes the change final.
        ("step_attempted", "failed", Some(1), mobile),
        ("change_completed", "failed", None, attempt(2)),
        // An operator retries it: attempts count from 1 again.
        ("change_retried", "accepted", None, json!({})),
        ("round", "pending", None, attempt(1)),
        ("change_completed", "failed", None, attempt(2)),
        ("round", "pending", None, malformed),
    ];
    for (kind, outcome, step, values) in events {
        let (target, reference) = match step {
            Some(_) => (Some("juspay_wallet"), Some("w1")),
            None => (None, None),
        };
        sqlx::query(
            r#"insert into audit_events (user_id, event_type, caller, outcome, change_id, step_no,
                                         target, upstream_ref, fields, "values", hmac_key_id,
                                         error_code)
               values ('zed', $1, 'c', $2, $3, $4, $5, $6, '{mobile_number}', $7, 'k1',
                       case when $2 = 'failed' and $4 is not null then 'upstream_unavailable' end)"#,
        )
        .bind(kind)
        .bind(outcome)
        .bind(change)
        .bind(step)
        .bind(target)
        .bind(reference)
        .bind(values)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    type Attempt = (
        String,
        Option<i32>,
        Option<String>,
        i32,
        Option<i32>,
        Option<String>,
    );
    let rows: Vec<Attempt> = sqlx::query_as(
        "select event_type, step_no, status, attempt, upstream_status, masked_values ->> 'mobile_number'
           from audit_step_attempts where user_id = 'zed' order by seq, step_no",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let masked = Some(r#"{"new": "******1111", "new_hmac": "aa"}"#.to_string());
    let row = |kind: &str, attempt: i32, diag: Option<i32>| {
        (
            kind.to_string(),
            Some(1),
            Some("failed".to_string()),
            attempt,
            diag,
            masked.clone(),
        )
    };
    let mut expected = vec![
        row("step_attempted", 1, None),
        row("change_completed", 2, None),
        row("round", 1, None),
        row("change_completed", 2, Some(503)),
    ];
    // The malformed event's two object elements: no step, no status, no values, no error.
    let broken: Attempt = ("round".into(), None, None, 0, None, None);
    expected.extend([broken.clone(), broken]);
    assert_eq!(rows, expected);
    // Every auditor view still answers for the user: the request's and four attempts' field
    // (none from the malformed event), seven events, six attempt rows, one step.
    let counts = || async {
        let mut out = Vec::new();
        for view in [
            "audit_field_changes",
            "audit_log",
            "audit_step_attempts",
            "change_steps",
        ] {
            let n: i64 = sqlx::query_scalar(&format!(
                "select count(*) from {view} where {} = $1",
                if view == "change_steps" {
                    "change_id::text"
                } else {
                    "user_id"
                }
            ))
            .bind(if view == "change_steps" {
                change.to_string()
            } else {
                "zed".to_string()
            })
            .fetch_one(&app.pool)
            .await
            .unwrap_or_else(|e| panic!("{view}: {e}"));
            out.push(n);
        }
        out
    };
    assert_eq!(counts().await, [5, 7, 6, 1]);
    // So does a malformed or duplicated steps document (the gateway's role may update
    // `changes`): no row more, no query failing.
    sqlx::query(
        r#"update changes
              set steps = steps || '{"01": {"step_no": 1, "status": "applied"}, "x": 5,
                                     "2": {"step_no": "two", "attempts": "many"},
                                     "3": {"step_no": 3, "attempts": "many", "upstream_status": "five",
                                           "fields": "mobile_number", "status": 4}}'
            where id = $1"#,
    )
    .bind(change)
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(counts().await, [5, 7, 6, 2]);
    let odd: (Option<String>, i32, Option<i32>, Vec<String>) = sqlx::query_as(
        "select status, attempts, upstream_status, fields from change_steps
          where change_id = $1 and step_no = 3",
    )
    .bind(change)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(odd, (None, 0, None, vec![]));
}

/// The old-value rules of the auditor view (`audit_field_changes`), event by event: the last
/// applied value per target object and at any target, its keyed hash, the key id it was made
/// with, an old value the writer gave itself, and non-masked entries left alone.
#[tokio::test]
async fn old_values_follow_applied_steps_per_scope_and_name_a_rotated_key() {
    let app = spawn_app().await;
    let step = |no: i32, target: &str, reference: &str, outcome: &str, values: Value, key: &str| {
        format!(
            "insert into audit_events (user_id, event_type, caller, outcome, change_id, step_no, target,
                                       upstream_ref, fields, \"values\", hmac_key_id)
             values ('eve', 'step_attempted', 'c', '{outcome}', gen_random_uuid(), {no}, '{target}',
                     '{reference}', '{{mobile_number}}', '{values}', '{key}')"
        )
    };
    let request = |values: Value, key: &str| {
        format!(
            "insert into audit_events (user_id, event_type, caller, outcome, change_id, fields, \"values\", hmac_key_id)
             values ('eve', 'change_requested', 'c', 'accepted', gen_random_uuid(), '{{mobile_number}}',
                     '{values}', '{key}')"
        )
    };
    let m = |new: &str, hmac: Option<&str>| match hmac {
        Some(h) => json!({"mobile_number": {"new": new, "new_hmac": h}}),
        None => json!({"mobile_number": {"new": new}}),
    };
    let statements = [
        request(m("******1111", Some("aa")), "k1"),
        step(
            0,
            "juspay_customer",
            "cst1",
            "applied",
            m("******1111", Some("aa")),
            "k1",
        ),
        step(
            1,
            "juspay_wallet",
            "w1",
            "failed",
            m("******1111", Some("aa")),
            "k1",
        ),
        // The HMAC key rotated; the writer gave one old value itself; "note" is not a masked value.
        request(
            json!({"mobile_number": {"new": "******2222", "new_hmac": "cc"},
                   "email_address": {"new": "b***@x.com", "new_hmac": "dd", "old": "given"},
                   "note": "x"}),
            "k2",
        ),
        step(
            0,
            "juspay_customer",
            "cst1",
            "applied",
            m("******2222", Some("cc")),
            "k2",
        ),
        step(
            1,
            "juspay_wallet",
            "w1",
            "applied",
            m("******2222", None),
            "k2",
        ),
        request(m("******3333", Some("ee")), "k2"),
        step(
            1,
            "juspay_wallet",
            "w1",
            "applied",
            m("******3333", Some("ee")),
            "k2",
        ),
    ];
    for sql in &statements {
        sqlx::query(sql).execute(&app.pool).await.unwrap();
    }
    // Events store what was new; the auditor view derives the old value at query time.
    let rows: Vec<FieldRow> = sqlx::query_as(
        "select e.seq, f.field, f.old_value_masked, f.new_value_masked, f.old_hmac,
                    f.old_hmac_key_id
               from audit_field_changes f join audit_events e on e.id = f.event_id
              where f.user_id = 'eve' order by e.seq, f.field",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let row = |seq: i64,
               field: &str,
               old: Option<&str>,
               new: &str,
               hmac: Option<&str>,
               key: Option<&str>| {
        (
            seq,
            field.to_string(),
            old.map(String::from),
            Some(new.to_string()),
            hmac.map(String::from),
            key.map(String::from),
        )
    };
    let mobile = "mobile_number";
    let expected = vec![
        row(1, mobile, None, "******1111", None, None),
        row(2, mobile, None, "******1111", None, None),
        // Nothing was ever applied at this wallet: no old value, although the customer had one.
        row(3, mobile, None, "******1111", None, None),
        // The writer gave this old value itself; "note" is not a masked value.
        row(4, "email_address", Some("given"), "b***@x.com", None, None),
        // The HMAC key rotated: the old hash names the key it was made with.
        row(
            4,
            mobile,
            Some("******1111"),
            "******2222",
            Some("aa"),
            Some("k1"),
        ),
        row(
            5,
            mobile,
            Some("******1111"),
            "******2222",
            Some("aa"),
            Some("k1"),
        ),
        row(6, mobile, None, "******2222", None, None),
        // The last applied value at any target carried no keyed hash: no old_hmac either.
        row(7, mobile, Some("******2222"), "******3333", None, None),
        row(8, mobile, Some("******2222"), "******3333", None, None),
    ];
    assert_eq!(rows, expected);
    // Nothing is written into the events themselves.
    let values: Vec<Value> = sqlx::query_scalar(
        "select \"values\" from audit_events where user_id = 'eve' and event_type <> 'probe' order by seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(
        values
            .iter()
            .all(|v| v["mobile_number"].get("old").is_none()),
        "{values:?}"
    );
}

/// A chain that an older gateway began (events without an actor, hashed with v1 by the database)
/// and this one continues (events with an actor, v3 from the gateway, v2 from the database)
/// verifies as a whole; the old-value rules carry across the versions; the SQL
/// hash functions agree with the verifier on every row, strange text included; and `audit_log`
/// takes who acted from each event's own record where it has one.
#[tokio::test]
async fn a_chain_begun_without_actors_continues_with_them_and_verifies() {
    let app = spawn_app().await;
    let old_change = uuid::Uuid::new_v4();
    let old_actor = json!({"auth": "token", "subject": null, "assertion_subject": null,
                           "assertion_jti": null, "gateway_request_id": "gw-old"});
    // The older gateway's change row (with its actor, as migration 20261201000102 wrote it).
    for sql in [
        "update profile_links set last_change_seq = 1, finished_seq = 1 where user_id = 'alice'"
            .to_string(),
        format!(
            "insert into changes (id, user_id, user_seq, caller, request_id, fields, status, finished_at, actor)
             values ('{old_change}', 'alice', 1, 'old-app', 'r-old', '{{mobile_number}}', 'applied', now(), '{old_actor}')"
        ),
    ] {
        sqlx::query(&sql).execute(&app.pool).await.unwrap();
    }
    let mut tx = app.pool.begin().await.unwrap();
    exec(&mut tx, "set local role profile_gateway_app").await;
    // Its link event: the actor inside the hashed values.
    exec(
        &mut tx,
        r#"insert into audit_events (user_id, event_type, caller, outcome, "values")
           values ('alice', 'links_updated', 'old-app', 'applied',
                   '{"old": null, "new": {}, "actor": {"auth": "token", "gateway_request_id": "gw-links"}}')"#,
    )
    .await;
    // Its hot path's events, without an actor (the database chains them: audit_append, which
    // the older gateway called, is retired by migration 20261202000200).
    for (event_type, outcome, step, target, vals, key) in [
        (
            "change_requested",
            "accepted",
            "null",
            "null",
            r#"{"mobile_number": {"new": "******1111", "new_hmac": "aa"}}"#,
            "'k1'",
        ),
        (
            "step_attempted",
            "applied",
            "0",
            "'juspay_customer'",
            r#"{"mobile_number": {"new": "******1111", "new_hmac": "aa"}}"#,
            "'k1'",
        ),
        ("change_completed", "applied", "null", "null", "{}", "null"),
    ] {
        let reference = if step == "0" {
            "'cst_demo_alice'"
        } else {
            "null"
        };
        exec(
            &mut tx,
            &format!(
                r#"insert into audit_events (user_id, event_type, caller, outcome, change_id, step_no,
                                             target, upstream_ref, fields, "values", hmac_key_id, request_id)
                   values ('alice', '{event_type}', 'old-app', '{outcome}', '{old_change}', {step},
                           {target}, {reference}, '{{mobile_number}}', '{vals}', {key}, 'r-old')"#
            ),
        )
        .await;
    }
    tx.commit().await.unwrap();

    // This gateway continues the chain.
    let body = patch_with_headers(
        &app,
        "alice",
        &json!({"mobile_number": "9812342222"}),
        "r-new",
    )
    .await;
    let new_change: uuid::Uuid = body["change_id"].as_str().unwrap().parse().unwrap();
    // Text that every encoding must escape, through the database's writer of v2 (the gateway's
    // v3 writer meets it in audit_chain.rs).
    let mut tx = app.pool.begin().await.unwrap();
    exec(&mut tx, "set local role profile_gateway_app").await;
    let odd = r#"array['a"b\c' || chr(10) || chr(1) || 'é€', '']"#;
    let odd_actor =
        r#"'{"auth": "token", "subject": "q\"\\ \n \u0001 é€", "gateway_request_id": "gw-odd"}'"#;
    exec(
        &mut tx,
        &format!(
            "insert into audit_events (user_id, event_type, caller, outcome, fields, actor)
             values ('alice', 'probe', 'c', 'ok', {odd}, {odd_actor})"
        ),
    )
    .await;
    tx.commit().await.unwrap();

    let rows: Vec<(i64, String, Option<uuid::Uuid>, bool, Value, bool)> = sqlx::query_as(
        r#"select seq, event_type, change_id, actor is not null, "values",
                  hash = audit_event_row_hash(e) and hash = case
                      when format = 3
                      then audit_event_hash_v3(occurred_at, user_id, seq, prev_hash, event_type, caller,
                                               outcome, change_id, step_no, target, upstream_ref, fields,
                                               "values", hmac_key_id, error_code, request_id, trace_id,
                                               caller_addr, actor)
                      when actor is null
                      then audit_event_hash(id, occurred_at, user_id, seq, prev_hash, event_type, caller,
                                            outcome, change_id, step_no, target, upstream_ref, fields,
                                            "values", hmac_key_id, error_code, request_id, trace_id, caller_addr)
                      else audit_event_hash_v2(id, occurred_at, user_id, seq, prev_hash, event_type, caller,
                                               outcome, change_id, step_no, target, upstream_ref, fields,
                                               "values", hmac_key_id, error_code, request_id, trace_id,
                                               caller_addr, actor) end
             from audit_events e where user_id = 'alice' order by seq"#,
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let shape: Vec<(&str, bool)> = rows.iter().map(|r| (r.1.as_str(), r.3)).collect();
    let expected = vec![
        ("links_updated", true), // the sandbox seed, by this gateway
        ("links_updated", false),
        ("change_requested", false),
        ("step_attempted", false),
        ("change_completed", false),
        ("change_requested", true),
        ("change_completed", true),
        ("probe", true),
    ];
    assert_eq!(shape, expected);
    assert!(
        rows.iter().all(|r| r.5),
        "the SQL hash of every row is its stored hash"
    );
    // The new request's old value is the v1 step's (derived by the auditor view).
    let old: Option<String> = sqlx::query_scalar(
        "select old_value_masked from audit_field_changes
          where change_id = $1 and event_type = 'change_requested' and field = 'mobile_number'",
    )
    .bind(new_change)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(old.as_deref(), Some("******1111"));

    let report = verify_now(&app).await;
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(report.events >= rows.len());

    // Who acted: the event's own actor, else its hashed values, else (only for the older
    // gateway's change events) the change row.
    type Who = (String, Option<String>, Option<String>, Option<String>);
    let who: Vec<Who> = sqlx::query_as(
        "select event_type, auth_method, gateway_request_id, actor_source
           from audit_log where user_id = 'alice' and event_type <> 'step_attempted' order by user_event_seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let s = |v: &str| Some(v.to_string());
    let new_gw = sqlx::query_scalar::<_, String>(
        "select actor ->> 'gateway_request_id' from audit_events where change_id = $1 and event_type = 'change_requested'",
    )
    .bind(new_change)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let seed_gw = sqlx::query_scalar::<_, String>(
        "select actor ->> 'gateway_request_id' from audit_events where user_id = 'alice' and seq = 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        who,
        [
            ("links_updated".into(), s("system"), s(&seed_gw), s("event")),
            (
                "links_updated".into(),
                s("token"),
                s("gw-links"),
                s("event_values")
            ),
            (
                "change_requested".into(),
                s("token"),
                s("gw-old"),
                s("change_record")
            ),
            (
                "change_completed".into(),
                s("token"),
                s("gw-old"),
                s("change_record")
            ),
            (
                "change_requested".into(),
                s("token"),
                s(&new_gw),
                s("event")
            ),
            (
                "change_completed".into(),
                s("token"),
                s(&new_gw),
                s("event")
            ),
            ("probe".into(), s("token"), s("gw-odd"), s("event")),
        ]
    );
}

/// A change an older gateway recorded (its request event has no actor, only its `changes` row
/// does) and this gateway's completer finishes: the completer's events get no actor either (v1),
/// never one copied from the updatable row, and `audit_log` says their who-acted comes from the
/// change record. Caller and request id come from the request event. When the older gateway's
/// operator had retried the change, the completer's events name that operator, from the retry
/// event's hashed `values.actor`.
#[tokio::test]
async fn a_change_recorded_without_an_actor_is_finished_without_one() {
    let app = spawn_app().await;
    // The sealed payload as the gateway seals it (the test settings' key "k1").
    let patch: profile_gateway::domain::ProfilePatch =
        serde_json::from_value(json!({"first_name": "Alicia"})).unwrap();
    let cipher =
        profile_gateway::crypto::PayloadCipher::new("k1", *b"0123456789abcdef0123456789abcdef");
    let row_actor = r#"{"auth": "token", "subject": null, "assertion_subject": null, "assertion_jti": null, "gateway_request_id": "gw-old"}"#;
    let op_actor = json!({"auth": "token", "subject": null, "assertion_subject": null,
                          "assertion_jti": null, "gateway_request_id": "gw-op"});
    // alice's change was only requested; bob's was also retried by an operator.
    let mut ids = Vec::new();
    for (user, retried) in [("alice", false), ("bob", true)] {
        let id = uuid::Uuid::new_v4();
        ids.push(id);
        let sealed = cipher.seal(&serde_json::to_vec(&patch).unwrap(), id.as_bytes());
        // What the older gateway wrote, then its pod died: the row (with its actor), the step,
        // the request event through its 15-member entry point, and its retry's event.
        let mut tx = app.pool.begin().await.unwrap();
        exec(
            &mut tx,
            &format!("update profile_links set last_change_seq = 1 where user_id = '{user}'"),
        )
        .await;
        sqlx::query(
            "insert into changes (id, user_id, user_seq, caller, request_id, fields, payload_key_id,
                                  payload_enc, lease_owner, lease_expires_at, actor)
             values ($1, $2, 1, 'old-app', 'r-old', '{first_name}', 'k1', $3, 'old-pod',
                     now() - interval '1 second', $4::jsonb)",
        )
        .bind(id)
        .bind(user)
        .bind(&sealed)
        .bind(row_actor)
        .execute(&mut *tx)
        .await
        .unwrap();
        exec(
            &mut tx,
            &format!(
                r#"update changes set steps = '{{"0": {{"step_no": 0, "target": "juspay_customer",
                     "upstream_ref": "cst_demo_{user}", "fields": ["first_name"],
                     "status": "pending", "attempts": 0}}}}' where id = '{id}'"#
            ),
        )
        .await;
        exec(&mut tx, "set local role profile_gateway_app").await;
        exec(
            &mut tx,
            &format!(
                r#"insert into audit_events (user_id, event_type, caller, outcome, change_id, fields,
                                             "values", hmac_key_id, request_id)
                   values ('{user}', 'change_requested', 'old-app', 'accepted', '{id}',
                           '{{first_name}}', '{{}}', 'k1', 'r-old')"#
            ),
        )
        .await;
        if retried {
            exec(
                &mut tx,
                &format!(
                    r#"insert into audit_events (user_id, event_type, caller, outcome, change_id, "values", request_id)
                       values ('{user}', 'change_retried', 'old-operator', 'accepted', '{id}',
                               '{{"actor": {op_actor}}}', 'r-op')"#
                ),
            )
            .await;
        }
        tx.commit().await.unwrap();
    }

    let started = std::time::Instant::now();
    while app
        .count("select count(*) from changes where status = 'pending'")
        .await
        > 0
    {
        assert!(started.elapsed() < Duration::from_secs(20), "not finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let statuses: Vec<String> =
        sqlx::query_scalar("select status from changes where id = any($1) order by user_id")
            .bind(&ids)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(statuses, ["applied", "applied"]);

    // Event type, caller, request id, actor; audit_log's gateway request id and actor source.
    type Row = (
        String,
        String,
        String,
        Option<Value>,
        Option<String>,
        Option<String>,
    );
    let events = |id: uuid::Uuid| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_as::<_, Row>(
                "select e.event_type, e.caller, e.request_id, e.actor, l.gateway_request_id, l.actor_source
                   from audit_events e join audit_log l on l.event_id = e.id
                  where e.change_id = $1 order by e.seq",
            )
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let s = |v: &str| Some(v.to_string());
    let row =
        |kind: &str, caller: &str, request: &str, actor: Option<&Value>, gw: &str, source: &str| {
            (
                kind.to_string(),
                caller.to_string(),
                request.to_string(),
                actor.cloned(),
                s(gw),
                s(source),
            )
        };
    assert_eq!(
        events(ids[0]).await,
        [
            row(
                "change_requested",
                "old-app",
                "r-old",
                None,
                "gw-old",
                "change_record"
            ),
            row(
                "change_completed",
                "old-app",
                "r-old",
                None,
                "gw-old",
                "change_record"
            ),
        ]
    );
    assert_eq!(
        events(ids[1]).await,
        [
            row(
                "change_requested",
                "old-app",
                "r-old",
                None,
                "gw-old",
                "change_record"
            ),
            row(
                "change_retried",
                "old-operator",
                "r-op",
                None,
                "gw-op",
                "event_values"
            ),
            row(
                "change_completed",
                "old-operator",
                "r-op",
                Some(&op_actor),
                "gw-op",
                "event"
            ),
        ]
    );
    let report = verify_now(&app).await;
    assert!(report.is_ok(), "{:?}", report.problems);
}

/// `fields` is a flat list of names: the gateway's role cannot insert an event with a NULL
/// element or two dimensions, and an event altered that way (under the database owner's rights)
/// is named by `audit verify` as altered even when re-hashed, rather than failing the verifier.
#[tokio::test]
async fn an_event_whose_fields_are_not_a_flat_list_is_refused_and_named() {
    let app = spawn_app().await;
    app.patch("alice", &json!({"mobile_number": "9812345678"}))
        .await;
    // The documented validation of the constraint (docs/operations.md) passes on this data.
    exec(
        &mut app.pool.acquire().await.unwrap(),
        "alter table audit_events validate constraint audit_events_fields_flat",
    )
    .await;
    let odd = ["'{mobile_number,NULL}'", "'{{a,b},{c,d}}'", "'{NULL}'"];
    for fields in odd {
        let mut tx = app.pool.begin().await.unwrap();
        exec(&mut tx, "set local role profile_gateway_app").await;
        let err = sqlx::query(&format!(
            "insert into audit_events (user_id, event_type, caller, outcome, fields)
             values ('alice', 'probe', 'test', 'ok', {fields})"
        ))
        .execute(&mut *tx)
        .await
        .expect_err(fields);
        assert_eq!(
            err.as_database_error().and_then(|e| e.code()).as_deref(),
            Some("23514"),
            "{fields}: {err}"
        );
        tx.rollback().await.unwrap();
    }

    let last: i64 = sqlx::query_scalar("select max(seq) from audit_events where user_id = 'alice'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    for fields in odd {
        for rehash in [false, true] {
            let mut tx = lock_the_trail(&app.pool).await;
            for t in ["audit_events", "audit_chain_heads"] {
                exec(&mut tx, &format!("alter table {t} disable trigger user")).await;
            }
            exec(&mut tx, DROP_SEQ_INDEXES).await;
            exec(
                &mut tx,
                "alter table audit_events drop constraint audit_events_fields_flat",
            )
            .await;
            exec(
                &mut tx,
                &format!(
                    "update audit_events set fields = {fields} where user_id = 'alice' and seq = {last}"
                ),
            )
            .await;
            if rehash {
                // The last event with a hash that matches the SQL encoding, and the head moved.
                exec(&mut tx, &format!(
                    "update audit_events e set hash = audit_event_row_hash(e) where user_id = 'alice' and seq = {last}")).await;
                exec(
                    &mut tx,
                    &format!(
                        "update profile_links p set chain_hash = e.hash from audit_events e
                      where p.user_id = 'alice' and e.user_id = 'alice' and e.seq = {last}"
                    ),
                )
                .await;
            }
            let report = verify::verify(&mut tx, &Filter::default()).await.unwrap();
            let found: Vec<_> = report
                .problems
                .iter()
                .map(|p| (p.user_id.as_str(), p.kind, p.seq))
                .collect();
            assert_eq!(
                found,
                [("alice", ProblemKind::Altered, Some(last))],
                "{fields} rehash={rehash}"
            );
            assert!(
                report.problems[0].detail.contains("fields"),
                "{}",
                report.problems[0]
            );
            tx.rollback().await.unwrap();
        }
    }
    let report = verify_now(&app).await;
    assert!(report.is_ok(), "{:?}", report.problems);
}
