//! Dry runs (issue 17, item 1): `PATCH /profile/{user}?dryRun=All[&read=live]` passes the checks
//! of a real PATCH and answers its plan, changes no row in any table, writes nothing upstream, and
//! with `read=live` compares each field with the upstream's current value.
//!
//! (Over ~400 lines on purpose: each check a dry run shares with a real PATCH has its own test over the same fixtures; split, it would scatter them.)

use crate::helpers::*;
use crate::trust::{JwksServer, TestKey, assertion, jwt_app_settings, sa_claims};
use profile_gateway::settings::CallerSettings;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use upstream_sandbox::FaultSpec;

/// One PATCH as the tests send it: `query` is the raw query string (`""` for none).
struct Patch<'a> {
    token: Option<&'a str>,
    user: &'a str,
    query: &'a str,
    key: Option<String>,
    assertion: Option<&'a str>,
    content_type: &'a str,
    body: String,
}

impl<'a> Patch<'a> {
    fn new(user: &'a str, body: &Value) -> Self {
        Self {
            token: Some(TOKEN),
            user,
            query: "",
            key: None,
            assertion: None,
            content_type: "application/json",
            body: body.to_string(),
        }
    }

    fn dry(mut self) -> Self {
        self.query = "dryRun=All";
        self
    }

    fn live(mut self) -> Self {
        self.query = "dryRun=All&read=live";
        self
    }

    fn key(mut self, key: &str) -> Self {
        self.key = Some(key.to_string());
        self
    }

    async fn send(&self, app: &TestApp) -> reqwest::Response {
        let query = if self.query.is_empty() {
            String::new()
        } else {
            format!("?{}", self.query)
        };
        let mut req = app
            .client
            .patch(app.url(&format!("/profile/{}{query}", self.user)))
            .header("content-type", self.content_type)
            .body(self.body.clone());
        if let Some(t) = self.token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = &self.key {
            req = req.header("idempotency-key", k);
        }
        if let Some(a) = self.assertion {
            req = req.header("user-assertion", a);
        }
        req.send().await.unwrap()
    }
}

fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A problem without the members that differ per request.
async fn problem_body(resp: reqwest::Response) -> (u16, Value) {
    let (status, mut body) = problem(resp).await;
    let members = body.as_object_mut().unwrap();
    members.remove("request_id");
    members.remove("trace_id");
    (status, body)
}

async fn ok_json(resp: reqwest::Response) -> Value {
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    resp.json().await.unwrap()
}

/// Every table's row count and a digest of its rows (so an UPDATE shows too), and the audit chain
/// heads: "nothing was recorded", checked rather than assumed.
#[derive(Debug, PartialEq)]
struct Snapshot {
    tables: BTreeMap<String, (i64, String)>,
    heads: Vec<(String, i64, String)>,
}

