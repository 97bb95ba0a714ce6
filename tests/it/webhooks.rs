//! Outcome webhooks against a real HTTP receiver on loopback: Standard Webhooks signatures checked
//! with an HMAC computed here, retries and backoff, a receiver that is down or keeps failing, two
//! replicas, a gateway SIGKILLed between the outcome commit and the delivery, and the deliveries
//! API.

use crate::helpers::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use profile_gateway::sandbox::FaultSpec;
use profile_gateway::settings::Settings;
use profile_gateway::startup::Application;
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    let base = Duration::from_millis(300);
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
    let replicas = app
        .count("select count(distinct replica) from webhook_attempts")
        .await;
    eprintln!("two replicas: {n} events delivered once each, by {replicas} replica(s)");
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
