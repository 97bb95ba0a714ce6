//! Durable changes: idempotency keys, per-user order across replicas, retries that heal or end,
//! read-back of unknown outcomes, operator retry, and completion after crashes.
//!
//! (Over ~400 lines on purpose: each durability promise is one scenario over the same crash, outage and replica fixtures; split, it would scatter them.)

use crate::helpers::*;
use profile_gateway::settings::Settings;
use profile_gateway::startup::Application;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use upstream_sandbox::{FaultSpec, JournalEntry};

fn db_url(app: &TestApp) -> String {
    format!(
        "{}/{}",
        admin_url().rsplit_once('/').unwrap().0,
        app.db_name
    )
}

/// Another replica on the same database and upstreams; returns its base URL.
async fn spawn_replica(app: &TestApp, tweak: impl FnOnce(&mut Settings)) -> String {
    let mut settings = base_settings(&db_url(app), &app.sandbox.base_url());
    tweak(&mut settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replica = Application::build(&settings, listener).await.unwrap();
    let base = format!("http://{}", replica.local_addr());
    tokio::spawn(replica.run_until(std::future::pending()));
    base
}

async fn wait_all_final(app: &TestApp, within: Duration) {
    let started = Instant::now();
    loop {
        let pending = app
            .count("select count(*) from changes where status = 'pending'")
            .await;
        if pending == 0 {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{pending} changes still pending after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn updates<'a>(journal: &'a [JournalEntry], route: &str) -> Vec<&'a JournalEntry> {
    journal
        .iter()
        .filter(|e| e.route.as_deref() == Some(route) && e.method != "GET")
        .collect()
}

#[tokio::test]
async fn idempotency_key_is_required_and_replays_the_change() {
    let app = spawn_app().await;
    let body = json!({"first_name": "Alicia"});
    let url = app.url("/profile/alice");
    let missing = app
        .client
        .patch(&url)
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (s, p) = problem(missing).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (400, Some("idempotency_key_missing"))
    );
    for bad in [
        "short",
        "\"has spaces in it, which is wrong\"",
        &"k".repeat(256),
    ] {
        let resp = app.patch_with_key("alice", &body, bad).await;
        let (s, p) = problem(resp).await;
        assert_eq!(
            (s, p["code"].as_str()),
            (400, Some("idempotency_key_malformed")),
            "{bad}"
        );
    }
    assert!(app.journal().is_empty());

    // The draft's quoted form and the bare token are the same key.
    let first = app
        .patch_with_key("alice", &body, "\"key-aaaaaaaaaaaaaaaa\"")
        .await;
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let again = app
        .client
        .patch(&url)
        .bearer_auth(TOKEN)
        .header("idempotency-key", "key-aaaaaaaaaaaaaaaa")
        .header("content-type", "application/json")
        .body("{ \"first_name\" :\"Alicia\" }")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["change_id"], first["change_id"]);
    assert_eq!(again["steps"], first["steps"]);
    assert_eq!(app.journal().len(), 1, "the replay called no upstream");

    let (s, p) = problem(
        app.patch_with_key(
            "alice",
            &json!({"first_name": "Other"}),
            "key-aaaaaaaaaaaaaaaa",
        )
        .await,
    )
    .await;
    assert_eq!(
        (s, p["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    // Keys are scoped per user: the same key for another user is another change.
    assert_eq!(
        app.patch_with_key("bob", &body, "key-aaaaaaaaaaaaaaaa")
            .await
            .status(),
        200
    );
    assert_eq!(app.count("select count(*) from changes").await, 2);
    assert_eq!(
        app.count(
            "select count(*) from idempotency_keys where expires_at > now() + interval '23 hours'"
        )
        .await,
        2,
        "keys are kept at least 24 h"
    );
}

/// Puts every key past its retention and runs the reaper once: how many keys it released.
async fn expire_every_key_and_reap(app: &TestApp) -> u64 {
    sqlx::query("update idempotency_keys set expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    profile_gateway::store::idempotency::reap(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn expired_keys_are_reaped_and_then_start_a_new_change() {
    let app = spawn_app().await;
    let body = json!({"first_name": "Reaped"});
    assert_eq!(
        app.patch_with_key("alice", &body, "reap-key-0000000001")
            .await
            .status(),
        200
    );
    assert_eq!(expire_every_key_and_reap(&app).await, 1);
    assert_eq!(app.count("select count(*) from idempotency_keys").await, 0);
    // Past its retention the key is a new key: a new change, not a replay.
    let again = app
        .patch_with_key("alice", &body, "reap-key-0000000001")
        .await;
    assert_eq!(again.status(), 200);
    assert!(again.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.count("select count(*) from changes").await, 2);
}

#[tokio::test]
async fn an_expired_key_not_yet_reaped_starts_a_new_change_and_the_old_one_lets_it_go() {
    let app = spawn_app().await;
    let body = json!({"first_name": "Expired"});
    let first = app
        .patch_with_key("alice", &body, "expired-key-000000001")
        .await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    sqlx::query("update changes set idem_expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    // No reap ran: the record itself releases the expired key of the finished change.
    let again = app
        .patch_with_key("alice", &body, "expired-key-000000001")
        .await;
    assert_eq!(again.status(), 200);
    assert!(again.headers().get("idempotent-replayed").is_none());
    let again: Value = again.json().await.unwrap();
    assert_ne!(again["change_id"], first["change_id"]);
    let keys: Vec<(uuid::Uuid, Option<String>)> =
        sqlx::query_as("select id, idem_key from changes order by user_seq")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        keys,
        [
            (first["change_id"].as_str().unwrap().parse().unwrap(), None),
            (
                again["change_id"].as_str().unwrap().parse().unwrap(),
                Some("expired-key-000000001".to_string())
            ),
        ]
    );
    // The same request now replays the new change.
    let replay = app
        .patch_with_key("alice", &body, "expired-key-000000001")
        .await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay["change_id"], again["change_id"]);
}

#[tokio::test]
async fn the_key_of_an_unfinished_change_outlives_its_expiry() {
    let app = spawn_app().await;
    // The customer update hangs: 202, the change stays pending.
    app.sandbox
        .add_fault(FaultSpec::hang("juspay_customer_update"));
    let body = json!({"mobile_number": "9811111122"});
    let first = app
        .patch_with_key("bob", &body, "pending-key-000000001")
        .await;
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["status"], "pending", "{first}");
    assert_eq!(
        expire_every_key_and_reap(&app).await,
        0,
        "an unfinished change keeps its key"
    );
    let again = app
        .patch_with_key("bob", &body, "pending-key-000000001")
        .await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["change_id"], first["change_id"]);
    assert_eq!(app.count("select count(*) from changes").await, 1);
}

#[tokio::test]
async fn fifty_concurrent_duplicates_make_one_upstream_call_per_step() {
    let app = spawn_app().await;
    // Slow upstreams keep the first request in flight while the duplicates arrive.
    app.sandbox.add_fault(FaultSpec::latency("*", 200));
    let body = json!({"mobile_number": "9811111111"});
    let key = "dup-key-0123456789abcdef";
    let requests = (0..50).map(|_| app.patch_with_key("bob", &body, key));
    let responses = futures_util::future::join_all(requests).await;
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut change_ids = std::collections::HashSet::new();
    for r in responses {
        let status = r.status().as_u16();
        *statuses.entry(status).or_default() += 1;
        if status == 409 {
            assert!(r.headers().contains_key("retry-after"));
            let (_, p) = problem(r).await;
            assert_eq!(p["code"], "idempotency_key_in_flight");
        } else {
            assert_eq!(status, 200, "{}", r.text().await.unwrap());
            let v: Value = r.json().await.unwrap();
            change_ids.insert(v["change_id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(change_ids.len(), 1, "{statuses:?}");
    let j = app.journal();
    assert_eq!(updates(&j, "juspay_customer_update").len(), 1);
    assert_eq!(updates(&j, "juspay_wallet_update").len(), 1);
    assert_eq!(app.count("select count(*) from changes").await, 1);
    // After the first answered, a duplicate gets the stored outcome.
    let late = app.patch_with_key("bob", &body, key).await;
    assert_eq!(late.status(), 200);
    assert_eq!(late.headers()["idempotent-replayed"], "true");
}

#[tokio::test]
async fn two_hundred_changes_for_one_user_through_three_replicas_apply_in_order() {
    // All 200 may wait at once: the bound on pending changes is tested in limits.rs.
    let unbounded = |s: &mut Settings| s.changes.max_pending_per_user = 1000;
    let app = spawn_app_with(unbounded).await;
    let b = spawn_replica(&app, unbounded).await;
    let c = spawn_replica(&app, unbounded).await;
    let bases = [app.base.clone(), b, c];
    let n = 200;
    let requests = (0..n).map(|i| {
        let base = bases[i % 3].clone();
        let client = app.client.clone();
        async move {
            let number = format!("97{:08}", i);
            let resp = client
                .patch(format!("{base}/profile/bob"))
                .bearer_auth(TOKEN)
                .header("idempotency-key", format!("order-key-{i:012}"))
                .json(&json!({"mobile_number": number}))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), number)
        }
    });
    let results = futures_util::future::join_all(requests).await;
    for (status, _) in &results {
        assert!(*status == 200 || *status == 202, "{status}");
    }
    wait_all_final(&app, Duration::from_secs(60)).await;

    let seqs: Vec<i64> =
        sqlx::query_scalar("select user_seq from changes where user_id = 'bob' order by user_seq")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        seqs,
        (1..=n as i64).collect::<Vec<_>>(),
        "gap-free per-user sequence"
    );
    assert_eq!(
        app.count("select count(*) from changes where status <> 'applied'")
            .await,
        0
    );

    // The order the upstream saw is the order the changes were accepted, one change at a time.
    let key_to_seq: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "select k.idem_key, c.user_seq from idempotency_keys k join changes c on c.id = k.change_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let number_to_seq: HashMap<String, i64> = results
        .iter()
        .enumerate()
        .map(|(i, (_, number))| {
            (
                format!("mobile_number={number}"),
                key_to_seq[&format!("order-key-{i:012}")],
            )
        })
        .collect();
    let journal = app.journal();
    let mut last_seq = 0;
    for e in journal.iter().filter(|e| e.method == "POST") {
        let number = e
            .body
            .split('&')
            .find(|p| p.starts_with("mobile_number="))
            .unwrap();
        let seq = number_to_seq[number];
        assert!(seq >= last_seq, "upstream saw seq {seq} after {last_seq}");
        last_seq = seq;
    }
    assert_eq!(updates(&journal, "juspay_customer_update").len(), n);
    assert_eq!(updates(&journal, "juspay_wallet_update").len(), n);

    // The upstream state is the last accepted change's.
    let last_number = results
        .iter()
        .enumerate()
        .find(|(i, _)| key_to_seq[&format!("order-key-{i:012}")] == n as i64)
        .unwrap()
        .1
        .1
        .clone();
    let state = serde_json::to_value(app.sandbox.state()).unwrap();
    let bob = state["juspay_customers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "cst_demo_bob")
        .unwrap();
    assert_eq!(bob["mobile_number"], last_number.as_str());
    let wallet = state["juspay_wallets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == "wlt_demo_bob_paytm")
        .unwrap();
    assert_eq!(wallet["mobile_number"], last_number.as_str());
}

#[tokio::test]
async fn a_retryable_outage_that_heals_completes_without_the_caller() {
    let app = spawn_app().await;
    // Four failures: three in the request, then the completer's retries.
    app.sandbox.add_fault(
        FaultSpec::status(
            "juspay_wallet_update",
            503,
            "<html>busy</html>",
            Some("text/html"),
        )
        .times(4),
    );
    let resp = app
        .patch("bob", &json!({"mobile_number": "9822222222"}))
        .await;
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "pending");
    assert_eq!(
        location,
        format!("/changes/{}", body["change_id"].as_str().unwrap())
    );
    // The completer that resumes the change writes, into the events of its attempts, the actor
    // the change's request event recorded, not the one of the change row (which the gateway's
    // role may update).
    let change_id: uuid::Uuid = body["change_id"].as_str().unwrap().parse().unwrap();
    sqlx::query(r#"update changes set actor = '{"auth": "forged"}' where id = $1"#)
        .bind(change_id)
        .execute(&app.pool)
        .await
        .unwrap();
    wait_all_final(&app, Duration::from_secs(20)).await;
    let done: Value = app.get(&location).await.json().await.unwrap();
    assert_eq!(done["status"], "applied", "{done}");
    let actors: Vec<(String, Option<Value>)> = sqlx::query_as(
        "select event_type, actor from audit_events where change_id = $1 order by seq",
    )
    .bind(change_id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    // One event per settle: the request, four rounds (the customer and the wallet's first
    // attempt, then the wallet's next three), and the completion with the fifth.
    let kinds: Vec<&str> = actors.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "change_requested",
            "round",
            "round",
            "round",
            "round",
            "change_completed"
        ],
        "{actors:?}"
    );
    let requested = actors[0].1.clone().unwrap();
    assert_eq!(requested["auth"], "token");
    for (kind, a) in &actors {
        assert_eq!(a.as_ref(), Some(&requested), "{kind}");
    }
    let wallet = &done["steps"][1];
    assert_eq!(
        (wallet["status"].as_str(), wallet["attempts"].as_i64()),
        (Some("applied"), Some(5))
    );
    assert!(wallet.get("error").is_none());
    assert_eq!(updates(&app.journal(), "juspay_wallet_update").len(), 5);
    // A retry with the same key now returns the final state.
    let attempts: Vec<i32> = sqlx::query_scalar(
        "select (s ->> 'attempt')::int from audit_events e, jsonb_array_elements(e.\"values\" -> 'steps') s
          where s ->> 'target' = 'juspay_wallet' order by e.seq",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(attempts, [1, 2, 3, 4, 5], "every attempt is audited");
}

#[tokio::test]
async fn an_outage_that_does_not_heal_ends_failed_after_the_budget() {
    let app = spawn_app().await;
    app.sandbox
        .add_fault(FaultSpec::status("juspay_wallet_update", 503, "", None));
    let resp = app
        .patch("bob", &json!({"mobile_number": "9833333333"}))
        .await;
    assert_eq!(resp.status(), 202);
    wait_all_final(&app, Duration::from_secs(20)).await;
    let change: Value = app
        .get("/profile/bob/changes")
        .await
        .json::<Value>()
        .await
        .unwrap()["changes"][0]
        .clone();
    assert_eq!(change["status"], "partially_applied");
    let wallet = &change["steps"][1];
    assert_eq!(wallet["status"], "failed");
    assert_eq!(wallet["attempts"], 5);
    assert_eq!(wallet["error"]["code"], "upstream_unavailable");
    assert_eq!(wallet["error"]["retryable"], true);
    // Bounded: no sixth attempt however long we wait.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(updates(&app.journal(), "juspay_wallet_update").len(), 5);
    assert_eq!(app.count("select count(*) from audit_events where event_type = 'change_completed' and outcome = 'partially_applied'").await, 1);
}

#[tokio::test]
async fn an_unknown_outcome_is_read_back_before_anything_is_resent() {
    let app = spawn_app_with(|s| juspay_timeout_ms(s, 300)).await;
    // The wallet applies the update, then the answer never comes.
    app.sandbox.add_fault(
        FaultSpec::hang("juspay_wallet_update")
            .after_apply()
            .times(1),
    );
    let resp = app
        .patch("bob", &json!({"mobile_number": "9844444444"}))
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let wallet = &body["steps"][1];
    assert_eq!(
        (wallet["status"].as_str(), wallet["attempts"].as_i64()),
        (Some("applied"), Some(2))
    );
    let j = app.journal();
    let wallet_calls: Vec<(&str, &str)> = j
        .iter()
        .filter(|e| e.path == "/wallets/wlt_demo_bob_paytm")
        .map(|e| (e.method.as_str(), e.route.as_deref().unwrap()))
        .collect();
    assert_eq!(
        wallet_calls,
        [
            ("POST", "juspay_wallet_update"),
            ("GET", "juspay_wallet_get")
        ]
    );
    let confirmed: bool = sqlx::query_scalar(
        "select confirmed_by_read_back from change_steps where target = 'juspay_wallet'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(confirmed);
}

#[tokio::test]
async fn an_open_breaker_keeps_an_unknown_outcome_unknown() {
    let app = spawn_app_with(|s| {
        juspay_timeout_ms(s, 300);
        s.providers.all_mut().max_attempts = Some(2);
        s.providers.all_mut().in_request_attempts = Some(2);
        s.providers.all_mut().breaker_failure_threshold = Some(1);
        s.providers.all_mut().breaker_open_ms = Some(60_000);
    })
    .await;
    // The first wallet write times out (its outcome is unknown) and opens the breaker; the second
    // attempt is not let out. Nothing proved the write did not happen: the step must stay unknown.
    app.sandbox
        .add_fault(FaultSpec::hang("juspay_wallet_update").times(1));
    let (status, p) = problem(
        app.patch("bob", &json!({"mobile_number": "9866666666"}))
            .await,
    )
    .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (502, Some("upstream_unavailable")),
        "{p}"
    );
    let wallet = &p["steps"][1];
    assert_eq!(
        (wallet["status"].as_str(), wallet["attempts"].as_i64()),
        (Some("unknown"), Some(2)),
        "{p}"
    );
    assert_eq!(
        updates(&app.journal(), "juspay_wallet_update").len(),
        1,
        "the breaker sent nothing more"
    );
}

#[tokio::test]
async fn a_change_completes_when_the_client_hangs_up() {
    let app = spawn_app().await;
    // The client hangs up while the upstream still holds the call, long after the change was
    // recorded (100 ms was not always enough for the record on a loaded CI machine).
    app.sandbox.add_fault(FaultSpec::latency("*", 800));
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let sent = impatient
        .patch(app.url("/profile/bob"))
        .bearer_auth(TOKEN)
        .header("idempotency-key", "hang-up-key-000000001")
        .json(&json!({"email_address": "gone@example.org"}))
        .send()
        .await;
    assert!(sent.is_err(), "the client gave up");
    wait_all_final(&app, Duration::from_secs(5)).await;
    assert_eq!(
        app.count("select count(*) from changes where status = 'applied'")
            .await,
        1
    );
    let retry = app
        .patch_with_key(
            "bob",
            &json!({"email_address": "gone@example.org"}),
            "hang-up-key-000000001",
        )
        .await;
    assert_eq!(retry.status(), 200);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
}

#[tokio::test]
async fn an_operator_can_retry_a_failed_change() {
    let app = spawn_app().await;
    app.sandbox.add_fault(FaultSpec::status(
        "juspay_wallet_update",
        400,
        r#"{"status":"invalid_request_error","error_code":"invalid_input"}"#,
        Some("application/json"),
    ));
    let (s, p) = problem(
        app.patch("bob", &json!({"mobile_number": "9855555555"}))
            .await,
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (422, Some("upstream_rejected")));
    let id = p["change_id"].as_str().unwrap().to_string();
    let retry_url = app.url(&format!("/changes/{id}/retry"));

    let reader = app
        .client
        .post(&retry_url)
        .bearer_auth(READ_ONLY_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(reader.status(), 403);
    app.sandbox.clear_faults();
    app.sandbox.clear_journal();
    let resp = app
        .client
        .post(&retry_url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        (v["change_id"].as_str(), v["status"].as_str()),
        (Some(id.as_str()), Some("applied"))
    );
    // Only the step that had failed was sent again.
    let routes: Vec<String> = app
        .journal()
        .iter()
        .filter_map(|e| e.route.clone())
        .collect();
    assert_eq!(routes, ["juspay_wallet_update"]);
    assert_eq!(
        app.count("select count(*) from audit_events where event_type = 'change_retried'")
            .await,
        1
    );
    // The retry and the attempts it drove carry the operator's own actor (a request of its own),
    // the first request's events keep theirs.
    let actors: Vec<(String, Value)> = sqlx::query_as(
        "select event_type, actor from audit_events where change_id = $1::uuid order by seq",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let at = actors
        .iter()
        .position(|(kind, _)| kind == "change_retried")
        .unwrap();
    let (first, retried) = (&actors[0].1, &actors[at].1);
    assert_eq!(
        (first["auth"].as_str(), retried["auth"].as_str()),
        (Some("token"), Some("token"))
    );
    assert_ne!(first["gateway_request_id"], retried["gateway_request_id"]);
    assert!(actors[..at].iter().all(|(_, a)| a == first), "{actors:?}");
    assert!(actors[at..].iter().all(|(_, a)| a == retried), "{actors:?}");
    assert!(actors.len() > at + 1, "{actors:?}");
    let payload: Option<Vec<u8>> = sqlx::query_scalar("select payload_enc from changes")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(payload.is_none(), "erased once applied");

    let (s, p) = problem(
        app.client
            .post(&retry_url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (409, Some("change_not_retryable")));
}

/// An operator's retry that cannot finish within its request parks, and the completer finishes
/// it. Every event of that drive, the completer's included, carries who acted in the retry (its
/// caller, request id and actor, from the hashed `change_retried` event), not in the first
/// request.
#[tokio::test]
async fn a_parked_operator_retry_is_finished_by_the_completer_as_the_operator() {
    const OPERATOR_TOKEN: &str = "test-token-operator";
    let app = spawn_app_with(|s| {
        s.auth
            .callers
            .push(profile_gateway::settings::CallerSettings {
                name: "test-operator".into(),
                token_sha256: Some(profile_gateway::auth::token_sha256(OPERATOR_TOKEN)),
                scopes: vec!["changes:operate".into()],
                ..Default::default()
            })
    })
    .await;
    app.sandbox.add_fault(FaultSpec::status(
        "juspay_wallet_update",
        400,
        r#"{"status":"invalid_request_error","error_code":"invalid_input"}"#,
        Some("application/json"),
    ));
    let (s, p) = problem(
        app.patch("bob", &json!({"mobile_number": "9866666666"}))
            .await,
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (422, Some("upstream_rejected")));
    let id: uuid::Uuid = p["change_id"].as_str().unwrap().parse().unwrap();
    app.sandbox.clear_faults();
    // The retry's three attempts in the request fail, one of the completer's too.
    app.sandbox.add_fault(
        FaultSpec::status(
            "juspay_wallet_update",
            503,
            "<html>busy</html>",
            Some("text/html"),
        )
        .times(4),
    );
    let resp = app
        .client
        .post(app.url(&format!("/changes/{id}/retry")))
        .bearer_auth(OPERATOR_TOKEN)
        .header("x-request-id", "op-retry-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "pending", "{v}");
    wait_all_final(&app, Duration::from_secs(20)).await;
    let done: Value = app
        .get(&format!("/changes/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(done["status"], "applied", "{done}");

    let events: Vec<(String, Vec<i32>, String, String, Value)> = sqlx::query_as(
        "select event_type,
                array(select (s ->> 'step_no')::int from jsonb_array_elements(\"values\" -> 'steps') s),
                caller, request_id, actor from audit_events
          where change_id = $1 order by seq",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let at = events.iter().position(|e| e.0 == "change_retried").unwrap();
    let (first, retried) = (&events[0], &events[at]);
    assert_eq!(
        (first.2.as_str(), retried.2.as_str(), retried.3.as_str()),
        ("test-writer", "test-operator", "op-retry-1")
    );
    assert_ne!(first.4, retried.4);
    for e in &events[..at] {
        assert_eq!((&e.2, &e.3, &e.4), (&first.2, &first.3, &first.4), "{e:?}");
    }
    for e in &events[at..] {
        assert_eq!(
            (&e.2, &e.3, &e.4),
            (&retried.2, &retried.3, &retried.4),
            "{e:?}"
        );
    }
    // The retry's 3 wallet attempts in the request, then the completer's 2, and the completion.
    let wallet = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["target"] == "juspay_wallet")
        .unwrap();
    let wallet_step = wallet["step_no"].as_i64().unwrap() as i32;
    let after: Vec<(&str, &[i32])> = events[at + 1..]
        .iter()
        .map(|e| (e.0.as_str(), e.1.as_slice()))
        .collect();
    let wallet_only = [wallet_step];
    let mut expected = vec![("round", wallet_only.as_slice()); 4];
    expected.push(("change_completed", wallet_only.as_slice()));
    assert_eq!(after, expected);
    let who: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
        "select event_type, caller, gateway_request_id, actor_source from audit_log
          where change_id = $1 and user_event_seq > (select seq from audit_events
                                                      where change_id = $1 and event_type = 'change_retried')
          order by user_event_seq",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(who.len(), 5, "four rounds and the completion");
    for w in &who {
        assert_eq!(
            (w.1.as_str(), w.2.as_deref(), w.3.as_deref()),
            (
                "test-operator",
                retried.4["gateway_request_id"].as_str(),
                Some("event")
            ),
            "{w:?}"
        );
    }
    let mut conn = app.pool.acquire().await.unwrap();
    let report = profile_gateway::audit::verify::verify(&mut conn, &Default::default())
        .await
        .unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[tokio::test]
async fn crash_test_every_accepted_change_completes_once_after_sigkill() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.callers]]\nname = \"crash-test\"\ntoken_sha256 = \"{}\"\nscopes = [\"*\"]\n",
            profile_gateway::auth::token_sha256(TOKEN)
        ),
    )
    .unwrap();
    // Upstream latency keeps fan-outs in flight when the kill lands.
    app.sandbox
        .add_fault(FaultSpec::latency("*", 40).probability(0.5));
    let rounds = 24;
    let mut sent: Vec<(String, String)> = Vec::new(); // (idempotency key, mobile number)
    let mut rng_state = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    for round in 0..rounds {
        // Every third round dies at the worst moment: the first upstream answer arrives and the
        // process aborts before recording it. The others are SIGKILLed at a random moment.
        let at_worst_moment = round % 3 == 0;
        let failpoints = if at_worst_moment {
            "after_upstream_write=1"
        } else {
            ""
        };
        let mut gw = start_gateway(&app, &config, failpoints, &[]).await;
        let mut inflight = Vec::new();
        for k in 0..3 {
            let key = format!("crash-{round:03}-{k}-padding-key");
            let number = format!("96{round:04}{k:04}");
            let user = if k % 2 == 0 { "alice" } else { "bob" };
            sent.push((key.clone(), number.clone()));
            let url = format!("{}/profile/{user}", gw.base);
            let client = app.client.clone();
            inflight.push(tokio::spawn(async move {
                client
                    .patch(url)
                    .bearer_auth(TOKEN)
                    .header("idempotency-key", key)
                    .json(&json!({"mobile_number": number}))
                    .send()
                    .await
            }));
        }
        if at_worst_moment {
            let exited = tokio::time::timeout(Duration::from_secs(5), gw.child.wait()).await;
            assert!(exited.is_ok(), "the failpoint aborted the gateway");
        } else {
            tokio::time::sleep(Duration::from_millis(next() % 120)).await;
            gw.child.kill().await.unwrap();
        }
        for f in inflight {
            let _ = f.await;
        }
    }
    // A clean replica finishes whatever the dead ones left.
    let survivor = start_gateway(&app, &config, "", &[]).await;
    wait_all_final(&app, Duration::from_secs(60)).await;
    drop(survivor);

    let accepted: HashMap<String, (uuid::Uuid, String)> = sqlx::query_as::<_, (String, uuid::Uuid, String)>(
        "select k.idem_key, c.id, c.status from idempotency_keys k join changes c on c.id = k.change_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(k, id, status)| (k, (id, status)))
    .collect();
    assert!(
        accepted.len() >= rounds,
        "most requests were accepted before the kill: {}",
        accepted.len()
    );
    assert_eq!(
        app.count("select count(*) from changes").await as usize,
        accepted.len()
    );

    // Both kinds of crash happened: changes taken over from a dead replica, and steps whose
    // upstream answer was lost with the process and had to be confirmed by reading back.
    let taken_over = app
        .count("select count(*) from changes where fence > 1")
        .await;
    let read_back = app
        .count("select count(*) from change_steps where confirmed_by_read_back")
        .await;
    eprintln!(
        "crash test: {rounds} kills, {} changes accepted, {taken_over} finished by a completer, {read_back} steps confirmed by read-back",
        accepted.len()
    );
    assert!(taken_over > 0, "no change was taken over");

    let journal = app.journal();
    let applied_posts = |number: &str| -> Vec<&JournalEntry> {
        journal
            .iter()
            .filter(|e| {
                e.method == "POST"
                    && e.status.is_some_and(|s| s < 300)
                    && e.body.contains(&format!("mobile_number={number}"))
            })
            .collect()
    };
    for (key, number) in &sent {
        let posts = applied_posts(number);
        let Some((change_id, status)) = accepted.get(key) else {
            assert!(
                posts.is_empty(),
                "{key}: an unrecorded change reached an upstream"
            );
            continue;
        };
        assert_eq!(status, "applied", "{key}");
        let steps: Vec<(String, String, String)> = sqlx::query_as(
            "select target, upstream_ref, status from change_steps where change_id = $1 order by step_no",
        )
        .bind(change_id)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        // Each step's effect reached its upstream exactly once...
        for (target, upstream_ref, step_status) in &steps {
            assert_eq!(step_status, "applied");
            let path = if target == "juspay_customer" {
                format!("/customers/{upstream_ref}")
            } else {
                format!("/wallets/{upstream_ref}")
            };
            let n = posts.iter().filter(|e| e.path == path).count();
            assert_eq!(n, 1, "{key}: {target} {upstream_ref} applied {n} times");
        }
        assert_eq!(
            posts.len(),
            steps.len(),
            "{key}: no write outside the recorded steps"
        );
        // ...and the audit trail says so: one applied attempt per step, one final event.
        let applied_events = app
            .count(&format!(
                "select count(*) from audit_events e, jsonb_array_elements(e.\"values\" -> 'steps') s
                  where e.change_id = '{change_id}' and s ->> 'status' = 'applied'"
            ))
            .await;
        assert_eq!(applied_events as usize, steps.len(), "{key}");
        let final_events = app
            .count(&format!("select count(*) from audit_events where change_id = '{change_id}' and event_type = 'change_completed'"))
            .await;
        assert_eq!(final_events, 1, "{key}");
    }
    assert!(
        read_back >= (rounds / 3) as i64,
        "each abort after an upstream answer is confirmed by read-back: {read_back}"
    );
}

/// Each replica remembers the links it planned against; links changed through another replica
/// must still be what the next change is planned against (the stale plan is refused and redone).
#[tokio::test]
async fn a_change_is_planned_against_links_changed_through_another_replica() {
    let app = spawn_app().await;
    let b = spawn_replica(&app, |_| {}).await;
    let put_links_via_b = |user: &'static str, links: Value| {
        let client = app.client.clone();
        let b = b.clone();
        async move {
            let resp = client
                .put(format!("{b}/profile/{user}/links"))
                .bearer_auth(TOKEN)
                .json(&links)
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
        }
    };

    // This replica plans alice's change (and remembers her links) ...
    let resp = app.patch("alice", &json!({"first_name": "Alice"})).await;
    assert_eq!(resp.status(), 200);
    // ... then her customer link moves through the other replica (to bob's customer, which bob
    // gives up first: an object belongs to one user).
    put_links_via_b("bob", json!({})).await;
    put_links_via_b(
        "alice",
        json!({"juspay_customer_id": "cst_demo_bob", "juspay_wallet_ids": [],
               "razorpay_customer_reference": "cref_demo_alice"}),
    )
    .await;
    app.sandbox.clear_journal();
    let resp = app.patch("alice", &json!({"first_name": "Alicia"})).await;
    assert_eq!(resp.status(), 200);
    let sent: Vec<String> = app.journal().iter().map(|e| e.path.clone()).collect();
    assert_eq!(sent, vec!["/customers/cst_demo_bob".to_string()]);
    let refs: Vec<String> = sqlx::query_scalar(
        "select s.upstream_ref from change_steps s join changes c on c.id = s.change_id
          where c.user_id = 'alice' order by c.user_seq desc, s.step_no limit 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(refs, vec!["cst_demo_bob".to_string()]);

    // A link added through the other replica: not a 422 from the links this one remembered.
    put_links_via_b("alice", json!({"juspay_customer_id": "cst_demo_alice"})).await;
    put_links_via_b("carol", json!({"juspay_customer_id": "cst_demo_bob"})).await;
    let resp = app.patch("carol", &json!({"first_name": "Carol"})).await;
    assert_eq!(resp.status(), 200);
    put_links_via_b(
        "carol",
        json!({"juspay_customer_id": "cst_demo_bob", "razorpay_customer_reference": "cref_demo_bob"}),
    )
    .await;
    app.sandbox.clear_journal();
    let resp = app
        .patch(
            "carol",
            &json!({"upi": upi_body("carol@okaxis", "change_vpa")}),
        )
        .await;
    let body: Value = resp.json().await.unwrap();
    // Planned and sent to the new link (the simulator's bob has another UPI number, so it refuses
    // the update itself; what matters is that it was asked, instead of a 422 missing_link).
    assert_ne!(body["code"], "missing_link", "{body}");
    assert_eq!(body["steps"][0]["target"], "razorpay_upi", "{body}");
    assert_eq!(body["steps"][0]["ref"], "cref_demo_bob", "{body}");
    let sent: Vec<String> = app.journal().iter().map(|e| e.path.clone()).collect();
    assert_eq!(sent, vec!["/v1/upi/tpap/upi_number".to_string()]);
}

/// Alice's first change, unfinished, of lease generation `fence`, with one step (first_name),
/// leased for an hour (the test app's completer leaves it alone).
async fn alice_pending_change(app: &TestApp, id: uuid::Uuid, fence: i64) {
    for sql in [
        "update profile_links set last_change_seq = 1 where user_id = 'alice'".to_string(),
        format!(
            r#"insert into changes (id, user_id, user_seq, caller, request_id, fields, fence,
                                  payload_key_id, payload_enc, steps, lease_owner,
                                  lease_expires_at)
             values ('{id}', 'alice', 1, 'c', 'r', '{{first_name}}', {fence}, 'k1', '\x00',
                     '{{"0": {{"step_no": 0, "target": "juspay_customer", "upstream_ref": "cst_demo_alice",
                              "fields": ["first_name"], "status": "pending", "attempts": 0}}}}',
                     'test', now() + interval '1 hour')"#
        ),
    ] {
        sqlx::query(&sql).execute(&app.pool).await.unwrap();
    }
}

/// A final settle of [`alice_pending_change`] made under lease generation `fence` (request id
/// `fence-{fence}`), with one webhook event whose id is the fence.
fn alice_settle(
    id: uuid::Uuid,
    fence: i64,
    step: profile_gateway::domain::StepStatus,
    status: profile_gateway::domain::ChangeStatus,
) -> profile_gateway::domain::change::Settle {
    use profile_gateway::domain::change::{Finish, OutboxEvent, Settle, StepOutcome};
    Settle {
        change_id: id,
        fence,
        user_id: profile_gateway::domain::UserId::parse("alice").unwrap(),
        origin: profile_gateway::domain::Origin {
            caller: "c".into(),
            request_id: format!("fence-{fence}"),
            trace_id: None,
            caller_addr: None,
            actor: None,
        },
        outcomes: vec![StepOutcome {
            step_no: 0,
            attempt: 1,
            status: step,
            error: None,
            confirmed_by_read_back: false,
            target: "juspay_customer".into(),
            upstream_ref: "cst_demo_alice".into(),
            fields: vec!["first_name".into()],
        }],
        finish: Some(Finish {
            status,
            fields: vec!["first_name".into()],
            finished_at: chrono::Utc::now(),
        }),
        webhooks: vec![OutboxEvent {
            id: uuid::Uuid::from_u128(fence as u128),
            caller: "c".into(),
            event_type: "change.applied",
            body: format!("{{\"fence\":{fence}}}"),
        }],
    }
}

/// A drive whose lease was taken over may still send its settle, and it may land in the same
/// batch as the current owner's settle for the same change: only the current one is written.
#[tokio::test]
async fn a_stale_settle_beside_the_current_one_in_one_batch_writes_nothing() {
    use profile_gateway::domain::{ChangeStatus, StepStatus};
    use profile_gateway::store::batch::settle_changes;
    let app = spawn_app().await;
    let id = uuid::Uuid::new_v4();
    alice_pending_change(&app, id, 2).await;
    let settle = |fence, step, status| alice_settle(id, fence, step, status);
    // This replica has not written alice's chain yet: the settle reads its head first.
    let written = settle_changes(
        &app.pool,
        &profile_gateway::audit::chain::ChainHeads::default(),
        &[
            settle(1, StepStatus::Failed, ChangeStatus::Failed),
            settle(2, StepStatus::Applied, ChangeStatus::Applied),
        ],
        Duration::ZERO,
    )
    .await
    .unwrap();
    use profile_gateway::store::batch::Settled;
    assert_eq!(written, vec![Settled::Stale, Settled::Written]);
    let (status, step, attempts): (String, String, i32) = sqlx::query_as(
        "select c.status, s.status, s.attempts from changes c join change_steps s on s.change_id = c.id
          where c.id = $1",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), step.as_str(), attempts),
        ("applied", "applied", 1)
    );
    let events: Vec<(String, String, String)> = sqlx::query_as(
        "select event_type, outcome, request_id from audit_events where change_id = $1 order by seq",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let expected = [("change_completed", "applied")]
        .map(|(e, o)| (e.to_string(), o.to_string(), "fence-2".to_string()));
    assert_eq!(events, expected.to_vec());
    let outcomes: Vec<String> = sqlx::query_scalar(
        "select s ->> 'status' from audit_events e, jsonb_array_elements(e.\"values\" -> 'steps') s
          where e.change_id = $1",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        outcomes,
        ["applied"],
        "the fenced-out settle's outcome is not there"
    );
    // Only the settle that was recorded wrote its webhook event.
    let outbox: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("select id, body from webhook_events where change_id = $1")
            .bind(id)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        outbox,
        vec![(uuid::Uuid::from_u128(2), r#"{"fence":2}"#.to_string())]
    );
    let mut conn = app.pool.acquire().await.unwrap();
    let report = profile_gateway::audit::verify::verify(&mut conn, &Default::default())
        .await
        .unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

/// Waits until a session of `pool`'s database waits for a lock that the session `holder` holds
/// (the statement under test, behind the test's open transaction).
async fn until_blocked_by(pool: &sqlx::PgPool, holder: i32) {
    let started = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where $1 = any(pg_blocking_pids(pid))",
        )
        .bind(holder)
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nothing waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `write` in a transaction left open, holding the rows it wrote, then `under_test`, and
/// commits the transaction once `under_test` waits for one of those rows. Returns what
/// `under_test` returned.
async fn behind_an_open_write<T: Send + 'static>(
    app: &TestApp,
    write: &str,
    under_test: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    let mut tx = app.pool.begin().await.unwrap();
    let holder: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    sqlx::query(write).execute(&mut *tx).await.unwrap();
    let task = tokio::spawn(under_test);
    until_blocked_by(&app.pool, holder).await;
    tx.commit().await.unwrap();
    task.await.unwrap()
}

/// Alice's chain head, last change and finished change, from her `profile_links` row.
async fn alice_row(app: &TestApp) -> (i64, String, i64, i64) {
    sqlx::query_as(
        "select chain_seq, chain_hash, last_change_seq, finished_seq from profile_links
          where user_id = 'alice'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// The record locks nothing before it writes: the links version is a condition of the update of
/// the user's row. When the links change while the record waits for that row, PostgreSQL checks
/// the condition again on the new row, and nothing of the change is written.
#[tokio::test]
async fn a_record_behind_a_concurrent_links_update_writes_nothing_and_says_stale() {
    use profile_gateway::domain::change::NewChange;
    use profile_gateway::domain::{Field, Origin, PlannedStep, Target, UserId};
    use profile_gateway::store::batch::{RecordParams, Recorded, record_changes};
    let app = spawn_app().await;
    let version: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select updated_at from profile_links where user_id = 'alice'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let before = alice_row(&app).await;
    let change = NewChange {
        id: uuid::Uuid::new_v4(),
        user_id: UserId::parse("alice").unwrap(),
        origin: Origin {
            caller: "c".into(),
            request_id: "behind-links".into(),
            trace_id: None,
            caller_addr: None,
            actor: None,
        },
        fields: vec!["first_name".into()],
        steps: vec![PlannedStep {
            step_no: 0,
            target: Target::JUSPAY_CUSTOMER,
            upstream_ref: "cst_demo_alice".into(),
            fields: vec![Field::FirstName],
        }],
        payload_key_id: "k1".into(),
        payload_enc: vec![0],
        idem_key: "behind-links".into(),
        fingerprint: vec![1],
        links_version: version,
        audit_values: json!({"first_name": {"new": "A***"}}),
        hmac_key_id: "h1".into(),
    };
    let pool = app.pool.clone();
    // Another writer changes alice's links and holds her row meanwhile.
    let recorded = behind_an_open_write(
        &app,
        "update profile_links set updated_at = updated_at + interval '1 second'
          where user_id = 'alice'",
        async move {
            let params = RecordParams {
                lease_owner: "test",
                lease: Duration::from_secs(30),
                key_in_flight: Duration::from_secs(30),
                key_retention: Duration::from_secs(3600),
                max_pending: 16,
            };
            let heads = profile_gateway::audit::chain::ChainHeads::default();
            record_changes(&pool, &heads, &[&change], &params).await
        },
    )
    .await
    .unwrap();
    assert!(
        matches!(recorded[..], [Recorded::StaleLinks]),
        "{recorded:?}"
    );
    let changes = app.count("select count(*) from changes").await;
    let events = app
        .count("select count(*) from audit_events where event_type = 'change_requested'")
        .await;
    let after = alice_row(&app).await;
    assert_eq!(
        (changes, events),
        (0, 0),
        "nothing of the change is written"
    );
    assert_eq!(
        (after.0, after.1, after.2),
        (before.0, before.1, 0),
        "the head did not move"
    );
}

/// The settle locks nothing before it writes: a change's lease generation is a condition of the
/// update of its row. When a completer claims the change (a new generation) while the settle
/// waits for that row, the settle writes nothing at all, not even the user's head or the event
/// its statement had already moved and inserted, and answers that the change is not its own.
#[tokio::test]
async fn a_settle_behind_a_concurrent_claim_writes_nothing() {
    use profile_gateway::domain::{ChangeStatus, StepStatus};
    use profile_gateway::store::batch::{Settled, settle_changes};
    let app = spawn_app().await;
    let id = uuid::Uuid::new_v4();
    alice_pending_change(&app, id, 1).await;
    let before = alice_row(&app).await;
    let settle = alice_settle(id, 1, StepStatus::Applied, ChangeStatus::Applied);
    let pool = app.pool.clone();
    // A completer claims the change (its lease generation moves to 2) and holds its row
    // meanwhile. The statement that waited writes nothing (it aborts); the next one finds the
    // change claimed.
    let settled = behind_an_open_write(
        &app,
        &format!(
            "update changes set fence = fence + 1, lease_owner = 'completer',
                    lease_expires_at = now() + interval '1 hour'
              where id = '{id}'"
        ),
        async move {
            let heads = profile_gateway::audit::chain::ChainHeads::default();
            settle_changes(&pool, &heads, &[settle], Duration::ZERO).await
        },
    )
    .await
    .unwrap();
    assert_eq!(settled, vec![Settled::Stale]);
    let (status, fence, owner, step): (String, i64, String, String) = sqlx::query_as(
        "select c.status, c.fence, c.lease_owner, c.steps -> '0' ->> 'status' from changes c
          where c.id = $1",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), fence, owner.as_str(), step.as_str()),
        ("pending", 2, "completer", "pending"),
        "the change is as the completer left it"
    );
    let events = app
        .count(&format!(
            "select count(*) from audit_events where change_id = '{id}'"
        ))
        .await;
    let outbox = app
        .count(&format!(
            "select count(*) from webhook_events where change_id = '{id}'"
        ))
        .await;
    let after = alice_row(&app).await;
    assert_eq!(
        (events, outbox),
        (0, 0),
        "no event of the settle, no webhook event"
    );
    assert_eq!(
        (after.0, after.1, after.3),
        (before.0, before.1, 0),
        "alice's head and turn stay"
    );
}

/// The pool hands out connections without a ping (changes::batcher): when every idle connection
/// of the gateway dies (a database restart, a proxy that drops them), the next changes still
/// succeed, each batch going again on the next connection, and nothing is written twice.
#[tokio::test]
async fn connections_that_died_idle_cost_no_request() {
    let app = spawn_app().await;
    for i in 0..3 {
        let resp = app
            .patch("alice", &json!({"first_name": format!("Warm{i}")}))
            .await;
        assert_eq!(resp.status(), 200);
    }
    let killed: i64 = sqlx::query_scalar(
        "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity
          where datname = current_database() and usename = $1 and state = 'idle') t",
    )
    .bind(APP_LOGIN)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(killed >= 1, "the gateway had idle connections");
    // Idle long enough to be pinged (and replaced) before use.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..3 {
        let resp = app
            .patch("alice", &json!({"first_name": format!("After{i}")}))
            .await;
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }
    assert_eq!(app.count("select count(*) from changes").await, 6);
    assert_eq!(
        app.count("select count(*) from changes where status = 'applied'")
            .await,
        6
    );
}

/// A fresh database migrated up to `version` only (to write data in an older shape).
async fn database_at_migration(version: i64) -> sqlx::PgPool {
    let (_name, url) = fresh_database().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let mut old = sqlx::migrate::Migrator::new(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations"
    )))
    .await
    .unwrap();
    old.migrations = old
        .migrations
        .iter()
        .filter(|m| m.version <= version)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    old.run(&pool).await.unwrap();
    pool
}

#[tokio::test]
async fn keys_recorded_before_the_move_are_found_in_their_change_row() {
    // A database at migration 20261202000200, with a key in the old table, then migrated.
    let pool = database_at_migration(20261202000200).await;
    let change = uuid::Uuid::new_v4();
    for sql in [
        "insert into profile_links (user_id, last_change_seq, finished_seq)
         select 'alice', 1, 1 where $1::uuid is not null",
        "insert into changes (id, user_id, user_seq, caller, request_id, fields, status, finished_at)
         values ($1, 'alice', 1, 'app', 'req-1', '{first_name}', 'applied', now())",
        "insert into idempotency_keys (caller, user_id, idem_key, fingerprint, change_id,
                                       in_flight_until, expires_at)
         values ('app', 'alice', 'key-before-the-move-01', '\\x0102', $1, null,
                 now() + interval '1 day')",
    ] {
        sqlx::query(sql).bind(change).execute(&pool).await.unwrap();
    }
    let before: (String, Vec<u8>, uuid::Uuid) =
        sqlx::query_as("select idem_key, fingerprint, change_id from idempotency_keys")
            .fetch_one(&pool)
            .await
            .unwrap();

    profile_gateway::db::migrate(&pool).await.unwrap();
    let moved: (Option<String>, Option<Vec<u8>>, bool) = sqlx::query_as(
        "select idem_key, idem_fingerprint, idem_expires_at > now() + interval '23 hours'
           from changes where id = $1",
    )
    .bind(change)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        moved,
        (Some(before.0.clone()), Some(before.1.clone()), true)
    );
    let through_the_view: (String, Vec<u8>, uuid::Uuid) =
        sqlx::query_as("select idem_key, fingerprint, change_id from idempotency_keys")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(through_the_view, before);
    // The gateway finds it where the record looks.
    let user = profile_gateway::domain::UserId::parse("alice").expect("a valid user id");
    let found = profile_gateway::store::idempotency::find(&pool, "app", &user, &before.0)
        .await
        .unwrap()
        .expect("the moved key is found");
    assert_eq!((found.change_id, found.fingerprint), (change, before.1));
}

#[tokio::test]
async fn steps_recorded_before_the_move_are_in_their_change_row() {
    // A database at migration 20261202000300, with a change's steps as rows, then migrated.
    let pool = database_at_migration(20261202000300).await;
    let change = uuid::Uuid::new_v4();
    for sql in [
        "insert into profile_links (user_id, last_change_seq, finished_seq)
         select 'alice', 1, 1 where $1::uuid is not null",
        "insert into changes (id, user_id, user_seq, caller, request_id, fields, status, finished_at)
         values ($1, 'alice', 1, 'app', 'req-1', '{first_name,mobile_number}', 'partially_applied',
                 now())",
        "insert into change_steps (change_id, step_no, target, upstream_ref, fields, status,
                                   attempts, confirmed_by_read_back)
         values ($1, 0, 'juspay_customer', 'cst_1', '{first_name,mobile_number}', 'applied', 2, true)",
        "insert into change_steps (change_id, step_no, target, upstream_ref, fields, status,
                                   attempts, error_code, error_retryable, upstream_status,
                                   upstream_code, error_message)
         values ($1, 1, 'juspay_wallet', 'wlt_1', '{mobile_number}', 'failed', 5,
                 'upstream_unavailable', true, 503, 'busy', 'the wallet is busy')",
    ] {
        sqlx::query(sql).bind(change).execute(&pool).await.unwrap();
    }
    let steps =
        "select coalesce(json_agg(json_build_array(change_id, step_no, target, upstream_ref,
                         fields, status, attempts, error_code, error_retryable, upstream_status,
                         upstream_code, error_message, confirmed_by_read_back) order by step_no),
                         '[]')::text
                   from change_steps";
    let before: String = sqlx::query_scalar(steps).fetch_one(&pool).await.unwrap();

    profile_gateway::db::migrate(&pool).await.unwrap();
    let document: Value = sqlx::query_scalar("select steps from changes where id = $1")
        .bind(change)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(document.as_object().map(|d| d.len()), Some(2), "{document}");
    assert_eq!(document["1"]["error_message"], "the wallet is busy");
    // The same rows through the view of the old table's name...
    let after: String = sqlx::query_scalar(steps).fetch_one(&pool).await.unwrap();
    assert_eq!(after, before);
    // ...and what the gateway shows of them (its providers registered, as a gateway's are).
    use profile_gateway::domain::Target;
    Target::JUSPAY_CUSTOMER.register();
    Target::JUSPAY_WALLET.register();
    let shown = profile_gateway::store::changes::load_steps(&pool, &[change])
        .await
        .unwrap()
        .remove(&change)
        .unwrap();
    let shown = serde_json::to_value(&shown).unwrap();
    assert_eq!(
        shown,
        json!([
            {"step_no": 0, "target": "juspay_customer", "ref": "cst_1",
             "fields": ["first_name", "mobile_number"], "status": "applied", "attempts": 2},
            {"step_no": 1, "target": "juspay_wallet", "ref": "wlt_1", "fields": ["mobile_number"],
             "status": "failed", "attempts": 5,
             "error": {"code": "upstream_unavailable", "retryable": true, "upstream_status": 503,
                       "upstream_code": "busy", "message": "the wallet is busy"}}
        ])
    );
}