async fn snapshot(app: &TestApp) -> Snapshot {
    let names: Vec<String> = sqlx::query_scalar(
        "select format('%I.%I', n.nspname, c.relname)
           from pg_class c join pg_namespace n on n.oid = c.relnamespace
          where c.relkind = 'r' and n.nspname not in ('pg_catalog', 'information_schema')
            and n.nspname not like 'pg_toast%'
          order by 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut tables = BTreeMap::new();
    for t in names {
        let row: (i64, String) = sqlx::query_as(&format!(
            "select count(*), md5(coalesce(string_agg(r::text, E'\\n' order by r::text), '')) from {t} r"
        ))
        .fetch_one(&app.pool)
        .await
        .unwrap();
        tables.insert(t, row);
    }
    let heads = sqlx::query_as("select user_id, seq, hash from audit_heads order by user_id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    let s = Snapshot { tables, heads };
    // The comparison means something only if it covers the tables a change writes.
    for t in [
        "public.changes",
        "public.user_assertion_jtis",
        "public.profile_links",
        "public.audit_chain_heads",
    ] {
        assert!(
            s.tables.contains_key(t),
            "{t} missing from {:?}",
            s.tables.keys()
        );
    }
    assert!(
        s.tables
            .keys()
            .any(|t| t.starts_with("public.audit_events_")),
        "{:?}",
        s.tables.keys()
    );
    assert!(!s.heads.is_empty(), "the demo links made audit events");
    s
}

/// A snapshot while a change is being driven: its row's lease may be renewed meanwhile, so the
/// `changes` rows are compared without their lease (owner, expiry, generation, `updated_at`).
async fn recorded(app: &TestApp) -> Snapshot {
    let mut s = snapshot(app).await;
    let digest: String = sqlx::query_scalar(
        "select md5(coalesce(string_agg(r::text, E'\\n' order by r::text), ''))
           from (select id, user_id, user_seq, caller, request_id, status, fields, payload_enc,
                        finished_at, idem_key, idem_fingerprint, idem_in_flight_until,
                        idem_expires_at
                   from changes) r",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    s.tables.get_mut("public.changes").unwrap().1 = digest;
    s
}

fn writes(app: &TestApp) -> Vec<String> {
    app.journal()
        .into_iter()
        .filter(|e| e.method != "GET")
        .map(|e| format!("{} {}", e.method, e.path))
        .collect()
}

fn alice_change() -> Value {
    json!({
        "mobile_number": "9876543210",
        "email_address": "alice.new@example.com",
        "upi": upi_body("alice@okaxis", "change_vpa"),
    })
}

#[tokio::test]
async fn a_dry_run_answers_the_plan_records_nothing_and_the_real_change_follows_it() {
    let app = spawn_app().await;
    let before = snapshot(&app).await;

    let plan = ok_json(Patch::new("alice", &alice_change()).dry().send(&app).await).await;
    assert_eq!(
        plan,
        json!({
            "dry_run": true,
            "user": "alice",
            "caller": "test-writer",
            "fields": ["mobile_number", "email_address", "upi"],
            "read": "none",
            "steps": [
                {"step_no": 0, "target": "juspay_customer", "ref": "cst_demo_alice", "fields": ["mobile_number", "email_address"]},
                {"step_no": 1, "target": "juspay_wallet", "ref": "wlt_demo_alice_paytm", "fields": ["mobile_number"]},
                {"step_no": 2, "target": "juspay_wallet", "ref": "wlt_demo_alice_mobikwik", "fields": ["mobile_number"]},
                {"step_no": 3, "target": "razorpay_upi", "ref": "cref_demo_alice", "fields": ["upi_number", "vpa", "action"]}
            ]
        })
    );
    assert!(
        app.journal().is_empty(),
        "no upstream call at all without read=live"
    );
    assert_eq!(snapshot(&app).await, before);

    // A key may be sent (so the real PATCH can follow with the same headers); it is checked and
    // looked up but not remembered: the real PATCH with it is new, not a replay.
    let key = new_key();
    // One body for the dry run, the change and the replay below (its device timestamp is now's).
    let body = alice_change();
    let again = ok_json(Patch::new("alice", &body).dry().key(&key).send(&app).await).await;
    assert_eq!(again, plan);
    assert_eq!(snapshot(&app).await, before);
    let resp = Patch::new("alice", &body).key(&key).send(&app).await;
    assert!(resp.headers().get("idempotent-replayed").is_none());
    let change = ok_json(resp).await;
    assert_eq!(change["status"], "applied");
    // The real change sent exactly the planned steps.
    let sent: Vec<Value> = change["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| json!({"step_no": s["step_no"], "target": s["target"], "ref": s["ref"], "fields": s["fields"]}))
        .collect();
    assert_eq!(Value::Array(sent), plan["steps"]);
    assert_eq!(app.count("select count(*) from changes").await, 1);
    // The snapshot does see what a real change records.
    let after = snapshot(&app).await;
    assert_ne!(after, before);
    // Now the key is the change's: the real PATCH would replay it and send nothing, and the dry
    // run says which change it would answer.
    let replay = ok_json(Patch::new("alice", &body).dry().key(&key).send(&app).await).await;
    assert_eq!(replay["replays"], change["change_id"]);
    assert_eq!(replay["steps"], plan["steps"]);
    assert_eq!(snapshot(&app).await, after);
}

#[tokio::test]
async fn a_dry_run_is_refused_exactly_as_the_real_patch_and_records_nothing() {
    let app = spawn_app_with(|s| {
        s.auth.callers.push(CallerSettings {
            name: "limited".into(),
            token_sha256: Some(profile_gateway::auth::token_sha256("limited-token")),
            scopes: vec!["profile:write".into()],
            rate_per_s: Some(0.001),
            burst: Some(1),
            ..Default::default()
        });
    })
    .await;
    // A user whose links lack Razorpay (set up before the snapshot: this PUT is recorded).
    let resp = app
        .client
        .put(app.url("/profile/dave/links"))
        .bearer_auth(TOKEN)
        .json(&json!({"juspay_customer_id": "cst_dave"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let before = snapshot(&app).await;
    app.sandbox.clear_journal();

    let ok = json!({"first_name": "Al"});
    let old_device = json!({"upi": {"upi_number": "9876543210", "vpa": "alice@okaxis", "action": "change_vpa",
        "consent": true, "device": {"fingerprint": "3f1c0d2e9a7b", "fingerprint_timestamp": 1}}});
    let cases: Vec<(&str, Patch, u16, &str)> = vec![
        (
            "no credentials",
            Patch {
                token: None,
                ..Patch::new("alice", &ok)
            },
            401,
            "unauthorized",
        ),
        (
            "unknown token",
            Patch {
                token: Some("nope"),
                ..Patch::new("alice", &ok)
            },
            401,
            "unauthorized",
        ),
        (
            "no profile:write scope",
            Patch {
                token: Some(READ_ONLY_TOKEN),
                ..Patch::new("alice", &ok)
            },
            403,
            "forbidden",
        ),
        (
            "reserved user id",
            Patch::new("_system", &ok),
            400,
            "invalid_path_parameter",
        ),
        (
            "malformed Idempotency-Key",
            Patch::new("alice", &ok).key("short"),
            400,
            "idempotency_key_malformed",
        ),
        (
            "not JSON",
            Patch {
                body: "{".into(),
                ..Patch::new("alice", &ok)
            },
            400,
            "malformed_json",
        ),
        (
            "a member twice",
            Patch {
                body: r#"{"first_name": "A", "first_name": "B"}"#.into(),
                ..Patch::new("alice", &ok)
            },
            400,
            "malformed_json",
        ),
        (
            "not application/json",
            Patch {
                content_type: "text/plain",
                ..Patch::new("alice", &ok)
            },
            415,
            "unsupported_media_type",
        ),
        (
            "too large",
            Patch {
                body: format!(r#"{{"first_name": "{}"}}"#, "A".repeat(100_000)),
                ..Patch::new("alice", &ok)
            },
            413,
            "payload_too_large",
        ),
        (
            "invalid fields",
            Patch::new(
                "alice",
                &json!({"mobile_number": "98-76", "email_address": "a..b@example.com", "x": 1}),
            ),
            422,
            "validation_failed",
        ),
        (
            "a stale device fingerprint",
            Patch::new("alice", &old_device),
            422,
            "validation_failed",
        ),
        (
            "a user without links",
            Patch::new("nobody", &ok),
            404,
            "user_not_found",
        ),
        (
            "a missing link",
            Patch::new(
                "dave",
                &json!({"first_name": "Dave", "upi": upi_body("dave@okaxis", "activate")}),
            ),
            422,
            "missing_link",
        ),
    ];
    for (what, dry, status, code) in cases {
        let mut real = dry.clone_for_real();
        real.key = Some(dry.key.clone().unwrap_or_else(new_key));
        let dry_answer = problem_body(dry.dry().send(&app).await).await;
        let real_answer = problem_body(real.send(&app).await).await;
        assert_eq!(
            (dry_answer.0, dry_answer.1["code"].as_str()),
            (status, Some(code)),
            "{what}: {}",
            dry_answer.1
        );
        // Same status, code, detail and errors[] (pointers and codes).
        assert_eq!(dry_answer, real_answer, "{what}");
    }

    // The rate limit: a dry run spends the caller's token like a real PATCH does.
    let limited = |p: Patch<'static>| Patch {
        token: Some("limited-token"),
        ..p
    };
    let body = json!({"first_name": "Al"});
    let resp = limited(Patch::new("alice", &body).dry()).send(&app).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("ratelimit"));
    for p in [
        limited(Patch::new("alice", &body).dry()),
        limited(Patch::new("alice", &body).key(&new_key())),
    ] {
        let (status, b) = problem_body(p.send(&app).await).await;
        assert_eq!((status, b["code"].as_str()), (429, Some("rate_limited")));
    }

    assert_eq!(snapshot(&app).await, before);
    assert!(app.journal().is_empty(), "{:?}", app.journal());
}

impl<'a> Patch<'a> {
    /// The same request without the dry run's query.
    fn clone_for_real(&self) -> Self {
        Self {
            token: self.token,
            user: self.user,
            query: "",
            key: self.key.clone(),
            assertion: self.assertion,
            content_type: self.content_type,
            body: self.body.clone(),
        }
    }
}

#[tokio::test]
async fn bad_dry_run_parameters_are_refused_and_a_misspelt_one_is_no_real_change() {
    let app = spawn_app().await;
    let before = snapshot(&app).await;
    let body = json!({"first_name": "Al"});
    for query in [
        "dryRun=all",
        "dryRun=",
        "dryRun=Server",
        "dryRun=All&read=cached",
        "dryRun=All&read=",
        "read=live",
        "dryRun=All&dryRun=All",
        // Kubernetes' spelling is exact; anything else must not fall through to a real change.
        "dryrun=All",
        "dry_run=All",
    ] {
        let p = Patch {
            query,
            ..Patch::new("alice", &body).key(&new_key())
        };
        let (status, b) = problem_body(p.send(&app).await).await;
        assert_eq!(
            (status, b["code"].as_str()),
            (400, Some("invalid_query_parameter")),
            "{query}: {b}"
        );
    }
    let (_, b) = problem_body(
        Patch {
            query: "dryRun=all",
            ..Patch::new("alice", &body)
        }
        .send(&app)
        .await,
    )
    .await;
    assert_eq!(b["detail"], "dryRun (only `All`) is not valid");
    let (_, b) = problem_body(
        Patch {
            query: "dryRun=All&read=cached",
            ..Patch::new("alice", &body)
        }
        .send(&app)
        .await,
    )
    .await;
    assert_eq!(b["detail"], "read (only `live`) is not valid");
    // Without dryRun the key is still required.
    let (status, b) = problem_body(Patch::new("alice", &body).send(&app).await).await;
    assert_eq!(
        (status, b["code"].as_str()),
        (400, Some("idempotency_key_missing"))
    );
    assert_eq!(snapshot(&app).await, before);
    assert!(app.journal().is_empty());
}

#[tokio::test]
async fn read_live_compares_each_field_with_the_upstream_and_only_reads() {
    let app = spawn_app_with(|s| {
        s.telemetry.metrics_listen = Some("127.0.0.1:0".into());
    })
    .await;
    // One wallet holds another number than the rest of Alice's objects.
    let mut state = app.sandbox.state();
    state
        .juspay_wallets
        .iter_mut()
        .find(|w| w.id == "wlt_demo_alice_mobikwik")
        .unwrap()
        .mobile_number = Some("9123400000".into());
    app.sandbox.set_state(state);
    let upstream_before = serde_json::to_value(app.sandbox.state()).unwrap();
    let before = snapshot(&app).await;

    let answer = ok_json(Patch::new("alice", &alice_change()).live().send(&app).await).await;
    let same = |current: &str| json!({"comparison": "unchanged", "current": current});
    let differs = |current: &str| json!({"comparison": "changes", "current": current});
    assert_eq!(
        answer,
        json!({
            "dry_run": true,
            "user": "alice",
            "caller": "test-writer",
            "fields": ["mobile_number", "email_address", "upi"],
            "read": "live",
            "steps": [
                {"step_no": 0, "target": "juspay_customer", "ref": "cst_demo_alice",
                 "fields": ["mobile_number", "email_address"],
                 "values": {"mobile_number": same("******3210"), "email_address": differs("a***@example.com")}},
                {"step_no": 1, "target": "juspay_wallet", "ref": "wlt_demo_alice_paytm",
                 "fields": ["mobile_number"], "values": {"mobile_number": same("******3210")}},
                {"step_no": 2, "target": "juspay_wallet", "ref": "wlt_demo_alice_mobikwik",
                 "fields": ["mobile_number"], "values": {"mobile_number": differs("******0000")}},
                {"step_no": 3, "target": "razorpay_upi", "ref": "cref_demo_alice",
                 "fields": ["upi_number", "vpa", "action"],
                 "values": {"upi_number": same("******3210"), "vpa": same("****@okaxis"), "action": same("active")}}
            ]
        })
    );
    // The read-backs the completer uses, one per step, and nothing else.
    let mut calls: Vec<(String, String, Option<String>)> = app
        .journal()
        .into_iter()
        .map(|e| (e.method, e.path, e.route))
        .collect();
    calls.sort();
    let call =
        |path: &str, route: &str| ("GET".to_string(), path.to_string(), Some(route.to_string()));
    assert_eq!(
        calls,
        [
            call("/customers/cst_demo_alice", "juspay_customer_get"),
            call("/v1/upi/tpap/upi_number", "razorpay_upi_get"),
            call("/wallets/wlt_demo_alice_mobikwik", "juspay_wallet_get"),
            call("/wallets/wlt_demo_alice_paytm", "juspay_wallet_get"),
        ]
    );
    assert!(writes(&app).is_empty());
    assert!(app.sandbox.counters().values().all(|c| c.applied == 0));
    assert_eq!(
        serde_json::to_value(app.sandbox.state()).unwrap(),
        upstream_before
    );

    // A read that fails leaves its step's fields unknown and says why; the others still answer.
    app.sandbox.clear_journal();
    app.sandbox
        .add_fault(FaultSpec::status("razorpay_upi_get", 503, "", None).times(1));
    let body = json!({"email_address": "ALICE@example.com", "upi": upi_body("alice.new@okaxis", "change_vpa")});
    let answer = ok_json(Patch::new("alice", &body).live().send(&app).await).await;
    let unknown = json!({"comparison": "unknown", "current": null});
    assert_eq!(
        answer["steps"][0]["values"],
        // Juspay compares emails without regard to case, as the read-back does.
        json!({"email_address": same("a***@example.com")})
    );
    let upi = &answer["steps"][1];
    assert_eq!(upi["target"], "razorpay_upi");
    assert_eq!(
        upi["values"],
        json!({"upi_number": unknown, "vpa": unknown, "action": unknown})
    );
    assert_eq!(upi["read_error"]["code"], "upstream_unavailable");
    assert_eq!(upi["read_error"]["upstream_status"], 503);
    assert_eq!(upi["read_error"]["retryable"], true);
    assert!(answer["steps"][0].get("read_error").is_none());
    // Once it answers, only the VPA would change.
    let answer = ok_json(Patch::new("alice", &body).live().send(&app).await).await;
    assert_eq!(
        answer["steps"][1]["values"],
        json!({"upi_number": same("******3210"), "vpa": differs("****@okaxis"), "action": same("active")})
    );
    assert!(writes(&app).is_empty());
    assert_eq!(snapshot(&app).await, before);

    // Counted (and the reads by outcome), though never an audit event.
    let metrics = app
        .client
        .get(format!("{}/metrics", app.metrics_base.as_ref().unwrap()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"profile_gateway_dry_runs_total{read="live"} 3"#,
        r#"profile_gateway_dry_runs_total{read="none"} 0"#,
        r#"profile_gateway_dry_run_reads_total{outcome="read",provider="juspay_wallet"} 2"#,
        r#"profile_gateway_dry_run_reads_total{outcome="read",provider="razorpay_upi"} 2"#,
        r#"profile_gateway_dry_run_reads_total{outcome="upstream_unavailable",provider="razorpay_upi"} 1"#,
        r#"profile_gateway_dry_run_reads_total{outcome="read",provider="juspay_customer"} 3"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn a_dry_run_checks_the_user_assertion_without_using_it_up() {
    let sa = TestKey::ed25519("sa");
    let idp_key = TestKey::p256("idp");
    let k8s = JwksServer::start(&[&sa]).await;
    let idp = JwksServer::start(&[&idp_key]).await;
    let app = spawn_app_with(jwt_app_settings(&k8s, Some(&idp))).await;
    let bearer = sa.sign(&sa_claims("profile-gateway"));
    let before = snapshot(&app).await;

    let bob = assertion(&idp_key, "bob", "j-bob", 60);
    for (a, status, code) in [
        (None, 401, "user_assertion_required"),
        (Some(bob.as_str()), 403, "user_assertion_mismatch"),
    ] {
        let dry = problem_body(as_app(&app, &bearer, a, None, true).await).await;
        let real = problem_body(as_app(&app, &bearer, a, None, false).await).await;
        assert_eq!((dry.0, dry.1["code"].as_str()), (status, Some(code)));
        assert_eq!(dry, real);
    }

    // A valid assertion passes, and is not used up: twice, and nothing remembers it.
    let a = assertion(&idp_key, "alice", "j-dry", 120);
    for _ in 0..2 {
        let plan = ok_json(as_app(&app, &bearer, Some(&a), None, true).await).await;
        assert_eq!(plan["caller"], "checkout-app");
        assert_eq!(plan["steps"][0]["ref"], "cst_demo_alice");
    }
    assert_eq!(snapshot(&app).await, before);

    // The real change then uses it; after that a dry run answers as a real PATCH would: refused
    // with a new key, accepted with the key of the change (whose retry may carry it again).
    let key = new_key();
    let resp = as_app(&app, &bearer, Some(&a), Some(&key), false).await;
    assert_eq!(resp.status(), 200);
    let dry = problem_body(as_app(&app, &bearer, Some(&a), None, true).await).await;
    let real = problem_body(as_app(&app, &bearer, Some(&a), None, false).await).await;
    assert_eq!(
        (dry.0, dry.1["code"].as_str()),
        (409, Some("user_assertion_replayed"))
    );
    assert_eq!(dry, real);
    let resp = as_app(&app, &bearer, Some(&a), Some(&key), true).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        app.count("select count(*) from user_assertion_jtis").await,
        1
    );
    assert_eq!(app.count("select count(*) from changes").await, 1);
}

/// The JWT caller's PATCH of Alice's email, dry or real (a real one always carries a key).
async fn as_app(
    app: &TestApp,
    bearer: &str,
    assertion: Option<&str>,
    key: Option<&str>,
    dry: bool,
) -> reqwest::Response {
    let mut p = Patch {
        token: Some(bearer),
        assertion,
        key: key.map(str::to_string),
        ..Patch::new("alice", &json!({"email_address": "alice.jwt@example.com"}))
    };
    if dry {
        p = p.dry();
    } else if p.key.is_none() {
        p.key = Some(new_key());
    }
    p.send(app).await
}

async fn metrics_text(app: &TestApp) -> String {
    app.client
        .get(format!("{}/metrics", app.metrics_base.as_ref().unwrap()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one sample line (`name{labels}`), if the series exists yet.
async fn try_sample(app: &TestApp, series: &str) -> Option<f64> {
    metrics_text(app)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn sample(app: &TestApp, series: &str) -> f64 {
    try_sample(app, series)
        .await
        .unwrap_or_else(|| panic!("no {series}"))
}

#[tokio::test]
async fn read_live_needs_profile_read_as_well_and_is_refused_before_any_upstream_call() {
    let app = spawn_app_with(|s| {
        s.auth.callers.push(CallerSettings {
            name: "writer-only".into(),
            token_sha256: Some(profile_gateway::auth::token_sha256("writer-only-token")),
            scopes: vec!["profile:write".into()],
            ..Default::default()
        });
    })
    .await;
    let before = snapshot(&app).await;
    let writer = |p: Patch<'static>| Patch {
        token: Some("writer-only-token"),
        ..p
    };
    // The plan alone shows nothing of the upstreams: a writer may ask for it.
    let plan = ok_json(
        writer(Patch::new("alice", &alice_change()).dry())
            .send(&app)
            .await,
    )
    .await;
    assert_eq!(plan["read"], "none");
    // Current values (masked) and whether each equals the one sent are a read of the profile:
    // refused with the problem any route needing `profile:read` gives this caller.
    let elsewhere = problem_body(
        app.client
            .get(app.url("/profile/alice/changes"))
            .bearer_auth("writer-only-token")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (elsewhere.0, elsewhere.1["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(
        elsewhere.1["detail"],
        "the caller lacks the `profile:read` scope"
    );
    for body in [
        alice_change().to_string(),
        // Before the body is judged, as the route's own scope is.
        r#"{"mobile_number": "98-76"}"#.to_string(),
    ] {
        let p = writer(Patch {
            body,
            ..Patch::new("alice", &json!({}))
        })
        .live();
        assert_eq!(problem_body(p.send(&app).await).await, elsewhere);
    }
    assert!(app.journal().is_empty(), "{:?}", app.journal());
    // With both scopes the same caller's request reads (the test writer holds both).
    let live = ok_json(Patch::new("alice", &alice_change()).live().send(&app).await).await;
    assert_eq!(live["read"], "live");
    assert_eq!(snapshot(&app).await, before);
}

#[tokio::test]
async fn a_dry_run_predicts_the_records_key_conflicts_and_pending_bound_without_writing() {
    let app = spawn_app_with(|s| {
        s.changes.max_pending_per_user = 1;
        s.upstream.request_deadline_ms = 300;
        // Bob's change below stays pending on a hanging upstream for the rest of the test.
        juspay_timeout_ms(s, 60_000);
    })
    .await;
    // Compares a dry run with the real PATCH it predicts (status, problem, Retry-After); the
    // real one goes second, and is refused too, so it records nothing either.
    async fn same_refusal(app: &TestApp, dry: Patch<'_>, status: u16, code: &str) {
        let real = dry.clone_for_real();
        let dry = dry.dry().send(app).await;
        let dry_retry = dry.headers().get("retry-after").cloned();
        let dry = problem_body(dry).await;
        let real = real.send(app).await;
        let real_retry = real.headers().get("retry-after").cloned();
        let real = problem_body(real).await;
        assert_eq!(
            (dry.0, dry.1["code"].as_str()),
            (status, Some(code)),
            "{}",
            dry.1
        );
        assert_eq!(dry, real);
        assert_eq!(dry_retry, real_retry);
    }

    // A key of a recorded change, sent with another body: 422, as the real PATCH.
    let key = new_key();
    let first = ok_json(
        Patch::new("alice", &json!({"first_name": "Al"}))
            .key(&key)
            .send(&app)
            .await,
    )
    .await;
    let before = snapshot(&app).await;
    same_refusal(
        &app,
        Patch::new("alice", &json!({"first_name": "Bo"})).key(&key),
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(snapshot(&app).await, before);

    // Bob's one allowed unfinished change (its upstream hangs: 202, still pending).
    app.sandbox
        .add_fault(FaultSpec::hang("juspay_customer_update"));
    let bob = json!({"first_name": "Bob"});
    let bob_key = new_key();
    let resp = Patch::new("bob", &bob).key(&bob_key).send(&app).await;
    assert_eq!(resp.status(), 202);
    let pending: Value = resp.json().await.unwrap();
    let before = recorded(&app).await;
    app.sandbox.clear_journal();
    // Another change of Bob's is over the bound, with or without a key.
    let other = json!({"last_name": "Builder"});
    same_refusal(
        &app,
        Patch::new("bob", &other).key(&new_key()),
        429,
        "too_many_pending_changes",
    )
    .await;
    let (status, b) = problem_body(Patch::new("bob", &other).dry().send(&app).await).await;
    assert_eq!(
        (status, b["code"].as_str()),
        (429, Some("too_many_pending_changes"))
    );
    // Its own key is never refused for the bound: the real PATCH replays it, the dry run says so.
    let dry = ok_json(Patch::new("bob", &bob).dry().key(&bob_key).send(&app).await).await;
    assert_eq!(dry["replays"], pending["change_id"]);
    let real = Patch::new("bob", &bob).key(&bob_key).send(&app).await;
    assert_eq!(real.headers()["idempotent-replayed"], "true");
    let real: Value = real.json().await.unwrap();
    assert_eq!(real["change_id"], pending["change_id"]);
    assert_eq!(recorded(&app).await, before);
    // While the key's first request is still being answered (another replica's, say), both get
    // 409 with Retry-After.
    sqlx::query(
        "update idempotency_keys set in_flight_until = now() + interval '1 hour' where idem_key = $1",
    )
    .bind(&bob_key)
    .execute(&app.pool)
    .await
    .unwrap();
    let in_flight = recorded(&app).await;
    same_refusal(
        &app,
        Patch::new("bob", &bob).key(&bob_key),
        409,
        "idempotency_key_in_flight",
    )
    .await;
    // Another user is not bound by Bob's changes.
    let plan = ok_json(
        Patch::new("alice", &json!({"last_name": "Smith"}))
            .dry()
            .key(&new_key())
            .send(&app)
            .await,
    )
    .await;
    assert!(plan.get("replays").is_none());
    assert_eq!(recorded(&app).await, in_flight);
    assert_ne!(in_flight, before, "the key update shows");
    assert!(writes(&app).is_empty(), "{:?}", writes(&app));
    assert_eq!(first["status"], "applied");
}

#[tokio::test]
async fn dry_run_reads_neither_open_the_breaker_nor_pass_an_open_one() {
    let app = spawn_app_with(|s| {
        s.providers.all_mut().breaker_failure_threshold = Some(2);
        s.providers.all_mut().breaker_open_ms = Some(600_000);
        s.telemetry.metrics_listen = Some("127.0.0.1:0".into());
    })
    .await;
    let body = json!({"mobile_number": "9876543210"});
    // Two failed wallet reads would open a breaker counting them; dry runs' are not counted.
    app.sandbox
        .add_fault(FaultSpec::status("juspay_wallet_get", 503, "", None).times(2));
    let answer = ok_json(Patch::new("alice", &body).live().send(&app).await).await;
    for step in &answer["steps"].as_array().unwrap()[1..] {
        assert_eq!(step["target"], "juspay_wallet");
        assert_eq!(step["read_error"]["upstream_status"], 503, "{step}");
    }
    assert_eq!(
        sample(
            &app,
            r#"profile_gateway_upstream_breaker_open{provider="juspay_wallet"}"#
        )
        .await,
        0.0
    );
    app.sandbox.clear_journal();
    let answer = ok_json(Patch::new("alice", &body).live().send(&app).await).await;
    assert!(
        answer["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s.get("read_error").is_none()),
        "{answer}"
    );
    let wallet_gets = |app: &TestApp| {
        app.journal()
            .iter()
            .filter(|e| e.route.as_deref() == Some("juspay_wallet_get"))
            .count()
    };
    assert_eq!(wallet_gets(&app), 2);
    // The real change still goes to the wallets.
    let change = ok_json(
        app.patch("alice", &json!({"mobile_number": "9876500000"}))
            .await,
    )
    .await;
    assert_eq!(change["status"], "applied");

    // Real writes failing open it; a dry run then fails fast without calling the wallets.
    app.sandbox
        .add_fault(FaultSpec::status("juspay_wallet_update", 503, "", None));
    app.patch("alice", &json!({"mobile_number": "9876511111"}))
        .await;
    assert_eq!(
        sample(
            &app,
            r#"profile_gateway_upstream_breaker_open{provider="juspay_wallet"}"#
        )
        .await,
        1.0
    );
    app.sandbox.clear_journal();
    let answer = ok_json(Patch::new("alice", &body).live().send(&app).await).await;
    for step in &answer["steps"].as_array().unwrap()[1..] {
        assert_eq!(step["read_error"]["code"], "upstream_unavailable", "{step}");
        // Not sent: no upstream answered.
        assert!(step["read_error"]["upstream_status"].is_null(), "{step}");
        assert!(
            step["read_error"]["message"]
                .as_str()
                .unwrap()
                .contains("is failing"),
            "{step}"
        );
    }
    assert_eq!(
        answer["steps"][0]["values"]["mobile_number"]["comparison"],
        "changes"
    );
    assert_eq!(wallet_gets(&app), 0, "{:?}", app.journal());
}

#[tokio::test]
async fn a_dry_run_neither_fills_nor_empties_the_links_cache() {
    let app = spawn_app_with(|s| {
        s.telemetry.metrics_listen = Some("127.0.0.1:0".into());
    })
    .await;
    let links_read = r#"profile_gateway_db_batch_size_sum{statement="links"}"#;
    let body = json!({"first_name": "Al"});
    let reads = try_sample(&app, links_read).await.unwrap_or(0.0);
    ok_json(Patch::new("alice", &body).dry().send(&app).await).await;
    assert_eq!(sample(&app, links_read).await, reads + 1.0, "read fresh");
    // The first real change reads the links from the database: the dry run left nothing cached.
    assert_eq!(app.patch("alice", &body).await.status(), 200);
    assert_eq!(sample(&app, links_read).await, reads + 2.0);
    // The next one is planned from the cache (so the count does see a cached plan).
    assert_eq!(
        app.patch("alice", &json!({"first_name": "Bo"}))
            .await
            .status(),
        200
    );
    assert_eq!(sample(&app, links_read).await, reads + 2.0);
    // A dry run reads fresh again and leaves the entry in place.
    ok_json(Patch::new("alice", &body).dry().send(&app).await).await;
    assert_eq!(
        app.patch("alice", &json!({"first_name": "Cy"}))
            .await
            .status(),
        200
    );
    assert_eq!(sample(&app, links_read).await, reads + 3.0);
}

#[tokio::test]
async fn would_claim_answers_as_claim_does_and_writes_nothing() {
    use profile_gateway::domain::UserAssertion;
    use profile_gateway::store::assertions::{claim, would_claim};
    let app = spawn_app().await;
    let assertion = |jti: &str| UserAssertion {
        issuer: "https://idp.test".into(),
        subject: "alice".into(),
        jti: jti.into(),
        expires_at: chrono::Utc::now() + chrono::Duration::seconds(60),
    };
    let rows = || async {
        sqlx::query_scalar::<_, String>(
            "select string_agg(t::text, E'\\n' order by t::text) from user_assertion_jtis t",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    // Each case on the same fixture: a live jti claimed with a key, one claimed by a read (no
    // key), and an expired one of another caller and user.
    let fixture = || async {
        sqlx::query("delete from user_assertion_jtis")
            .execute(&app.pool)
            .await
            .unwrap();
        let pool = &app.pool;
        assert!(
            claim(pool, &assertion("live"), "app", &uid("alice"), Some("k1"))
                .await
                .unwrap()
        );
        assert!(
            claim(pool, &assertion("read"), "app", &uid("alice"), None)
                .await
                .unwrap()
        );
        assert!(
            claim(pool, &assertion("old"), "other", &uid("bob"), Some("k9"))
                .await
                .unwrap()
        );
        sqlx::query("update user_assertion_jtis set expires_at = now() - interval '1 second' where jti = 'old'")
            .execute(pool)
            .await
            .unwrap();
    };
    let cases: [(&str, &str, &str, Option<&str>, bool); 9] = [
        ("new", "app", "alice", Some("k1"), true),
        ("new", "app", "alice", None, true),
        ("live", "app", "alice", Some("k1"), true),
        ("live", "app", "alice", Some("k2"), false),
        ("live", "app", "alice", None, false),
        ("live", "other", "alice", Some("k1"), false),
        ("live", "app", "bob", Some("k1"), false),
        ("read", "app", "alice", None, false),
        ("old", "app", "alice", Some("k1"), true),
    ];
    for (jti, caller, user, key, fresh) in cases {
        fixture().await;
        let before = rows().await;
        let a = assertion(jti);
        let predicted = would_claim(&app.pool, &a, caller, &uid(user), key)
            .await
            .unwrap();
        assert_eq!(rows().await, before, "{jti} {caller} {user} {key:?}: wrote");
        let claimed = claim(&app.pool, &a, caller, &uid(user), key).await.unwrap();
        assert_eq!(
            (predicted, claimed),
            (fresh, fresh),
            "{jti} {caller} {user} {key:?}"
        );
    }
}

fn uid(s: &str) -> profile_gateway::domain::UserId {
    profile_gateway::domain::UserId::parse(s).unwrap()
}
