//! Outcome webhooks against a real HTTP receiver on loopback: Standard Webhooks signatures checked
//! with an HMAC computed here, retries and backoff, a receiver that is down or keeps failing, two
//! replicas, a gateway SIGKILLed between the outcome commit and the delivery, and the deliveries
//! API.
//!
//! (Over ~400 lines on purpose: every delivery rule against one real receiver and its shared fixtures; split, it would scatter them.)

use crate::helpers::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use profile_gateway::settings::Settings;
use profile_gateway::startup::Application;
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use upstream_sandbox::FaultSpec;

/// The signing key, and the secret file's content (`whsec_` + its base64).
const KEY: &[u8] = b"webhook-test-key-0123456789abcdef";

fn secret() -> String {
    format!("whsec_{}", STANDARD.encode(KEY))
}

/// The Standard Webhooks signature, computed here without the gateway's code.
fn expected_signature(id: &str, timestamp: &str, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(KEY).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    event: String,
    content_type: String,
    body: String,
    at: Instant,
    /// What the receiver answered; `None` while it hangs.
    answered: Option<u16>,
}

#[derive(Default)]
struct ReceiverState {
    received: Vec<Received>,
    /// Statuses for the next requests, in order; 200 once empty.
    script: VecDeque<u16>,
    /// Answer nothing (until the caller gives up).
    hang: bool,
    /// Hold every answer until this many requests have arrived in all.
    gate: Option<usize>,
}

