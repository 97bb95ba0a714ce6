//! The happy path and field routing: exact wire requests and the rows they leave in Postgres.

use crate::helpers::*;
use serde_json::{Value, json};

fn by_route<'a>(
    j: &'a [upstream_sandbox::JournalEntry],
    route: &str,
) -> Vec<&'a upstream_sandbox::JournalEntry> {
    j.iter()
        .filter(|e| e.route.as_deref() == Some(route))
        .collect()
}

#[tokio::test]
async fn a_full_patch_reaches_every_provider_with_the_exact_wire_format() {
    let app = spawn_app().await;
    let resp = app
        .patch(
            "alice",
            &json!({
                "mobile_number": "9812345678", "mobile_country_code": "91",
                "email_address": "alice.new@example.com", "first_name": "Alice", "last_name": "Kingsleigh",
                "upi": upi_body("alice.new@okaxis", "change_vpa"),
            }),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "applied");
    assert_eq!(body["user"], "alice");
    assert_eq!(body["seq"], 1);
    let steps = body["steps"].as_array().unwrap();
    let summary: Vec<(String, String, String)> = steps
        .iter()
        .map(|s| {
            (
                s["target"].as_str().unwrap().into(),
                s["ref"].as_str().unwrap().into(),
                s["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "juspay_customer".into(),
                "cst_demo_alice".into(),
                "applied".into()
            ),
            (
                "juspay_wallet".into(),
                "wlt_demo_alice_paytm".into(),
                "applied".into()
            ),
            (
                "juspay_wallet".into(),
                "wlt_demo_alice_mobikwik".into(),
                "applied".into()
            ),
            (
                "razorpay_upi".into(),
                "cref_demo_alice".into(),
                "applied".into()
            ),
        ]
    );
    // The response names fields, never values.
    assert!(!body.to_string().contains("9812345678"));

    let journal = app.journal();
    assert_eq!(journal.len(), 4, "{journal:#?}");

    let customer = by_route(&journal, "juspay_customer_update");
    assert_eq!(customer.len(), 1);
    let c = customer[0];
    assert_eq!(
        (c.method.as_str(), c.path.as_str()),
        ("POST", "/customers/cst_demo_alice")
    );
    assert_eq!(
        c.body,
        "mobile_number=9812345678&mobile_country_code=91&email_address=alice.new%40example.com&first_name=Alice&last_name=Kingsleigh"
    );
    assert_eq!(
        c.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(c.headers["x-merchantid"], "sandbox_merchant");
    assert_eq!(c.headers["version"], "2023-06-30");
    assert!(c.auth_ok, "Basic api_key with an empty password");
    assert!(c.headers["authorization"].starts_with("Basic "));
    assert!(
        !c.headers["authorization"].contains("c2FuZGJveF9qdXNwYXlfYXBpX2tleTo"),
        "journal masks the credential"
    );

    let wallets = by_route(&journal, "juspay_wallet_update");
    let paths: Vec<&str> = wallets.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(paths.len(), 2);
    assert!(
        paths.contains(&"/wallets/wlt_demo_alice_paytm")
            && paths.contains(&"/wallets/wlt_demo_alice_mobikwik")
    );
    for w in &wallets {
        assert_eq!(w.method, "POST");
        assert_eq!(w.body, "command=update&mobile_number=9812345678");
        assert_eq!(w.headers["version"], "2023-06-30");
        assert_eq!(
            w.headers["content-type"],
            "application/x-www-form-urlencoded"
        );
        assert!(w.auth_ok);
    }

    let upi = by_route(&journal, "razorpay_upi_update");
    assert_eq!(upi.len(), 1);
    let u = upi[0];
    assert_eq!(
        (u.method.as_str(), u.path.as_str()),
        ("PATCH", "/v1/upi/tpap/upi_number")
    );
    let sent: Value = serde_json::from_str(&u.body).unwrap();
    assert_eq!(
        sent,
        json!({"upi_number": "9876543210", "vpa": "alice.new@okaxis", "action": "change_vpa", "consent": true})
    );
    assert_eq!(u.headers["content-type"], "application/json");
    assert_eq!(u.headers["x-device-fingerprint"], "3f1c0d2e9a7b");
    // Forwarded as sent (the body's timestamp is "now", inside the accepted window).
    let ts: u64 = u.headers["x-device-fingerprint-timestamp"].parse().unwrap();
    assert!(ts.abs_diff(now_ms()) < 60_000, "{ts}");
    assert_eq!(u.headers["x-customer-reference"], "cref_demo_alice");
    assert_eq!(u.auth_principal.as_deref(), Some("rzp_sandbox_key"));
    assert!(u.auth_ok);

    // The simulated upstreams now hold the new values.
    let state = app.sandbox.state();
    let s = serde_json::to_value(&state).unwrap().to_string();
    assert!(s.contains("alice.new@example.com") && s.contains("alice.new@okaxis"));

    // Rows: the change is final, its payload erased, each step applied once, audit complete.
    let change_id: uuid::Uuid = serde_json::from_value(body["change_id"].clone()).unwrap();
    let row: (String, Option<Vec<u8>>, Vec<String>, String) =
        sqlx::query_as("select status, payload_enc, fields, caller from changes where id = $1")
            .bind(change_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(row.0, "applied");
    assert_eq!(row.1, None, "the sealed payload is erased once final");
    assert_eq!(
        row.2,
        [
            "mobile_number",
            "mobile_country_code",
            "email_address",
            "first_name",
            "last_name",
            "upi"
        ]
    );
    assert_eq!(row.3, "test-writer");
    assert_eq!(
        app.count("select count(*) from change_steps where status = 'applied' and attempts = 1")
            .await,
        4
    );
    let events: Vec<(String, String)> = sqlx::query_as(
        "select event_type, outcome from audit_events where change_id = $1 order by id",
    )
    .bind(change_id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        events.first().unwrap(),
        &("change_requested".to_string(), "accepted".to_string())
    );
    // One settle, one event: the final one carries the round's four applied attempts.
    assert_eq!(
        events,
        [
            ("change_requested".to_string(), "accepted".to_string()),
            ("change_completed".to_string(), "applied".to_string())
        ]
    );
    let attempts: i64 = sqlx::query_scalar(
        "select count(*) from audit_events e, jsonb_array_elements(e.\"values\" -> 'steps') s
          where e.change_id = $1 and e.event_type = 'change_completed'
            and s ->> 'status' = 'applied' and s ->> 'attempt' = '1'",
    )
    .bind(change_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(attempts, 4);

    // No plain PII in any table the gateway writes.
    let dump: String = sqlx::query_scalar(
        "select coalesce(string_agg(t::text, ' '), '') from (
            select row_to_json(c)::text as t from changes c
            union all select row_to_json(s)::text from change_steps s
            union all select row_to_json(a)::text from audit_events a) x",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    for canary in [
        "9812345678",
        "alice.new@example.com",
        "Kingsleigh",
        "alice.new@okaxis",
    ] {
        assert!(!dump.contains(canary), "{canary} stored in plain text");
    }
    assert!(dump.contains("******5678") && dump.contains("****@okaxis"));

    // The recorded change reads back the same.
    let again: Value = app
        .get(&format!("/changes/{change_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["status"], "applied");
    assert_eq!(again["steps"], body["steps"]);
    let history: Value = app
        .get("/profile/alice/changes")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history["changes"][0]["change_id"], body["change_id"]);
}

#[tokio::test]
async fn each_field_group_reaches_exactly_its_providers() {
    let app = spawn_app().await;
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (
            json!({"email_address": "b@example.org"}),
            vec!["juspay_customer_update"],
        ),
        (
            json!({"first_name": "Bobby", "last_name": "B"}),
            vec!["juspay_customer_update"],
        ),
        (
            json!({"mobile_country_code": "44"}),
            vec!["juspay_customer_update"],
        ),
        (
            json!({"mobile_number": "9000000001"}),
            vec!["juspay_customer_update", "juspay_wallet_update"],
        ),
        (
            json!({"upi": {"upi_number": "912345678", "vpa": "bob.b@okhdfc", "action": "change_vpa", "consent": true,
                "device": {"fingerprint": "fp", "fingerprint_timestamp": now_ms()}}}),
            vec!["razorpay_upi_update"],
        ),
    ];
    for (body, routes) in cases {
        app.sandbox.clear_journal();
        let resp = app.patch("bob", &body).await;
        assert_eq!(resp.status(), 200, "{body}: {}", resp.text().await.unwrap());
        let mut got: Vec<String> = app
            .journal()
            .iter()
            .filter_map(|e| e.route.clone())
            .collect();
        got.sort();
        assert_eq!(got, routes, "{body}");
    }
    // Customer form carries only the changed fields.
    app.sandbox.clear_journal();
    app.patch("bob", &json!({"email_address": "bob2@example.org"}))
        .await;
    assert_eq!(app.journal()[0].body, "email_address=bob2%40example.org");
    assert_eq!(
        app.count("select max(user_seq) from changes where user_id = 'bob'")
            .await,
        6
    );
}

#[tokio::test]
async fn links_are_stored_and_gate_changes() {
    let app = spawn_app().await;
    // Bob gives up his customer first: an object belongs to one user.
    let resp = app
        .client
        .put(app.url("/profile/bob/links"))
        .bearer_auth(TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = app
        .client
        .put(app.url("/profile/carol/links"))
        .bearer_auth(TOKEN)
        .json(&json!({"juspay_customer_id": "cst_demo_bob"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let links: Value = app.get("/profile/carol/links").await.json().await.unwrap();
    assert_eq!(
        links,
        json!({"juspay_customer_id": "cst_demo_bob", "juspay_wallet_ids": [], "razorpay_customer_reference": null})
    );
    assert_eq!(app.count("select count(*) from audit_events where event_type = 'links_updated' and user_id = 'carol'").await, 1);

    // A change that needs a link carol lacks: 422, nothing recorded, nothing sent.
    let (status, p) = problem(
        app.patch(
            "carol",
            &json!({"upi": upi_body("carol@okaxis", "change_vpa")}),
        )
        .await,
    )
    .await;
    assert_eq!((status, p["code"].as_str()), (422, Some("missing_link")));
    assert_eq!(p["errors"][0]["pointer"], "/upi");
    // A user with no links at all: 404.
    let (status, p) = problem(app.patch("dave", &json!({"first_name": "Dave"})).await).await;
    assert_eq!((status, p["code"].as_str()), (404, Some("user_not_found")));
    assert_eq!(app.count("select count(*) from changes").await, 0);
    assert!(app.journal().is_empty());

    let (status, p) = problem(
        app.client
            .put(app.url("/profile/carol/links"))
            .bearer_auth(TOKEN)
            .json(&json!({"juspay_wallet_ids": ["ok", "bad id"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, p["errors"][0]["pointer"].as_str()),
        (422, Some("/juspay_wallet_ids/1"))
    );
}
