//! Limits and hostile peers (issue 14): every bound answers with its problem before any work, and
//! slow clients are disconnected. Sockets are real; every wait is bounded.
//!
//! (Over ~400 lines on purpose: each bound is one test over the same raw-socket fixtures; split, it would scatter them.)

use crate::helpers::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use upstream_sandbox::FaultSpec;

async fn raw_patch(app: &TestApp, user: &str, body: &str) -> reqwest::Response {
    app.client
        .patch(app.url(&format!("/profile/{user}")))
        .bearer_auth(TOKEN)
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn nothing_happened(app: &TestApp) {
    assert_eq!(app.count("select count(*) from changes").await, 0);
    assert_eq!(app.count("select count(*) from idempotency_keys").await, 0);
    assert!(app.journal().is_empty(), "no upstream may be called");
}

#[tokio::test]
async fn duplicate_members_anywhere_are_malformed_json_with_the_pointer() {
    let app = spawn_app().await;
    for (body, pointer) in [
        (
            r#"{"first_name":"Bad Name!","first_name":"Bobby"}"#,
            "/first_name",
        ),
        (
            r#"{"upi":{"upi_number":"9876543210","vpa":"a@ok","action":"activate","consent":true,
               "device":{"fingerprint":"f","fingerprint":"g","fingerprint_timestamp":1}}}"#,
            "/upi/device/fingerprint",
        ),
    ] {
        let (status, p) = problem(raw_patch(&app, "alice", body).await).await;
        assert_eq!(
            (status, p["code"].as_str()),
            (400, Some("malformed_json")),
            "{p}"
        );
        assert_eq!(p["errors"][0]["pointer"], pointer, "{p}");
        assert_eq!(p["errors"][0]["code"], "duplicate_member", "{p}");
        assert!(
            !p.to_string().contains("Bobby"),
            "values are never echoed: {p}"
        );
    }
    let links = app
        .client
        .put(app.url("/profile/carol/links"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"juspay_customer_id":"a","juspay_customer_id":"b"}"#)
        .send()
        .await
        .unwrap();
    let (status, p) = problem(links).await;
    assert_eq!(
        (status, p["errors"][0]["pointer"].as_str()),
        (400, Some("/juspay_customer_id"))
    );
    assert_eq!(
        app.count("select count(*) from profile_links where user_id = 'carol'")
            .await,
        0
    );
    nothing_happened(&app).await;
}

fn upi_with(number: &str, ts: Value) -> Value {
    json!({"upi": {"upi_number": number, "vpa": "new.vpa@okaxis", "action": "change_vpa",
                   "consent": true, "device": {"fingerprint": "3f1c0d2e9a7b", "fingerprint_timestamp": ts}}})
}