/// A webhook receiver: a tiny axum server on loopback that records every request.
#[derive(Clone)]
struct Receiver {
    url: String,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener)
    }

    /// On a port known in advance (a receiver that comes back where it was).
    async fn start_on(port: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        Self::serve(listener)
    }

    fn serve(listener: tokio::net::TcpListener) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let shared = Arc::clone(&state);
        let app = axum::Router::new().route(
            "/hooks",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let state = Arc::clone(&shared);
                async move {
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default()
                    };
                    let answer = {
                        let mut s = state.lock().unwrap();
                        let answer = if s.hang {
                            None
                        } else {
                            Some(s.script.pop_front().unwrap_or(200))
                        };
                        s.received.push(Received {
                            id: h("webhook-id"),
                            timestamp: h("webhook-timestamp"),
                            signature: h("webhook-signature"),
                            event: h("profile-gateway-event"),
                            content_type: h("content-type"),
                            body,
                            at: Instant::now(),
                            answered: answer,
                        });
                        answer
                    };
                    loop {
                        let open = {
                            let s = state.lock().unwrap();
                            s.gate.is_none_or(|n| s.received.len() >= n)
                        };
                        if open {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    match answer {
                        Some(status) => axum::http::StatusCode::from_u16(status).unwrap(),
                        None => {
                            tokio::time::sleep(Duration::from_secs(120)).await;
                            axum::http::StatusCode::OK
                        }
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            url: format!("http://127.0.0.1:{port}/hooks"),
            state,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    fn script(&self, statuses: &[u16]) {
        self.state.lock().unwrap().script.extend(statuses);
    }

    fn hang(&self, on: bool) {
        self.state.lock().unwrap().hang = on;
    }

    /// Waits until `n` requests arrived, at most `within`.
    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                started.elapsed() < within,
                "{} webhook request(s) after {within:?}, expected {n}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A secret file that lives as long as the test.
fn secret_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("webhook.secret");
    std::fs::write(&path, format!("{}\n", secret())).unwrap();
    (dir, path)
}

/// The writer caller gets a webhook to `url`; the dispatcher polls fast and backs off from
/// `retry_base_ms`.
fn with_webhook(url: &str, secret: &std::path::Path, retry_base_ms: u64) -> impl Fn(&mut Settings) {
    let (url, secret) = (url.to_string(), secret.to_path_buf());
    move |s: &mut Settings| {
        let writer = &mut s.auth.callers[0];
        writer.webhook_url = Some(url.clone());
        writer.webhook_secret_file = Some(secret.clone());
        s.webhooks.poll_interval_ms = 50;
        s.webhooks.retry_base_ms = retry_base_ms;
        s.webhooks.attempt_timeout_ms = 2000;
    }
}

fn db_url(app: &TestApp) -> String {
    format!(
        "{}/{}",
        admin_url().rsplit_once('/').unwrap().0,
        app.db_name
    )
}

/// Polls a boolean query until it is true, at most `within`.
async fn wait_until(app: &TestApp, sql: &str, within: Duration) {
    let started = Instant::now();
    loop {
        let holds: bool = sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap();
        if holds {
            return;
        }
        assert!(
            started.elapsed() < within,
            "not true after {within:?}: {sql}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn raw_change(app: &TestApp, id: &str) -> String {
    let resp = app.get(&format!("/changes/{id}")).await;
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

/// `(status_code, error)` of each recorded attempt of the change's events, in order.
async fn attempts(app: &TestApp, change_id: &str) -> Vec<(i32, Option<i32>, Option<String>)> {
    sqlx::query_as(
        "select a.attempt_no, a.status_code, a.error from webhook_attempts a
           join webhook_events e on e.id = a.event_id
          where e.change_id = $1::uuid order by a.id",
    )
    .bind(change_id)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn each_final_change_is_delivered_once_with_a_standard_webhooks_signature() {
    let receiver = Receiver::start().await;
    let (_dir, secret) = secret_file();
    let app = spawn_app_with(with_webhook(&receiver.url, &secret, 200)).await;

    let resp = app
        .patch("alice", &json!({"mobile_number": "9812345678"}))
        .await;
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    let change_id = answer["change_id"].as_str().unwrap().to_string();
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    wait_until(
        &app,
        "select exists (select 1 from webhook_events where status = 'delivered')",
        Duration::from_secs(5),
    )
    .await;
    let hook = &got[0];

    // The body is the change exactly as GET /changes/{id} shows it, and as the PATCH answered.
    assert_eq!(hook.body, raw_change(&app, &change_id).await);
    assert_eq!(serde_json::from_str::<Value>(&hook.body).unwrap(), answer);
    assert!(!hook.body.contains("9812345678"), "no PII value in a body");
    assert_eq!(hook.content_type, "application/json");
    assert_eq!(hook.event, "change.applied");
    // Standard Webhooks: the id is the event's, the timestamp is now in UNIX seconds, and the
    // signature is v1,base64(HMAC-SHA256(key, id.timestamp.body)).
    let (event_id, status, tries): (uuid::Uuid, String, i32) = sqlx::query_as(
        "select id, status, attempts from webhook_events where change_id = $1::uuid",
    )
    .bind(&change_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(hook.id, event_id.to_string());
    assert_eq!((status.as_str(), tries), ("delivered", 1));
    let ts: i64 = hook.timestamp.parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() <= 5, "{ts}");
    assert_eq!(
        hook.signature,
        expected_signature(&hook.id, &hook.timestamp, &hook.body)
    );
    assert_eq!(attempts(&app, &change_id).await, [(1, Some(200), None)]);
    assert_eq!(
        app.count("select count(*) from webhook_receivers").await,
        0,
        "a success at a healthy receiver writes nothing of it"
    );

    // A change that fails finally sends its own event; the first is not sent again.
    app.sandbox.add_fault(FaultSpec::status(
        "juspay_customer_update",
        400,
        r#"{"status":"invalid_request_error","error_code":"invalid","error_message":"Bad"}"#,
        Some("application/json"),
    ));
    let failed = app.patch("bob", &json!({"first_name": "Robert"})).await;
    assert_eq!(failed.status(), 422);
    let failed: Value = failed.json().await.unwrap();
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].event, "change.failed");
    let failed_id = failed["change_id"].as_str().unwrap();
    assert_eq!(got[1].body, raw_change(&app, failed_id).await);
    assert_ne!(got[1].id, got[0].id);
    assert_eq!(
        got[1].signature,
        expected_signature(&got[1].id, &got[1].timestamp, &got[1].body)
    );
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_the_event_once_it_is_back() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/hooks");
    let (_dir, secret) = secret_file();
    let app = spawn_app_with(with_webhook(&url, &secret, 100)).await;
    let resp = app.patch("alice", &json!({"first_name": "Alicia"})).await;
    assert_eq!(
        resp.status(),
        200,
        "the request path does not wait for the receiver"
    );
    let change: Value = resp.json().await.unwrap();
    let change_id = change["change_id"].as_str().unwrap();
    wait_until(
        &app,
        "select count(*) >= 2 from webhook_attempts where error = 'connect'",
        Duration::from_secs(10),
    )
    .await;

    let receiver = Receiver::start_on(port).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    wait_until(
        &app,
        "select exists (select 1 from webhook_events where status = 'delivered')",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(receiver.received().len(), 1, "exactly one delivery");
    assert_eq!(got[0].answered, Some(200));
    assert_eq!(
        got[0].signature,
        expected_signature(&got[0].id, &got[0].timestamp, &got[0].body)
    );
    let tried = attempts(&app, change_id).await;
    let (last, earlier) = tried.split_last().unwrap();
    assert_eq!(last.1, Some(200));
    assert!(earlier.len() >= 2, "{tried:?}");
    for (n, (attempt, status, error)) in earlier.iter().enumerate() {
        assert_eq!(
            (*attempt, *status, error.as_deref()),
            (n as i32 + 1, None, Some("connect"))
        );
    }
}

#[tokio::test]
async fn a_receiver_failing_three_times_gets_four_attempts_with_growing_waits() {
    let receiver = Receiver::start().await;
    receiver.script(&[500, 500, 500]);
    let (_dir, secret) = secret_file();
    let base = Duration::from_millis(400);
    let app = spawn_app_with(with_webhook(
        &receiver.url,
        &secret,
        base.as_millis() as u64,
    ))
    .await;
    let resp = app.patch("bob", &json!({"last_name": "Builder"})).await;
    assert_eq!(resp.status(), 200);
    let change: Value = resp.json().await.unwrap();
    let change_id = change["change_id"].as_str().unwrap();
    let got = receiver.wait_for(4, Duration::from_secs(20)).await;
    wait_until(
        &app,
        "select exists (select 1 from webhook_events where status = 'delivered')",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(receiver.received().len(), 4, "no attempt after the success");
    assert_eq!(
        got.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [Some(500), Some(500), Some(500), Some(200)]
    );
    // One event: the same id and body every time, each attempt signed at its own time.
    assert!(
        got.iter()
            .all(|r| r.id == got[0].id && r.body == got[0].body)
    );
    for r in &got {
        assert_eq!(
            r.signature,
            expected_signature(&r.id, &r.timestamp, &r.body)
        );
    }
    // No attempt comes before its backoff: base, 2 base, 4 base at least.
    for (i, pair) in got.windows(2).enumerate() {
        let waited = pair[1].at - pair[0].at;
        assert!(waited >= base * (1 << i), "wait {i}: {waited:?}");
    }
    assert_eq!(
        attempts(&app, change_id).await,
        [
            (1, Some(500), Some("status".to_string())),
            (2, Some(500), Some("status".to_string())),
            (3, Some(500), Some("status".to_string())),
            (4, Some(200), None),
        ]
    );
    // The waits the dispatcher chose, as recorded: strictly growing.
    let waits: Vec<f64> = sqlx::query_scalar(
        "select extract(epoch from a.next_attempt_at - a.started_at)::float8 * 1000
                - a.duration_ms
           from webhook_attempts a join webhook_events e on e.id = a.event_id
          where e.change_id = $1::uuid and a.next_attempt_at is not null order by a.id",
    )
    .bind(change_id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(waits.len(), 3, "{waits:?}");
    assert!(waits.windows(2).all(|w| w[0] < w[1]), "{waits:?}");
    assert!(waits[0] >= base.as_millis() as f64, "{waits:?}");
}

/// Another replica on the same database and upstreams.
async fn spawn_replica(app: &TestApp, tweak: impl FnOnce(&mut Settings)) -> String {
    let mut settings = base_settings(&db_url(app), &app.sandbox.base_url());
    tweak(&mut settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replica = Application::build(&settings, listener).await.unwrap();
    let base = format!("http://{}", replica.local_addr());
    tokio::spawn(replica.run_until(std::future::pending()));
    base
}

#[tokio::test]
async fn two_replicas_deliver_every_event_once() {
    let receiver = Receiver::start().await;
    let (_dir, secret) = secret_file();
    // No answer until three requests are in: more than one replica's two slots hold, so the
    // other replica must have claimed events too.
    receiver.state.lock().unwrap().gate = Some(3);
    let tweak = |s: &mut Settings| {
        with_webhook(&receiver.url, &secret, 100)(s);
        // Small claims and quick polls, so both dispatchers compete for the same events.
        s.webhooks.batch_size = 2;
        s.webhooks.poll_interval_ms = 10;
        s.changes.max_pending_per_user = 100;
    };
    let app = spawn_app_with(tweak).await;
    let other = spawn_replica(&app, tweak).await;
    let bases = [app.base.clone(), other];
    let n = 24;
    let requests = (0..n).map(|i| {
        let (base, client) = (bases[i % 2].clone(), app.client.clone());
        async move {
            client
                .patch(format!(
                    "{base}/profile/{}",
                    if i % 3 == 0 { "bob" } else { "alice" }
                ))
                .bearer_auth(TOKEN)
                .header("idempotency-key", format!("two-replicas-{i:08}"))
                .json(&json!({"first_name": format!("Name{}", "x".repeat(i % 5 + 1))}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    for status in futures_util::future::join_all(requests).await {
        assert!(status == 200 || status == 202, "{status}");
    }
    wait_until(
        &app,
        &format!("select count(*) = {n} from webhook_events where status = 'delivered'"),
        Duration::from_secs(30),
    )
    .await;
    let got = receiver.received();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for r in &got {
        assert_eq!(r.answered, Some(200));
        *per_id.entry(r.id.as_str()).or_default() += 1;
    }
    assert_eq!(per_id.len(), n, "one event per change");
    assert!(
        per_id.values().all(|c| *c == 1),
        "an event was delivered twice: {per_id:?}"
    );
    assert_eq!(
        app.count("select count(distinct replica) from webhook_attempts where status_code = 200")
            .await,
        2,
        "both replicas delivered"
    );
}

#[tokio::test]
async fn a_change_answered_202_sends_its_event_when_it_finishes_in_the_background() {
    let receiver = Receiver::start().await;
    let (_dir, secret) = secret_file();
    let app = spawn_app_with(|s| {
        with_webhook(&receiver.url, &secret, 100)(s);
        s.upstream.request_deadline_ms = 300;
    })
    .await;
    app.sandbox
        .add_fault(FaultSpec::latency("juspay_customer_update", 800).times(1));
    let resp = app
        .patch("alice", &json!({"email_address": "a.b@example.com"}))
        .await;
    assert_eq!(resp.status(), 202);
    let accepted: Value = resp.json().await.unwrap();
    assert_eq!(accepted["status"], "pending");
    assert!(
        receiver.received().is_empty(),
        "nothing is sent before the outcome"
    );
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let change_id = accepted["change_id"].as_str().unwrap();
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["status"], "applied");
    assert_eq!(got[0].event, "change.applied");
    assert_eq!(got[0].body, raw_change(&app, change_id).await);
}

#[tokio::test]
async fn an_event_whose_gateway_was_killed_is_delivered_once_by_the_next_process() {
    let receiver = Receiver::start().await;
    let (dir, secret) = secret_file();
    let app = spawn_app().await;
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.callers]]\nname = \"kill-test\"\ntoken_sha256 = \"{}\"\nscopes = [\"*\"]\n\
             webhook_url = \"{}\"\nwebhook_secret_file = \"{}\"\n",
            profile_gateway::auth::token_sha256(TOKEN),
            receiver.url,
            secret.display()
        ),
    )
    .unwrap();
    let env = [
        ("PROFILE_GATEWAY__WEBHOOKS__POLL_INTERVAL_MS", "50"),
        ("PROFILE_GATEWAY__WEBHOOKS__ATTEMPT_TIMEOUT_MS", "1000"),
        ("PROFILE_GATEWAY__WEBHOOKS__RETRY_BASE_MS", "100"),
    ];
    let patch = |base: &str, user: &str, key: &str| {
        let (url, client) = (format!("{base}/profile/{user}"), app.client.clone());
        let key = key.to_string();
        async move {
            client
                .patch(url)
                .bearer_auth(TOKEN)
                .header("idempotency-key", key)
                .json(&json!({"first_name": "Killed"}))
                .send()
                .await
        }
    };

    // 1. The process dies right after the commit that recorded the outcome and its event: the
    //    caller never got an answer, nothing was sent.
    // It never polls: only the wake after the commit (which the failpoint forestalls) could send.
    let mut no_poll = env.to_vec();
    no_poll.push(("PROFILE_GATEWAY__WEBHOOKS__POLL_INTERVAL_MS", "600000"));
    let mut first = start_gateway(&app, &config, "after_webhook_outbox_commit=1", &no_poll).await;
    assert!(
        patch(&first.base, "alice", "kill-key-0000000001")
            .await
            .is_err()
    );
    let exited = tokio::time::timeout(Duration::from_secs(5), first.child.wait())
        .await
        .expect("the failpoint aborted the gateway")
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&exited),
        Some(6),
        "SIGABRT from the failpoint, not another exit: {exited:?}"
    );
    let recorded: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "select c.status, s.status, s.error_code from changes c join change_steps s on s.change_id = c.id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        recorded,
        [("applied".to_string(), "applied".to_string(), None)]
    );
    assert_eq!(
        app.count("select count(*) from webhook_events where status = 'pending' and attempts = 0")
            .await,
        1
    );
    assert!(receiver.received().is_empty());

    // 2. The next process sends it (and a change of its own), and is SIGKILLed while the receiver
    //    has not answered yet.
    receiver.hang(true);
    // A longer attempt timeout, so the kill surely lands while both attempts wait.
    let mut patient = env.to_vec();
    patient.push(("PROFILE_GATEWAY__WEBHOOKS__ATTEMPT_TIMEOUT_MS", "2500"));
    let mut second = start_gateway(&app, &config, "", &patient).await;
    let answered = patch(&second.base, "bob", "kill-key-0000000002")
        .await
        .unwrap();
    assert_eq!(answered.status(), 200);
    receiver.wait_for(2, Duration::from_secs(10)).await;
    second.child.kill().await.unwrap();
    let recorded: Vec<(i32, Option<i32>, Option<String>, i32)> =
        sqlx::query_as("select attempt_no, status_code, error, duration_ms from webhook_attempts")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(
        recorded.is_empty(),
        "the killed process recorded nothing: {recorded:?} {:?}",
        receiver.received()
    );

    // 3. A third process delivers both once their claims have lapsed: one success each.
    receiver.hang(false);
    let _third = start_gateway(&app, &config, "", &env).await;
    wait_until(
        &app,
        "select count(*) = 2 from webhook_events where status = 'delivered'",
        Duration::from_secs(20),
    )
    .await;
    let got = receiver.received();
    let events: Vec<(uuid::Uuid, i32)> =
        sqlx::query_as("select id, attempts from webhook_events order by created_at")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(events.len(), 2);
    for (id, tries) in &events {
        let id = id.to_string();
        let to_it: Vec<&Received> = got.iter().filter(|r| r.id == id).collect();
        assert_eq!(
            to_it.iter().map(|r| r.answered).collect::<Vec<_>>(),
            [None, Some(200)],
            "{id}: one unanswered attempt, then one success"
        );
        assert_eq!(to_it[0].body, to_it[1].body);
        assert_eq!(*tries, 2, "{id}: the killed attempt is counted");
    }
    assert_eq!(
        app.count("select count(*) from webhook_attempts where status_code = 200")
            .await,
        2
    );
}

#[tokio::test]
async fn a_failing_receiver_is_paused_and_an_operator_redelivery_probes_and_resumes_it() {
    let receiver = Receiver::start().await;
    receiver.script(&[500; 50]);
    let (_dir, secret) = secret_file();
    let app = spawn_app_with(|s| {
        with_webhook(&receiver.url, &secret, 50)(s);
        s.webhooks.pause_after_failures = 2;
        s.webhooks.pause_ms = 600_000;
    })
    .await;
    let first: Value = app
        .patch("alice", &json!({"first_name": "Paused"}))
        .await
        .json()
        .await
        .unwrap();
    let first_id = first["change_id"].as_str().unwrap().to_string();
    wait_until(
        &app,
        "select exists (select 1 from webhook_receivers where caller = 'test-writer'
                          and failures = 2 and paused_until > now() + interval '5 minutes')",
        Duration::from_secs(10),
    )
    .await;
    // Paused: a new event is not attempted, nor are retries of the first, though both are due
    // many times over.
    let second: Value = app
        .patch("bob", &json!({"first_name": "Waiting"}))
        .await
        .json()
        .await
        .unwrap();
    let second_id = second["change_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        receiver.received().len(),
        2,
        "a paused receiver is left alone"
    );
    assert!(attempts(&app, &second_id).await.is_empty());

    // The caller sees its change's deliveries; another caller sees no such change.
    let listed: Value = app
        .get(&format!("/changes/{first_id}/deliveries"))
        .await
        .json()
        .await
        .unwrap();
    let d = &listed["deliveries"][0];
    assert_eq!(listed["change_id"], first_id.as_str());
    assert_eq!(listed["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(
        (d["event_type"].as_str(), d["status"].as_str()),
        (Some("change.applied"), Some("pending"))
    );
    assert!(d["next_attempt_at"].is_string() && d["delivered_at"].is_null());
    let tried: Vec<(i64, i64, &str)> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["attempt"].as_i64().unwrap(),
                a["status_code"].as_i64().unwrap(),
                a["error"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(tried, [(1, 500, "status"), (2, 500, "status")]);
    assert!(d["attempts"][0]["at"].is_string() && d["attempts"][0]["duration_ms"].is_i64());
    let reader = |req: reqwest::RequestBuilder| req.bearer_auth(READ_ONLY_TOKEN).send();
    let (s, p) = problem(
        reader(
            app.client
                .get(app.url(&format!("/changes/{first_id}/deliveries"))),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (404, Some("change_not_found")));
    let second_delivery = sqlx::query_scalar::<_, uuid::Uuid>(
        "select id from webhook_events where change_id = $1::uuid",
    )
    .bind(&second_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let redeliver = format!("/webhooks/deliveries/{second_delivery}/redeliver");
    let (s, p) = problem(reader(app.client.post(app.url(&redeliver))).await.unwrap()).await;
    assert_eq!((s, p["code"].as_str()), (403, Some("forbidden")));
    for (path, status, code) in [
        (
            format!("/webhooks/deliveries/{}/redeliver", uuid::Uuid::new_v4()),
            404,
            "delivery_not_found",
        ),
        (
            "/webhooks/deliveries/nope/redeliver".to_string(),
            400,
            "invalid_path_parameter",
        ),
    ] {
        let resp = app
            .client
            .post(app.url(&path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let (s, p) = problem(resp).await;
        assert_eq!((s, p["code"].as_str()), (status, Some(code)), "{path}");
    }

    // The receiver is back; an operator redelivers the second event. That lifts the pause: one
    // probe goes out (the oldest due event), its success resumes the receiver, the other follows.
    receiver.state.lock().unwrap().script.clear();
    let resp = app
        .client
        .post(app.url(&redeliver))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let scheduled: Value = resp.json().await.unwrap();
    assert_eq!(scheduled["delivery_id"], second_delivery.to_string());
    assert_eq!(scheduled["change_id"], second_id.as_str());
    let got = receiver.wait_for(4, Duration::from_secs(10)).await;
    let mut after: Vec<&str> = got[2..].iter().map(|r| r.id.as_str()).collect();
    after.sort();
    let second_str = second_delivery.to_string();
    let mut expected = vec![got[0].id.as_str(), second_str.as_str()];
    expected.sort();
    assert_eq!(after, expected);
    assert!(got[2..].iter().all(|r| r.answered == Some(200)));
    wait_until(
        &app,
        "select count(*) = 2 from webhook_events where status = 'delivered'",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        app.count(
            "select count(*) from webhook_receivers where failures = 0 and paused_until is null"
        )
        .await,
        1
    );
    let (user, change, values, actor): (String, uuid::Uuid, Value, Value) = sqlx::query_as(
        "select user_id, change_id, \"values\", actor from audit_events where event_type = 'webhook_redelivered'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((user.as_str(), change.to_string()), ("bob", second_id));
    assert_eq!(values["delivery_id"], second_delivery.to_string());
    // Who asked is in the event's own (hashed) actor column, as on every gateway event.
    assert_eq!(actor["auth"], "token");
    assert!(values.get("actor").is_none());

    // A delivered event may be sent again: same id, same body, a fresh signature.
    let again = app
        .client
        .post(app.url(&redeliver))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202);
    let got = receiver.wait_for(5, Duration::from_secs(10)).await;
    let first_send = got.iter().find(|r| r.id == second_str).unwrap();
    assert_eq!(
        (got[4].id.as_str(), &got[4].body),
        (second_str.as_str(), &first_send.body)
    );
    assert_eq!(
        got[4].signature,
        expected_signature(&got[4].id, &got[4].timestamp, &got[4].body)
    );
}

#[tokio::test]
async fn a_step_that_stays_unknown_sends_the_event_a_caller_subscribed_to() {
    let receiver = Receiver::start().await;
    let (_dir, secret) = secret_file();
    let app = spawn_app_with(|s| {
        with_webhook(&receiver.url, &secret, 50)(s);
        s.auth.callers[0].webhook_events = Some(vec!["change.step_unknown".into()]);
        s.providers.all_mut().max_attempts = Some(2);
        s.providers.all_mut().in_request_attempts = Some(2);
        s.providers.all_mut().retry_base_ms = Some(10);
    })
    .await;
    // The write times out (it may have happened), and the read-back that should tell fails too.
    app.sandbox
        .add_fault(FaultSpec::hang("juspay_customer_update").times(1));
    app.sandbox.add_fault(FaultSpec::status(
        "juspay_customer_get",
        503,
        "busy",
        Some("text/plain"),
    ));
    let resp = app.patch("alice", &json!({"last_name": "Unknown"})).await;
    let (_, p) = problem(resp).await;
    assert_eq!(p["change_status"], "failed");
    let change_id = p["change_id"].as_str().unwrap().to_string();
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].event, "change.step_unknown");
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["steps"][0]["status"], "unknown");
    assert_eq!(body["steps"][0]["attempts"], 2);
    assert_eq!(got[0].body, raw_change(&app, &change_id).await);
    // change.failed was not asked for: the settle wrote no event for it.
    let types: Vec<String> = sqlx::query_scalar("select event_type from webhook_events")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(types, ["change.step_unknown"]);
}

#[tokio::test]
async fn the_sandbox_receiver_records_what_arrived_and_the_cli_verifies_it() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("demo.secret");
    std::fs::write(&secret, upstream_sandbox::DEMO_WEBHOOK_SECRET).unwrap();
    let app = spawn_app_with(|s| {
        s.auth.callers[0].webhook_url = None;
        s.webhooks.poll_interval_ms = 50;
    })
    .await;
    // The sandbox URL is only known once it runs: a second replica sends to it.
    let sandbox_hook = app.sandbox.webhook_url();
    let other = spawn_replica(&app, |s| {
        s.auth.callers[0].webhook_url = Some(sandbox_hook.clone());
        s.auth.callers[0].webhook_secret_file = Some(secret.clone());
        s.webhooks.poll_interval_ms = 50;
    })
    .await;
    let resp = app
        .client
        .patch(format!("{other}/profile/bob"))
        .bearer_auth(TOKEN)
        .header("idempotency-key", "sandbox-receiver-0001")
        .json(&json!({"first_name": "Bobby"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let change: Value = resp.json().await.unwrap();
    let started = Instant::now();
    while app.sandbox.webhooks().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "no webhook");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listed: Value = reqwest::get(&sandbox_hook)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let r = &listed[0];
    assert_eq!(r["seq"], 1);
    assert_eq!(r["signature_valid"], true);
    assert_eq!(r["headers"]["profile-gateway-event"], "change.applied");
    assert_eq!(
        serde_json::from_str::<Value>(r["body"].as_str().unwrap()).unwrap(),
        change
    );

    let verify = |body: &str| {
        let file = dir.path().join("body.json");
        std::fs::write(&file, body).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_profile-gateway"))
            .args(["webhook", "verify", "--secret-file"])
            .arg(&secret)
            .args(["--id", r["headers"]["webhook-id"].as_str().unwrap()])
            .args([
                "--timestamp",
                r["headers"]["webhook-timestamp"].as_str().unwrap(),
            ])
            .args([
                "--signature",
                r["headers"]["webhook-signature"].as_str().unwrap(),
            ])
            .arg("--body-file")
            .arg(&file)
            .env_clear()
            .output()
            .unwrap()
    };
    let ok = verify(r["body"].as_str().unwrap());
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "signature valid\n");
    let body = r["body"].as_str().unwrap();
    let forged = body.replace(r#""status":"applied""#, r#""status":"failed""#);
    assert_ne!(forged, body);
    let tampered = verify(&forged);
    assert_eq!(tampered.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&tampered.stderr).contains("signature not valid"),
        "{tampered:?}"
    );

    let cleared = app.client.delete(&sandbox_hook).send().await.unwrap();
    assert_eq!(cleared.status(), 204);
    assert!(app.sandbox.webhooks().is_empty());
}

const OTHER_TOKEN: &str = "test-token-other-writer";

#[tokio::test]
async fn a_hanging_receiver_with_a_backlog_takes_only_its_share_of_the_slots() {
    let hanging = Receiver::start().await;
    hanging.hang(true);
    let other = Receiver::start().await;
    let (_dir, secret) = secret_file();
    let (hanging_url, other_url) = (hanging.url.clone(), other.url.clone());
    let app = spawn_app_with(move |s| {
        with_webhook(&hanging_url, &secret, 100)(s);
        // Attempts at the hanging receiver hold their slots for the whole test.
        s.webhooks.attempt_timeout_ms = 120_000;
        s.webhooks.batch_size = 4;
        s.webhooks.max_in_flight_per_receiver = 2;
        s.auth
            .callers
            .push(profile_gateway::settings::CallerSettings {
                name: "other-writer".into(),
                token_sha256: Some(profile_gateway::auth::token_sha256(OTHER_TOKEN)),
                scopes: vec!["profile:write".into(), "profile:read".into()],
                webhook_url: Some(other_url.clone()),
                webhook_secret_file: Some(secret.clone()),
                ..Default::default()
            });
    })
    .await;
    let resp = app.patch("alice", &json!({"first_name": "Backlog"})).await;
    assert_eq!(resp.status(), 200);
    let change: Value = resp.json().await.unwrap();
    // A large backlog for the hanging receiver, all due now.
    sqlx::query(
        "insert into webhook_events (id, change_id, caller, event_type, body)
         select gen_random_uuid(), $1::uuid, 'test-writer', 'change.applied', '{}'
           from generate_series(1, 50)",
    )
    .bind(change["change_id"].as_str().unwrap())
    .execute(&app.pool)
    .await
    .unwrap();
    hanging.wait_for(2, Duration::from_secs(10)).await;

    let resp = app
        .client
        .patch(app.url("/profile/bob"))
        .bearer_auth(OTHER_TOKEN)
        .header("idempotency-key", "other-caller-000000001")
        .json(&json!({"first_name": "Prompt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let theirs: Value = resp.json().await.unwrap();
    let got = other.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].answered, Some(200));
    assert_eq!(
        serde_json::from_str::<Value>(&got[0].body).unwrap()["change_id"],
        theirs["change_id"]
    );
    assert_eq!(
        hanging.received().len(),
        2,
        "the hanging receiver has webhooks.max_in_flight_per_receiver attempts, no more"
    );
}

/// A receiver that answers `200` with a `Content-Length` and then never sends the body.
async fn head_only_receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 65536];
                let _ = conn.read(&mut buf).await;
                conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{")
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_secs(120)).await;
            });
        }
    });
    format!("http://127.0.0.1:{port}/hooks")
}

#[tokio::test]
async fn a_2xx_head_is_a_delivery_even_when_the_body_never_ends() {
    let url = head_only_receiver().await;
    let (_dir, secret) = secret_file();
    let app = spawn_app_with(|s| {
        with_webhook(&url, &secret, 100)(s);
        s.webhooks.attempt_timeout_ms = 500;
    })
    .await;
    let resp = app.patch("alice", &json!({"last_name": "Headonly"})).await;
    assert_eq!(resp.status(), 200);
    let change: Value = resp.json().await.unwrap();
    wait_until(
        &app,
        "select exists (select 1 from webhook_events where status <> 'pending' or attempts > 1)",
        Duration::from_secs(10),
    )
    .await;
    let change_id = change["change_id"].as_str().unwrap();
    assert_eq!(attempts(&app, change_id).await, [(1, Some(200), None)]);
    assert_eq!(
        app.count("select count(*) from webhook_events where status = 'delivered'")
            .await,
        1
    );
}

const OPERATOR_TOKEN: &str = "test-token-operator";

#[tokio::test]
async fn an_operators_retry_answers_and_notifies_as_the_caller_that_made_the_change() {
    let receiver = Receiver::start().await;
    let (_dir, secret) = secret_file();
    let app = spawn_app_with(|s| {
        with_webhook(&receiver.url, &secret, 100)(s);
        s.auth
            .callers
            .push(profile_gateway::settings::CallerSettings {
                name: "test-operator".into(),
                token_sha256: Some(profile_gateway::auth::token_sha256(OPERATOR_TOKEN)),
                scopes: vec!["changes:operate".into(), "profile:read".into()],
                ..Default::default()
            });
    })
    .await;
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
    assert_eq!(s, 422);
    let id = p["change_id"].as_str().unwrap().to_string();
    receiver.wait_for(1, Duration::from_secs(10)).await;
    app.sandbox.clear_faults();
    let resp = app
        .client
        .post(app.url(&format!("/changes/{id}/retry")))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    assert_eq!(
        (answer["status"].as_str(), answer["caller"].as_str()),
        (Some("applied"), Some("test-writer")),
        "the operator's answer names the caller that made the change"
    );
    let finished = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    assert!(finished(&answer["finished_at"]) >= finished(&answer["created_at"]));
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[1].event, "change.applied");
    assert_eq!(got[1].body, raw_change(&app, &id).await);
    assert_eq!(serde_json::from_str::<Value>(&got[1].body).unwrap(), answer);
}

/// A probe claimed while another replica's claim of the same event commits: the statement that
/// waited re-checks the event and leaves it (it is sent once, by the other).
#[tokio::test]
async fn a_probe_is_not_claimed_again_after_another_replicas_claim_commits() {
    use profile_gateway::store::webhooks as store;
    // No caller has a webhook here, so no dispatcher runs: this test plays both replicas.
    let app = spawn_app().await;
    let change: Value = app
        .patch("alice", &json!({"first_name": "Probe"}))
        .await
        .json()
        .await
        .unwrap();
    let event = uuid::Uuid::new_v4();
    sqlx::query(
        "insert into webhook_events (id, change_id, caller, event_type, body)
         values ($1, $2::uuid, 'test-writer', 'change.applied', '{}')",
    )
    .bind(event)
    .bind(change["change_id"].as_str().unwrap())
    .execute(&app.pool)
    .await
    .unwrap();
    // A paused receiver whose pause is over: its next pass takes one probe.
    sqlx::query("insert into webhook_receivers (caller, failures) values ('test-writer', 3)")
        .execute(&app.pool)
        .await
        .unwrap();

    // Replica A claims the event for its probe, holding the receiver row until it commits.
    let mut a = app.pool.begin().await.unwrap();
    sqlx::query("update webhook_receivers set paused_until = now() where caller = 'test-writer'")
        .execute(&mut *a)
        .await
        .unwrap();
    sqlx::query(
        "update webhook_events set attempts = 1, claimed_by = 'replica-a',
                claimed_until = now() + interval '1 minute' where id = $1",
    )
    .bind(event)
    .execute(&mut *a)
    .await
    .unwrap();
    // Replica B's claim starts (its snapshot shows the event unclaimed) and waits for A.
    let pool = app.pool.clone();
    let b = tokio::spawn(async move {
        store::claim_probes(
            &pool,
            "replica-b",
            &["test-writer".to_string()],
            Duration::from_secs(60),
            3,
            Duration::from_secs(60),
        )
        .await
        .unwrap()
    });
    wait_until(
        &app,
        "select exists (select 1 from pg_stat_activity
                         where wait_event_type = 'Lock' and query like '%with probing as%')",
        Duration::from_secs(10),
    )
    .await;
    a.commit().await.unwrap();
    let claimed = b.await.unwrap();
    assert!(claimed.is_empty(), "claimed twice: {claimed:?}");
    let (owner, tries): (String, i32) =
        sqlx::query_as("select claimed_by, attempts from webhook_events where id = $1")
            .bind(event)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((owner.as_str(), tries), ("replica-a", 1));

    // An operator cannot redeliver to a caller that has no webhook: nothing would be sent.
    let (s, p) = problem(
        app.client
            .post(app.url(&format!("/webhooks/deliveries/{event}/redeliver")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (409, Some("delivery_no_webhook")));
}
