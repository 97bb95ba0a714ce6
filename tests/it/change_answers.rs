//! What a caller sees of a change's lifecycle: a replay answers byte for byte as the first answer
//! did, and an upstream's `Retry-After` is never undercut by the retry that follows it.

use crate::helpers::*;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_replay_of_a_finished_change_is_the_first_answer_byte_for_byte() {
    let app = spawn_app().await;
    let key = uuid::Uuid::new_v4().to_string();
    let body = json!({"first_name": "Alicia", "email_address": "alicia@example.com"});
    let first = app.patch_with_key("alice", &body, &key).await;
    assert_eq!(first.status(), 200);
    let first = first.bytes().await.unwrap();
    let parsed: Value = serde_json::from_slice(&first).unwrap();
    assert!(parsed["finished_at"].is_string(), "{parsed}");

    let again = app.patch_with_key("alice", &body, &key).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again = again.bytes().await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&again),
        String::from_utf8_lossy(&first),
        "the replay answers from the record what the first answer said"
    );
    // And `GET /changes/{id}` shows the same change.
    let id = parsed["change_id"].as_str().unwrap();
    let read = app
        .get(&format!("/changes/{id}"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&read),
        String::from_utf8_lossy(&first)
    );
}

/// An upstream in front of the sandbox: the first call answers 429 with `Retry-After`, every
/// later one is passed on. Each call's arrival is noted.
#[derive(Clone)]
struct RateLimitingUpstream {
    sandbox: String,
    retry_after_secs: u64,
    client: reqwest::Client,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

async fn rate_limit_once(
    State(up): State<RateLimitingUpstream>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let first = {
        let mut arrivals = up.arrivals.lock().unwrap();
        arrivals.push(Instant::now());
        arrivals.len() == 1
    };
    if first {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", up.retry_after_secs.to_string())],
            "",
        )
            .into_response();
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut forward = up
        .client
        .request(method, format!("{}{path}", up.sandbox))
        .body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            forward = forward.header(name, value);
        }
    }
    let answer = forward.send().await.unwrap();
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
    let content_type = answer
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_else(|| "application/json".into());
    let body = answer.bytes().await.unwrap();
    (status, [("content-type", content_type)], body).into_response()
}

/// The app with Juspay behind a [`RateLimitingUpstream`]; returns the app and the arrivals.
async fn behind_rate_limit(
    retry_after_secs: u64,
    tweak: impl FnOnce(&mut profile_gateway::settings::Settings),
) -> (TestApp, Arc<Mutex<Vec<Instant>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", listener.local_addr().unwrap());
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let sandbox_slot: Arc<Mutex<Option<String>>> = Arc::default();
    let app = {
        let slot = Arc::clone(&sandbox_slot);
        spawn_app_with(move |s| {
            *slot.lock().unwrap() = s.juspay.base_url.clone();
            s.juspay.base_url = Some(proxy);
            tweak(s);
        })
        .await
    };
    let upstream = RateLimitingUpstream {
        sandbox: sandbox_slot.lock().unwrap().clone().unwrap(),
        retry_after_secs,
        client: reqwest::Client::new(),
        arrivals: Arc::clone(&arrivals),
    };
    let router = axum::Router::new()
        .fallback(rate_limit_once)
        .with_state(upstream);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (app, arrivals)
}

fn gap(arrivals: &Mutex<Vec<Instant>>) -> Duration {
    let arrivals = arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), 2, "one 429, then one retry");
    arrivals[1] - arrivals[0]
}

#[tokio::test]
async fn a_retry_after_a_429_waits_at_least_as_long_as_the_upstream_asked() {
    // The backoff alone would retry within 100 ms.
    let (app, arrivals) = behind_rate_limit(1, |_| {}).await;
    let resp = app.patch("alice", &json!({"first_name": "Alicia"})).await;
    assert_eq!(resp.status(), 200, "retried within the request");
    let change: Value = resp.json().await.unwrap();
    assert_eq!(change["steps"][0]["attempts"], 2, "{change}");
    let waited = gap(&arrivals);
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
}

#[tokio::test]
async fn a_retry_after_beyond_the_deadline_parks_the_change_at_least_that_long() {
    let (app, arrivals) = behind_rate_limit(2, |s| {
        s.upstream.request_deadline_ms = 1000;
        s.changes.completer_interval_ms = 100;
    })
    .await;
    let resp = app.patch("alice", &json!({"first_name": "Alicia"})).await;
    assert_eq!(resp.status(), 202, "the caller is not kept waiting");
    let change: Value = resp.json().await.unwrap();
    let id = change["change_id"].as_str().unwrap().to_string();
    let started = Instant::now();
    loop {
        let now: Value = app
            .get(&format!("/changes/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if now["status"] == "applied" {
            assert_eq!(now["steps"][0]["attempts"], 2, "{now}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waited = gap(&arrivals);
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
}