#[tokio::test]
async fn fingerprint_timestamps_outside_the_window_are_422_with_the_pointer() {
    let app = spawn_app().await;
    let day_ms = 24 * 3600 * 1000;
    for (ts, code) in [
        (json!(18446744073709551615u64), "timestamp_in_future"),
        (json!(now_ms() + 10 * 60 * 1000), "timestamp_in_future"),
        (json!(now_ms() - day_ms - 60_000), "timestamp_too_old"),
        (json!(1767225600000u64), "timestamp_too_old"),
    ] {
        let (status, p) = problem(app.patch("alice", &upi_with("9876543210", ts)).await).await;
        assert_eq!(
            (status, p["code"].as_str()),
            (422, Some("validation_failed")),
            "{p}"
        );
        assert_eq!(
            p["errors"],
            json!([{"pointer": "/upi/device/fingerprint_timestamp", "code": code,
                    "detail": p["errors"][0]["detail"]}]),
            "{p}"
        );
    }
    nothing_happened(&app).await;
    // Inside the window (a little skew ahead included) the change goes through.
    let ok = app
        .patch("alice", &upi_with("9876543210", json!(now_ms() + 60_000)))
        .await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn each_npci_upi_number_rule_has_its_own_code() {
    let app = spawn_app().await;
    for (number, code) in [
        ("5876543210", "upi_number_not_mobile"),
        ("01234567", "upi_number_leading_zero"),
        ("77777777", "upi_number_repeated_digits"),
        ("123456000", "upi_number_repeated_ending"),
        ("1234567", "invalid_length"),
    ] {
        let (status, p) =
            problem(app.patch("alice", &upi_with(number, json!(now_ms()))).await).await;
        assert_eq!(status, 422, "{number}: {p}");
        assert_eq!(p["errors"][0]["pointer"], "/upi/upi_number", "{number}");
        assert_eq!(p["errors"][0]["code"], code, "{number}");
        assert!(!p.to_string().contains(number), "{number} echoed: {p}");
    }
    nothing_happened(&app).await;
}

#[tokio::test]
async fn problem_details_never_echo_submitted_values() {
    let app = spawn_app().await;
    let marker = "Zq9marker";
    let body = json!({
        "first_name": format!("{marker}!"), "email_address": format!("{marker}@@x"),
        "mobile_number": format!("{marker}1"), format!("{marker}_field"): 1,
        "upi": {"upi_number": marker, "vpa": marker, "action": marker, "consent": marker,
                "device": {"fingerprint": format!("{marker} "), "fingerprint_timestamp": marker}}
    });
    let (status, p) = problem(app.patch("alice", &body).await).await;
    assert_eq!(status, 422);
    for e in p["errors"].as_array().unwrap() {
        assert!(!e["detail"].as_str().unwrap().contains(marker), "{e}");
    }
    assert!(!p["detail"].as_str().unwrap().contains(marker));
    nothing_happened(&app).await;
}

#[tokio::test]
async fn api_responses_are_never_cached_or_sniffed() {
    let app = spawn_app().await;
    let ok = app.get("/profile/alice/links").await;
    let error = app.get("/nowhere").await;
    let probe = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    let applied = app.patch("alice", &json!({"first_name": "Al"})).await;
    for r in [&ok, &error, &probe, &applied] {
        assert_eq!(r.headers()["cache-control"], "no-store", "{}", r.url());
        assert_eq!(
            r.headers()["x-content-type-options"],
            "nosniff",
            "{}",
            r.url()
        );
    }
}

/// Sends a PATCH's headers announcing a body that never comes: the request holds its in-flight
/// slot until the body timeout (or until the socket closes).
async fn stalled_patch(app: &TestApp) -> TcpStream {
    let mut s = TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "PATCH /profile/alice HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\
         idempotency-key: {}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{",
        uuid::Uuid::new_v4()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn writes_over_the_in_flight_bound_are_shed_with_503_before_any_work() {
    let app = spawn_app_with(|s| {
        s.limits.max_inflight_patches = 1;
        s.limits.max_inflight_reads = 1;
    })
    .await;
    let stalled = stalled_patch(&app).await;
    // Give the server the moment it needs to take the slot.
    let mut shed = None;
    for _ in 0..50 {
        let r = raw_patch(&app, "alice", "not even json").await;
        if r.status() == 503 {
            shed = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let shed = shed.expect("the second write is shed while the first holds the only slot");
    assert_eq!(shed.headers()["retry-after"], "1");
    let (_, p) = problem(shed).await;
    assert_eq!(
        p["code"], "overloaded",
        "shed before the body is parsed: {p}"
    );
    // Unauthenticated, too: shedding costs no token check.
    let anon = app
        .client
        .patch(app.url("/profile/alice"))
        .json(&json!({"first_name": "Al"}))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 503);
    // Reads have their own bound, and probes none.
    assert_eq!(app.get("/profile/alice/links").await.status(), 200);
    let probe = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);
    nothing_happened(&app).await;
    // The slot comes back when the stalled client goes away.
    drop(stalled);
    let started = Instant::now();
    loop {
        let r = app.patch("alice", &json!({"first_name": "Al"})).await;
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "slot never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_caller_over_its_rate_gets_429_with_ratelimit_headers_and_nothing_recorded() {
    let app = spawn_app_with(|s| {
        s.auth.callers[0].rate_per_s = Some(0.5);
        s.auth.callers[0].burst = Some(2);
    })
    .await;
    for left in ["1", "0"] {
        let r = app.patch("alice", &json!({"first_name": "Al"})).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-policy"], "\"caller\";q=2;w=4");
        let state = r.headers()["ratelimit"].to_str().unwrap().to_string();
        assert!(
            state.starts_with(&format!("\"caller\";r={left};t=")),
            "{state}"
        );
    }
    app.sandbox.clear_journal();
    let refused = app.patch("alice", &json!({"first_name": "Bo"})).await;
    assert_eq!(refused.headers()["retry-after"], "2");
    assert_eq!(refused.headers()["ratelimit-policy"], "\"caller\";q=2;w=4");
    assert_eq!(refused.headers()["ratelimit"], "\"caller\";r=0;t=2");
    let (status, p) = problem(refused).await;
    assert_eq!((status, p["code"].as_str()), (429, Some("rate_limited")));
    assert_eq!(app.count("select count(*) from changes").await, 2);
    assert!(app.journal().is_empty());
    // Another caller has its own bucket (here: no limit at all).
    let reader = app
        .client
        .get(app.url("/profile/alice/links"))
        .bearer_auth(READ_ONLY_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(reader.status(), 200);
    assert!(reader.headers().get("ratelimit").is_none());
}

#[tokio::test]
async fn a_user_with_max_pending_changes_gets_429_and_nothing_is_recorded() {
    let app = spawn_app_with(|s| {
        s.changes.max_pending_per_user = 2;
        s.upstream.request_deadline_ms = 300;
    })
    .await;
    // The upstream is slow, so the first two changes are still running when the third comes.
    app.sandbox.add_fault(FaultSpec::latency("*", 1500));
    for name in ["A", "B"] {
        let r = app.patch("alice", &json!({"first_name": name})).await;
        assert_eq!(r.status(), 202);
    }
    let before = app.journal().len();
    let refused = app.patch("alice", &json!({"first_name": "C"})).await;
    assert_eq!(refused.headers()["retry-after"], "2");
    let (status, p) = problem(refused).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (429, Some("too_many_pending_changes"))
    );
    assert_eq!(app.count("select count(*) from changes").await, 2);
    assert_eq!(
        app.count("select count(*) from audit_events where event_type = 'change_requested'")
            .await,
        2
    );
    assert_eq!(
        app.journal().len(),
        before,
        "no upstream call for the refused change"
    );
    // Another user is not affected.
    assert_eq!(
        app.patch("bob", &json!({"first_name": "Bo"}))
            .await
            .status(),
        202
    );
    // A retry of a recorded change (same key, same body) is answered from its record, never
    // refused for the bound.
    let replay = app
        .patch_with_key(
            "alice",
            &json!({"first_name": "A"}),
            "limits-test-key-000001",
        )
        .await;
    assert_eq!(replay.status(), 429, "a new key at the bound is refused");
}

#[tokio::test]
async fn a_replayed_key_is_not_refused_for_the_pending_bound() {
    let app = spawn_app_with(|s| {
        s.changes.max_pending_per_user = 1;
        s.upstream.request_deadline_ms = 300;
    })
    .await;
    app.sandbox.add_fault(FaultSpec::latency("*", 1500));
    let key = "limits-test-key-000002";
    let body = json!({"first_name": "A"});
    assert_eq!(app.patch_with_key("alice", &body, key).await.status(), 202);
    let again = app.patch_with_key("alice", &body, key).await;
    assert_ne!(again.status(), 429, "a replay is answered from its record");
    assert_eq!(app.count("select count(*) from changes").await, 1);
}

/// Reads until EOF (or a reset) and says how long that took; panics past `bound`.
async fn closed_within(s: &mut TcpStream, bound: Duration) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + bound).into(), s.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {bound:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return (started.elapsed(), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_client_trickling_headers_is_disconnected_at_the_header_timeout() {
    let app = spawn_app_with(|s| {
        s.server.header_read_timeout_ms = 800;
        s.server.idle_timeout_ms = 60_000;
    })
    .await;
    let mut s = TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(b"GET /health/live HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let trickle = async {
        for i in 0..20 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if s.write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), trickle).await;
    let (_, got) = closed_within(&mut s, Duration::from_secs(5)).await;
    let elapsed = started.elapsed();
    assert!(got.is_empty(), "no answer to an incomplete head");
    assert!(
        elapsed >= Duration::from_millis(700) && elapsed < Duration::from_millis(2500),
        "closed after {elapsed:?}, expected about 800 ms"
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_close_at_the_idle_timeout_not_the_header_timeout() {
    let app = spawn_app_with(|s| {
        s.server.header_read_timeout_ms = 300;
        s.server.idle_timeout_ms = 1200;
    })
    .await;
    let mut s = TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Idle past the header timeout: still open, and still serving.
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "a 600 ms idle connection is kept"
    );
    let (elapsed, _) = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(
        elapsed >= Duration::from_millis(1000) && elapsed < Duration::from_millis(3000),
        "idle connection closed after {elapsed:?}, expected about 1200 ms"
    );
}

#[tokio::test]
async fn a_body_that_stalls_gets_408_and_the_connection_closes() {
    let app = spawn_app_with(|s| s.server.body_read_timeout_ms = 500).await;
    let mut s = stalled_patch(&app).await;
    let (elapsed, got) = closed_within(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    nothing_happened(&app).await;
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let app = spawn_app_with(|s| s.server.max_connections = 2).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let held1 = TcpStream::connect(&addr).await.unwrap();
    let held2 = TcpStream::connect(&addr).await.unwrap();
    // Let the server accept both.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(&addr).await.unwrap();
    third
        .write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf))
            .await
            .is_err(),
        "a third connection is not served while two are open"
    );
    drop(held1);
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    drop(held2);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_then_stops_accepting() {
    let sandbox = spawn_sandbox().await;
    let (_, db_url) = fresh_database().await;
    let settings = base_settings(&db_url, &sandbox.base_url());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = profile_gateway::startup::Application::build(&settings, listener)
        .await
        .unwrap();
    let addr = app.local_addr();
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    profile_gateway::demo::seed_links(&pool).await.unwrap();
    sandbox.add_fault(FaultSpec::latency("*", 700));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    let client = reqwest::Client::new();
    let in_flight = tokio::spawn(
        client
            .patch(format!("http://{addr}/profile/alice"))
            .bearer_auth(TOKEN)
            .header("idempotency-key", uuid::Uuid::new_v4().to_string())
            .json(&json!({"first_name": "Al"}))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.send(()).unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(answered.status(), 200, "the in-flight request finishes");
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("run_until returns once drained")
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// An upstream that answers every request 200 with 400 MB of whitespace, then `{"id":"big"}`,
/// announced by Content-Length or chunked. Reports how many bytes it got out before the client
/// dropped the connection.
async fn hostile_upstream(chunked: bool) -> (String, tokio::sync::mpsc::UnboundedReceiver<u64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let _ = s.read(&mut buf).await;
                const TOTAL: u64 = 400 * 1024 * 1024;
                let tail = b"{\"id\":\"big\"}";
                let head = if chunked {
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_string()
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        TOTAL + tail.len() as u64
                    )
                };
                let mut sent = 0u64;
                if s.write_all(head.as_bytes()).await.is_err() {
                    let _ = tx.send(sent);
                    return;
                }
                let block = vec![b' '; 1024 * 1024];
                while sent < TOTAL {
                    let r = if chunked {
                        let mut c = format!("{:x}\r\n", block.len()).into_bytes();
                        c.extend_from_slice(&block);
                        c.extend_from_slice(b"\r\n");
                        s.write_all(&c).await
                    } else {
                        s.write_all(&block).await
                    };
                    if r.is_err() {
                        break;
                    }
                    sent += block.len() as u64;
                }
                let _ = tx.send(sent);
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn a_huge_upstream_body_ends_the_read_drops_the_connection_and_leaves_memory_bounded() {
    for chunked in [false, true] {
        let (url, mut sent) = hostile_upstream(chunked).await;
        let app = spawn_app_with(|s| {
            single_attempt(s);
            s.juspay.base_url = Some(url.clone());
        })
        .await;
        // Warm up allocator and pools with one small request first.
        let _ = app.get("/profile/alice/links").await;
        let before = rss_kib();
        let resp = app.patch("alice", &json!({"first_name": "Al"})).await;
        let (status, p) = problem(resp).await;
        let after = rss_kib();
        assert_eq!(status, 502, "{p}");
        assert_eq!(p["code"], "upstream_bad_response", "{p}");
        let step = &p["steps"][0];
        assert_eq!(step["target"], "juspay_customer");
        assert_eq!(
            step["status"], "unknown",
            "a 2xx we could not read may have applied"
        );
        assert_eq!(step["error"]["code"], "upstream_bad_response");
        let written = tokio::time::timeout(Duration::from_secs(10), sent.recv())
            .await
            .expect("the gateway drops the connection")
            .unwrap();
        assert!(
            written < 64 * 1024 * 1024,
            "chunked={chunked}: the upstream got {written} bytes out before the drop"
        );
        eprintln!(
            "chunked={chunked}: RSS {before} KiB -> {after} KiB, upstream wrote {written} bytes before the drop"
        );
        assert!(
            after < before + 8 * 1024,
            "chunked={chunked}: RSS went from {before} KiB to {after} KiB"
        );
    }
}

#[tokio::test]
async fn a_customer_answer_that_does_not_echo_the_field_sent_is_confirmed_by_read_back() {
    let app = spawn_app().await;
    // The update takes effect, but the answer shows only the id.
    app.sandbox.add_fault(
        FaultSpec::status(
            "juspay_customer_update",
            200,
            r#"{"id":"cst_demo_alice","object":"customer"}"#,
            Some("application/json"),
        )
        .after_apply()
        .times(1),
    );
    let resp = app.patch("alice", &json!({"first_name": "Echo"})).await;
    assert_eq!(resp.status(), 200);
    let routes: Vec<String> = app
        .journal()
        .iter()
        .filter_map(|e| e.route.clone())
        .collect();
    assert_eq!(
        routes,
        ["juspay_customer_update", "juspay_customer_get"],
        "one update, then a read-back instead of a second write"
    );
    assert_eq!(
        app.count(
            "select count(*) from change_steps where confirmed_by_read_back and status = 'applied'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn with_an_upstream_that_never_echoes_the_step_stays_unknown() {
    let app = spawn_app_with(single_attempt).await;
    app.sandbox.add_fault(
        FaultSpec::status(
            "juspay_customer_update",
            200,
            r#"{"id":"cst_demo_alice"}"#,
            Some("application/json"),
        )
        .times(1),
    );
    let (status, p) = problem(app.patch("alice", &json!({"first_name": "Echo"})).await).await;
    assert_eq!(status, 502, "{p}");
    assert_eq!(p["steps"][0]["status"], "unknown", "{p}");
    assert_eq!(p["steps"][0]["error"]["code"], "upstream_bad_response");
}
