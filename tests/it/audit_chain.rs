//! The hash chain the gateway computes itself (encoding v3, migration 20261202000200): what it
//! hashes is what PostgreSQL stores, two replicas and the database's own chaining share one head
//! per user without forking, the database still refuses what no writer may do, old values are
//! derived by the auditor view, and a database with history from before the change verifies.

use crate::helpers::*;
use profile_gateway::audit::verify::{self, Filter};
use profile_gateway::startup::Application;
use serde_json::{Value, json};
use sqlx::PgPool;

fn db_url(app: &TestApp) -> String {
    format!(
        "{}/{}",
        admin_url().rsplit_once('/').unwrap().0,
        app.db_name
    )
}

async fn verify_ok(pool: &PgPool) -> verify::Report {
    let mut conn = pool.acquire().await.unwrap();
    let report = verify::verify(&mut conn, &Filter::default()).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    report
}

/// (seq, format, event_type) of a user's events, in order.
async fn chain_of(pool: &PgPool, user: &str) -> Vec<(i64, Option<i16>, String)> {
    sqlx::query_as(
        "select seq, format, event_type from audit_events where user_id = $1 order by seq",
    )
    .bind(user)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_gateways_jsonb_text_is_what_postgres_stores() {
    let app = spawn_app().await;
    let values = [
        json!({}),
        json!([]),
        json!({"b": 1, "aa": 2, "a": 3, "ab": [true, false, null], "é": "x", "Z": {}}),
        json!({"mobile_number": {"new": "******5678", "new_hmac": "ab12"}, "vpa": {"new": "****@okaxis"}}),
        json!({"s": "quote \" backslash \\ slash / nl \n cr \r tab \t bs \u{8} ff \u{c}"}),
        json!({"ctl": "\u{1}\u{1f}\u{7f}", "uni": "नमस्ते 🙂 ü", "empty": ""}),
        json!({"n": [0, -1, 42, 9007199254740993i64, -9223372036854775808i64, 18446744073709551615u64]}),
        json!({"auth": "jwt:https://kubernetes.default.svc", "subject": "system:serviceaccount:a:b",
               "gateway_request_id": "1b4e28ba-2fa1-11d2-883f-0016d3cca427"}),
        json!([{"k": [[], {}]}, "x", 1, null]),
        json!({"f": [1.5, 0.1, -2.25, 1e21, 1e-7, 123456.789]}),
    ];
    for v in values {
        // The gateway sends the text it hashed; what PostgreSQL stores must read back the same.
        let sent = verify::jsonb_text(&v);
        let stored: String = sqlx::query_scalar("select $1::jsonb::text")
            .bind(&sent)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        assert_eq!(sent, stored, "{v}");
        // ...and it is the value given.
        assert_eq!(serde_json::from_str::<Value>(&sent).unwrap(), v);
    }
}

#[tokio::test]
async fn two_replicas_and_a_links_update_extend_one_chain_per_user() {
    let app = spawn_app().await;
    let mut settings = base_settings(&app_role_url(&db_url(&app)).await, &app.sandbox.base_url());
    settings.database.migrate_on_start = false;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replica = Application::build(&settings, listener).await.unwrap();
    let replica_base = format!("http://{}", replica.local_addr());
    tokio::spawn(replica.run_until(std::future::pending()));

    for i in 0..6 {
        let base = if i % 2 == 0 { &app.base } else { &replica_base };
        let resp = app
            .client
            .patch(format!("{base}/profile/alice"))
            .bearer_auth(TOKEN)
            .header("idempotency-key", uuid::Uuid::new_v4().to_string())
            .json(&json!({"mobile_number": format!("98123400{i:02}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        if i == 2 {
            // The database chains this one (audit::insert), from the same head in the user's row.
            let resp = app
                .client
                .put(app.url("/profile/alice/links"))
                .bearer_auth(TOKEN)
                .json(&json!({"juspay_customer_id": "cst_demo_alice",
                              "juspay_wallet_ids": ["wlt_demo_alice_paytm", "wlt_demo_alice_mobikwik"],
                              "razorpay_customer_reference": "cref_demo_alice"}))
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
        }
    }
    let chain = chain_of(&app.pool, "alice").await;
    // Per change: requested and completed (its one round's attempts inside), and the two links
    // events: the demo seed's and the update's.
    assert_eq!(chain.len(), 6 * 2 + 2, "{chain:?}");
    for (i, (seq, _, _)) in chain.iter().enumerate() {
        assert_eq!(*seq, i as i64 + 1, "{chain:?}");
    }
    let links: Vec<_> = chain.iter().filter(|e| e.2 == "links_updated").collect();
    assert_eq!(links.len(), 2);
    assert!(
        links.iter().all(|l| l.1.is_none()),
        "the database chained them"
    );
    assert!(
        chain
            .iter()
            .filter(|e| e.2 != "links_updated")
            .all(|e| e.1 == Some(3)),
        "{chain:?}"
    );
    let head: (i64, String) =
        sqlx::query_as("select chain_seq, chain_hash from profile_links where user_id = 'alice'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let last: String = sqlx::query_scalar(
        "select hash from audit_events where user_id = 'alice' order by seq desc limit 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(head, (chain.len() as i64, last));
    verify_ok(&app.pool).await;
}

#[tokio::test]
async fn the_database_refuses_a_misdated_duplicate_or_rewritten_event() {
    let app = spawn_app().await;
    assert_eq!(
        app.patch("alice", &json!({"mobile_number": "9812345678"}))
            .await
            .status(),
        200
    );
    let gateway = PgPool::connect(&app_role_url(&db_url(&app)).await)
        .await
        .unwrap();
    let insert = |at: &'static str, seq: i64| {
        let gateway = gateway.clone();
        async move {
            sqlx::query(&format!(
                "insert into audit_events (occurred_at, user_id, seq, prev_hash, hash, format,
                                           event_type, caller, outcome)
                 values ({at}, 'alice', $1, repeat('0', 64), repeat('1', 64), 3,
                         'change_requested', 'test-writer', 'accepted')"
            ))
            .bind(seq)
            .execute(&gateway)
            .await
        }
    };
    let err = insert("now() - interval '1 hour'", 1000).await.unwrap_err();
    assert!(
        err.to_string().contains("audit_events_plausible_time"),
        "{err}"
    );
    let err = insert("now() + interval '1 hour'", 1000).await.unwrap_err();
    assert!(
        err.to_string().contains("audit_events_plausible_time"),
        "{err}"
    );
    let err = insert("now()", 1).await.unwrap_err();
    assert!(
        err.to_string().contains("_user_seq"),
        "a second seq 1: {err}"
    );
    let err = sqlx::query("update audit_events set outcome = 'failed' where user_id = 'alice'")
        .execute(&gateway)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("permission denied") || msg.contains("append-only"),
        "{msg}"
    );
    // An event the database chains gets the database's seq and hash, whatever the writer gave
    // and whichever flag it set (the retired audit_append's flag is no way around the trigger).
    let mut tx = gateway.begin().await.unwrap();
    sqlx::query("select set_config('pgw.audit_append', 'on', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let (seq, hash): (i64, String) = sqlx::query_as(
        "insert into audit_events (user_id, event_type, caller, outcome, seq, prev_hash, hash)
         values ('alice', 'probe', 'test-writer', 'ok', 999, 'x', 'y') returning seq, hash",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let events = chain_of(&app.pool, "alice").await.len() as i64;
    assert_eq!(seq, events);
    assert_eq!(hash.len(), 64);
    let err = sqlx::query("select audit_append(array[]::audit_event_input_v2[])")
        .execute(&gateway)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("retired"), "{err}");
    verify_ok(&app.pool).await;
}

/// event_type, old, new, old HMAC, target (`audit_field_changes`).
type FieldRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// A user's first event can come before the user's row (a refused links update): the row, once
/// created, takes that chain's head over, and later events continue the one chain.
#[tokio::test]
async fn a_chain_begun_before_the_users_row_continues_in_it() {
    let app = spawn_app().await;
    let gateway = PgPool::connect(&app_role_url(&db_url(&app)).await)
        .await
        .unwrap();
    let event = "insert into audit_events (user_id, event_type, caller, outcome)
                 values ('carol', 'links_refused', 'test-writer', 'link_conflict')";
    sqlx::query(event).execute(&gateway).await.unwrap();
    sqlx::query("insert into profile_links (user_id) values ('carol')")
        .execute(&gateway)
        .await
        .unwrap();
    sqlx::query(event).execute(&gateway).await.unwrap();
    let chain = chain_of(&app.pool, "carol").await;
    assert_eq!(
        chain.iter().map(|e| e.0).collect::<Vec<_>>(),
        [1, 2],
        "{chain:?}"
    );
    let heads: Vec<(String, i64)> =
        sqlx::query_as("select user_id, seq from audit_heads where user_id = 'carol'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(heads, [("carol".to_string(), 2)]);
    verify_ok(&app.pool).await;
}

#[tokio::test]
async fn the_auditor_view_derives_old_values_from_the_last_applied_step() {
    let app = spawn_app().await;
    let key = profile_gateway::crypto::decode_key(
        base_settings("postgres://u@127.0.0.1/db", "http://127.0.0.1:1")
            .audit
            .hmac_key
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    let first = app
        .patch("alice", &json!({"mobile_number": "9812345678"}))
        .await;
    assert_eq!(first.status(), 200);
    let second: Value = app
        .patch("alice", &json!({"mobile_number": "9812340000"}))
        .await
        .json()
        .await
        .unwrap();
    let id: uuid::Uuid = second["change_id"].as_str().unwrap().parse().unwrap();
    let rows: Vec<FieldRow> = sqlx::query_as(
        "select event_type, old_value_masked, new_value_masked, old_hmac, target
               from audit_field_changes where change_id = $1 and field = 'mobile_number'
              order by event_id",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1 + 3, "{rows:?}");
    for (event_type, old, new, old_hmac, _) in &rows {
        assert_eq!(old.as_deref(), Some("******5678"), "{event_type}");
        assert_eq!(new.as_deref(), Some("******0000"));
        assert_eq!(
            old_hmac.as_deref(),
            Some(profile_gateway::crypto::hmac_hex(&key, "9812345678").as_str())
        );
    }
    // The stored event carries only what was new; its hash covers that.
    let stored: Value = sqlx::query_scalar(
        "select \"values\" from audit_events where change_id = $1 and event_type = 'change_requested'",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(stored["mobile_number"].get("old").is_none(), "{stored}");
}

/// The last migration of 60be048, the build the issue measured.
const BEFORE: i64 = 20261123000016;

#[tokio::test]
async fn a_database_with_history_from_60be048_verifies_after_the_migration() {
    let (_name, url) = fresh_database().await;
    let pool = PgPool::connect(&url).await.unwrap();
    let mut old = sqlx::migrate::Migrator::new(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations"
    )))
    .await
    .unwrap();
    old.migrations = old
        .migrations
        .iter()
        .filter(|m| m.version <= BEFORE)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    old.run(&pool).await.unwrap();
    sqlx::query(
        "insert into profile_links (user_id, juspay_customer_id, juspay_wallet_ids,
                                    razorpay_customer_reference)
         values ('alice', 'cst_demo_alice', '{wlt_demo_alice_paytm,wlt_demo_alice_mobikwik}',
                 'cref_demo_alice')",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Two changes the way 60be048 wrote them: audit_append chains them and stores old values.
    for (n, masked, hmac) in [(1, "******5678", "aa"), (2, "******0000", "bb")] {
        let change = uuid::Uuid::new_v4();
        let vals = json!({"mobile_number": {"new": masked, "new_hmac": hmac}}).to_string();
        sqlx::query(
            "select audit_append(array[
               row('alice', 'change_requested', 'app', 'accepted', $1::uuid, null, null, null,
                   '{mobile_number}', $2::jsonb, 'k1', null, $3::text, null, '10.0.0.1')::audit_event_input,
               row('alice', 'step_attempted', 'app', 'applied', $1::uuid, 1, 'juspay_wallet',
                   'wlt_demo_alice_paytm', '{mobile_number}', $2::jsonb, 'k1', null, $3::text, null,
                   '10.0.0.1')::audit_event_input,
               row('alice', 'change_completed', 'app', 'applied', $1::uuid, null, null, null,
                   '{mobile_number}', '{}'::jsonb, null, null, $3::text, null, '10.0.0.1')::audit_event_input])",
        )
        .bind(change)
        .bind(vals)
        .bind(format!("req-{n}"))
        .execute(&pool)
        .await
        .unwrap();
    }
    let before: Vec<(i64, String)> =
        sqlx::query_as("select seq, hash from audit_events order by seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(before.len(), 6);

    profile_gateway::db::migrate(&pool).await.unwrap();
    let report = verify_ok(&pool).await;
    assert_eq!(report.events, 6);
    // The old values the old path stored stay what the view shows.
    let old: Option<String> = sqlx::query_scalar(
        "select old_value_masked from audit_field_changes
          where request_id = 'req-2' and event_type = 'change_requested'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(old.as_deref(), Some("******5678"));

    // The gateway continues the chain from the migrated head.
    let sandbox = spawn_sandbox().await;
    let mut settings = base_settings(&url, &sandbox.base_url());
    settings.database.migrate_on_start = false;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = Application::build(&settings, listener).await.unwrap();
    let base = format!("http://{}", gateway.local_addr());
    tokio::spawn(gateway.run_until(std::future::pending()));
    let resp = reqwest::Client::new()
        .patch(format!("{base}/profile/alice"))
        .bearer_auth(TOKEN)
        .header("idempotency-key", "after-the-migration")
        .json(&json!({"mobile_number": "9812341111"}))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    let change: uuid::Uuid = body["change_id"]
        .as_str()
        .expect("applied")
        .parse()
        .unwrap();
    let chain = chain_of(&pool, "alice").await;
    assert_eq!(chain[5].0, 6);
    assert_eq!(chain[6], (7, Some(3), "change_requested".to_string()));
    let report = verify_ok(&pool).await;
    assert!(report.events > 6);
    // Derived for the new change from the last applied step of the old history.
    let old: Option<String> = sqlx::query_scalar(
        "select old_value_masked from audit_field_changes
          where change_id = $1 and event_type = 'change_requested'",
    )
    .bind(change)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(old.as_deref(), Some("******0000"));
    // ...and for its attempt at the same wallet, recorded in its final event (one event per
    // settle), from the old history's attempt there.
    let at_wallet: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
        "select event_type, outcome, old_value_masked, new_value_masked from audit_field_changes
          where change_id = $1 and upstream_ref = 'wlt_demo_alice_paytm'",
    )
    .bind(change)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        at_wallet,
        [(
            "change_completed".to_string(),
            "applied".to_string(),
            Some("******0000".to_string()),
            Some("******1111".to_string())
        )]
    );
}
