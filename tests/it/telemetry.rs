//! Traces and metrics as a platform team sees them: spans received by a real OTLP/HTTP receiver,
//! series scraped from `/metrics`, checked by promtool and by a real Prometheus server.
//!
//! The tracer provider and the `tracing` subscriber are process-global, and the other tests of
//! this binary install theirs first; so trace tests run the real `profile-gateway serve` binary
//! as a child process, configured only through its config file and the standard `OTEL_*`
//! variables, as Kubernetes would run it. Metrics have one registry per application and run
//! in-process.
//!
//! (Over ~400 lines on purpose: spans and series share one OTLP receiver and one Prometheus fixture; split, it would scatter them.)

use crate::helpers::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use upstream_sandbox::{self as sandbox, FaultSpec};

// ---------------------------------------------------------------------------------------------
// An OTLP/HTTP receiver

/// A received span with its resource's attributes.
type Exported = (Vec<KeyValue>, Span);

#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<Exported>>>,
}

impl Received {
    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }
}

/// Accepts `POST /v1/traces` with protobuf bodies, as a collector does.
async fn otlp_receiver() -> (String, Received) {
    let received = Received::default();
    let r = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let r = r.clone();
            async move {
                let request: ExportTraceServiceRequest =
                    prost::Message::decode(body).expect("an OTLP protobuf body");
                let mut spans = r.spans.lock().unwrap();
                for rs in request.resource_spans {
                    let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
                    for ss in rs.scope_spans {
                        for span in ss.spans {
                            spans.push((resource.clone(), span));
                        }
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// A collector that accepts connections and never answers.
async fn hanging_receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    url
}

/// An address where nothing listens.
fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key) {
        Some(any_value::Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key) {
        Some(any_value::Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

/// Every string an attribute holds, nested values included.
fn strings(v: &AnyValue, out: &mut Vec<String>) {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => out.push(s.clone()),
        Some(any_value::Value::ArrayValue(a)) => a.values.iter().for_each(|v| strings(v, out)),
        Some(any_value::Value::KvlistValue(l)) => l
            .values
            .iter()
            .filter_map(|kv| kv.value.as_ref())
            .for_each(|v| strings(v, out)),
        _ => {}
    }
}

fn all_attribute_strings(resource: &[KeyValue], span: &Span) -> Vec<String> {
    let mut out = Vec::new();
    let lists = std::iter::once(resource)
        .chain(std::iter::once(span.attributes.as_slice()))
        .chain(span.events.iter().map(|e| e.attributes.as_slice()))
        .chain(span.links.iter().map(|l| l.attributes.as_slice()));
    for list in lists {
        for kv in list {
            out.push(kv.key.clone());
            if let Some(v) = &kv.value {
                strings(v, &mut out);
            }
        }
    }
    out.push(span.name.clone());
    out
}

// ---------------------------------------------------------------------------------------------
// The real binary

struct Gateway {
    child: std::process::Child,
    base: String,
    logs: Arc<Mutex<Vec<String>>>,
    pool: sqlx::PgPool,
    _dir: tempfile::TempDir,
}

fn config_toml(db_url: &str, sandbox_url: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[database]
url = "{db_url}"
max_connections = 5
[upstream]
# The sandbox speaks plain HTTP on loopback.
allow_plain_http = true
[juspay]
base_url = "{sandbox_url}"
api_key = "{juspay_key}"
merchant_id = "{merchant}"
timeout_ms = 1500
[razorpay]
base_url = "{sandbox_url}"
key_id = "{rzp_id}"
key_secret = "{rzp_secret}"
timeout_ms = 1500
[changes]
encryption_key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
[audit]
hmac_key = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="
[telemetry]
log_level = "info"
[[auth.callers]]
name = "test-writer"
token_sha256 = "{token}"
scopes = ["profile:write", "profile:read", "links:read"]
"#,
        juspay_key = sandbox::DEMO_JUSPAY_API_KEY,
        merchant = sandbox::DEMO_JUSPAY_MERCHANT_ID,
        rzp_id = sandbox::DEMO_RAZORPAY_KEY_ID,
        rzp_secret = sandbox::DEMO_RAZORPAY_KEY_SECRET,
        token = profile_gateway::auth::token_sha256(TOKEN),
    )
}

/// Starts `profile-gateway serve` with a fresh database, the given sandbox and `OTEL_*`
/// variables (and nothing else from this process's environment), seeded with the demo links.
async fn start_gateway(sandbox_url: &str, otel: &[(&str, &str)]) -> Gateway {
    let (_, db_url) = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    // Migrated as the owner (the migration Job); served as the least-privilege app role.
    let app_url = app_role_url(&db_url).await;
    std::fs::write(&config, config_toml(&app_url, sandbox_url)).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_profile-gateway"))
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(otel.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the gateway binary runs");
    let stderr = child.stderr.take().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    let lines = Arc::clone(&logs);
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("profile-gateway listening")
                && let Ok(v) = serde_json::from_str::<Value>(&line)
                && let Some(addr) = v["addr"].as_str()
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr.to_string());
            }
            lines.lock().unwrap().push(line);
        }
    });
    let addr = match tokio::time::timeout(Duration::from_secs(60), rx).await {
        Ok(Ok(addr)) => addr,
        _ => panic!(
            "the gateway did not start:\n{}",
            logs.lock().unwrap().join("\n")
        ),
    };
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    profile_gateway::demo::seed_links(&pool).await.unwrap();
    Gateway {
        child,
        base: format!("http://{addr}"),
        logs,
        pool,
        _dir: dir,
    }
}

impl Gateway {
    /// SIGTERM, then the exit status and how long the process took to exit (at most `bound`).
    async fn terminate(&mut self, bound: Duration) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            if started.elapsed() > bound {
                let _ = self.child.kill();
                panic!(
                    "the gateway did not exit within {bound:?} of SIGTERM:\n{}",
                    self.logs()
                );
            }
            // Not a thread sleep: the receiver runs on this runtime and must keep answering.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

// Values submitted in the traced PATCH; none may appear in any span.
const MOBILE: &str = "9812345671";
const EMAIL: &str = "zq.trace@example.com";
const FIRST: &str = "Zenobia";
const LAST: &str = "Quixote";
const VPA: &str = "zq.trace@okaxis";
const UPI_NUMBER: &str = "9876543210";
const FINGERPRINT: &str = "9a8b7c6d5e4f";

fn traced_body() -> Value {
    json!({
        "mobile_number": MOBILE, "email_address": EMAIL, "first_name": FIRST, "last_name": LAST,
        "upi": {
            "upi_number": UPI_NUMBER, "vpa": VPA, "action": "change_vpa", "consent": true,
            "device": {"fingerprint": FINGERPRINT, "fingerprint_timestamp": now_ms()}
        }
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn one_patch_exports_one_trace_with_a_server_span_and_a_client_span_per_step() {
    let (collector, received) = otlp_receiver().await;
    let sandbox = spawn_sandbox().await;
    let mut gw = start_gateway(
        &sandbox.base_url(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str()),
            ("OTEL_SERVICE_NAME", "pgw-trace-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    )
    .await;
    sandbox.clear_journal();
    let client = reqwest::Client::new();
    let resp = client
        .patch(format!("{}/profile/alice", gw.base))
        .bearer_auth(TOKEN)
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .json(&traced_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let journal = sandbox.journal();
    assert_eq!(journal.len(), 4, "customer, two wallets, UPI: {journal:?}");

    // A problem names the trace its spans are exported under: the caller's, or a new one.
    let resp = client
        .get(format!("{}/profile/nobody/links", gw.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let (status, problem_body) = problem(resp).await;
    assert_eq!(status, 404);
    let new_trace = problem_body["trace_id"]
        .as_str()
        .expect("problem bodies carry trace_id")
        .to_string();
    assert_eq!(new_trace.len(), 32);
    assert_ne!(new_trace, CALLER_TRACE);

    let (exit, _) = gw.terminate(Duration::from_secs(30)).await;
    assert!(exit.success(), "{exit:?}\n{}", gw.logs());
    let spans = received.spans();

    // The PATCH: one trace, the caller's, with the server span as the caller span's child.
    let trace: Vec<&Exported> = spans
        .iter()
        .filter(|(_, s)| hex(&s.trace_id) == CALLER_TRACE)
        .collect();
    let servers: Vec<&Span> = trace
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(
        servers.len(),
        1,
        "{:#?}\n{}",
        spans
            .iter()
            .map(|(_, s)| (hex(&s.trace_id), s.name.clone(), s.kind))
            .collect::<Vec<_>>(),
        gw.logs()
    );
    let server = servers[0];
    assert_eq!(server.name, "PATCH /profile/{user}");
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN);
    assert_eq!(
        str_attr(&server.attributes, "http.route"),
        Some("/profile/{user}")
    );
    assert_eq!(
        int_attr(&server.attributes, "http.response.status_code"),
        Some(200),
        "{server:#?}"
    );
    let (resource, _) = trace[0];
    assert_eq!(str_attr(resource, "service.name"), Some("pgw-trace-test"));

    // One client span per upstream call, children of the server span, each the parent named in
    // the traceparent the sandbox received.
    let clients: Vec<&Span> = trace
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.kind == SpanKind::Client as i32)
        .filter(|s| str_attr(&s.attributes, "profile_gateway.provider").is_some())
        .collect();
    assert_eq!(clients.len(), journal.len(), "{clients:#?}");
    let mut expected = BTreeSet::new();
    for c in &clients {
        assert_eq!(c.parent_span_id, server.span_id, "{c:#?}");
        assert_eq!(
            c.name,
            if str_attr(&c.attributes, "profile_gateway.provider") == Some("razorpay_upi") {
                "PATCH"
            } else {
                "POST"
            }
        );
        assert_eq!(str_attr(&c.attributes, "server.address"), Some("127.0.0.1"));
        assert_eq!(
            int_attr(&c.attributes, "http.response.status_code"),
            Some(200)
        );
        assert_eq!(int_attr(&c.attributes, "http.request.resend_count"), None);
        assert_eq!(str_attr(&c.attributes, "error.type"), None);
        expected.insert(format!("00-{CALLER_TRACE}-{}-01", hex(&c.span_id)));
    }
    let sent: BTreeSet<String> = journal
        .iter()
        .map(|e| e.headers.get("traceparent").cloned().unwrap_or_default())
        .collect();
    assert_eq!(sent, expected, "each upstream call carries its client span");
    let providers: BTreeMap<&str, usize> = clients.iter().fold(BTreeMap::new(), |mut m, c| {
        *m.entry(str_attr(&c.attributes, "profile_gateway.provider").unwrap())
            .or_default() += 1;
        m
    });
    assert_eq!(
        providers,
        BTreeMap::from([
            ("juspay_customer", 1),
            ("juspay_wallet", 2),
            ("razorpay_upi", 1)
        ])
    );

    // The group-commit writes of this request: recorded and settled, each with its batch size.
    for statement in ["record", "settle"] {
        let writes: Vec<&Span> = trace
            .iter()
            .map(|(_, s)| s)
            .filter(|s| str_attr(&s.attributes, "profile_gateway.statement") == Some(statement))
            .collect();
        assert!(!writes.is_empty(), "no {statement} write in the trace");
        for w in writes {
            assert_eq!(w.name, format!("group commit {statement}"));
            assert_eq!(w.parent_span_id, server.span_id);
            assert_eq!(int_attr(&w.attributes, "db.operation.batch.size"), Some(1));
            assert_eq!(
                str_attr(&w.attributes, "db.system.name"),
                Some("postgresql")
            );
        }
    }

    // The 404's server span was exported under the trace id its problem body named.
    assert!(
        spans.iter().any(|(_, s)| hex(&s.trace_id) == new_trace
            && s.kind == SpanKind::Server as i32
            && s.name == "GET /profile/{user}/links"),
        "no server span for trace {new_trace}"
    );

    // No span, event or resource attribute holds a submitted value.
    for (resource, span) in &spans {
        for s in all_attribute_strings(resource, span) {
            for value in [MOBILE, EMAIL, FIRST, LAST, VPA, UPI_NUMBER, FINGERPRINT] {
                assert!(
                    !s.to_ascii_lowercase().contains(&value.to_ascii_lowercase()),
                    "span {} holds the submitted value {value}: {s}",
                    span.name
                );
            }
        }
    }

    // The logs name the exported trace ids.
    let logs = gw.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("request served") && l.contains(CALLER_TRACE)),
        "{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("request refused") && l.contains(&new_trace)),
        "{logs}"
    );
    let audit_trace: Option<String> =
        sqlx::query_scalar("select trace_id from changes order by created_at desc limit 1")
            .fetch_one(&gw.pool)
            .await
            .unwrap();
    assert_eq!(audit_trace.as_deref(), Some(CALLER_TRACE));
}

#[tokio::test]
async fn with_the_collector_down_requests_succeed_and_shutdown_is_bounded() {
    let sandbox = spawn_sandbox().await;
    for (name, collector) in [
        ("closed port", closed_port()),
        ("never answers", hanging_receiver().await),
    ] {
        let mut gw = start_gateway(
            &sandbox.base_url(),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", &collector)],
        )
        .await;
        let client = reqwest::Client::new();
        for _ in 0..3 {
            let resp = client
                .patch(format!("{}/profile/bob", gw.base))
                .bearer_auth(TOKEN)
                .header("idempotency-key", uuid::Uuid::new_v4().to_string())
                .json(&json!({"email_address": "bob.otel@example.org"}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{name}");
        }
        // The flush is bounded (3 s) whatever the collector does; the rest of the budget is the
        // drain of an idle gateway.
        let (exit, took) = gw.terminate(Duration::from_secs(25)).await;
        assert!(exit.success(), "{name}: {exit:?}\n{}", gw.logs());
        let logs = gw.logs();
        // Lost spans are never silent.
        assert!(
            logs.lines().any(|l| (l.contains("\"level\":\"WARN\"")
                || l.contains("\"level\":\"ERROR\""))
                && (l.to_ascii_lowercase().contains("export")
                    || l.to_ascii_lowercase().contains("flush"))),
            "{name}: no warning about the failed export after {took:?}:\n{logs}"
        );
    }
}

#[tokio::test]
async fn trace_context_propagation_upstream_can_be_turned_off() {
    let (collector, received) = otlp_receiver().await;
    let sandbox = spawn_sandbox().await;
    let mut gw = start_gateway(
        &sandbox.base_url(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str()),
            (
                "PROFILE_GATEWAY__TELEMETRY__PROPAGATE_TRACE_CONTEXT",
                "false",
            ),
        ],
    )
    .await;
    sandbox.clear_journal();
    let resp = reqwest::Client::new()
        .patch(format!("{}/profile/bob", gw.base))
        .bearer_auth(TOKEN)
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .json(&json!({"email_address": "bob.quiet@example.org"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (exit, _) = gw.terminate(Duration::from_secs(30)).await;
    assert!(exit.success(), "{}", gw.logs());
    let journal = sandbox.journal();
    assert!(!journal.is_empty());
    for e in &journal {
        assert!(!e.headers.contains_key("traceparent"), "{e:?}");
    }
    // The client spans are still exported.
    let clients = received
        .spans()
        .into_iter()
        .filter(|(_, s)| s.kind == SpanKind::Client as i32)
        .filter(|(_, s)| str_attr(&s.attributes, "profile_gateway.provider").is_some())
        .count();
    assert_eq!(clients, journal.len());
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// The value of the sample `name{labels}` in a text exposition (labels compared as a set).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, got) = match series.split_once('{') {
                Some((n, rest)) => {
                    let rest = rest.strip_suffix('}')?;
                    let got: BTreeMap<String, String> = rest
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .filter_map(|p| {
                            let (k, v) = p.split_once('=')?;
                            Some((k.to_string(), v.trim_matches('"').to_string()))
                        })
                        .collect();
                    (n, got)
                }
                None => (series, BTreeMap::new()),
            };
            (n == name && got == want).then(|| value.parse().ok())?
        })
}

async fn scrape(app: &TestApp) -> String {
    let base = app.metrics_base.as_ref().expect("metrics listener");
    let resp = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    resp.text().await.unwrap()
}

fn metrics_app(s: &mut profile_gateway::settings::Settings) {
    s.telemetry.metrics_listen = Some("127.0.0.1:0".into());
    s.providers.all_mut().breaker_failure_threshold = Some(2);
    s.providers.all_mut().breaker_open_ms = Some(600_000);
    s.providers.all_mut().retry_base_ms = Some(1);
    s.providers.all_mut().retry_cap_ms = Some(5);
    // The completer stays out of the way: the parked change keeps its counts still.
    s.changes.completer_interval_ms = 600_000;
}

/// promtool from Debian's `prometheus` package; `None` (and the test says so) when missing.
fn promtool() -> Option<std::path::PathBuf> {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        Some("promtool".into())
    } else {
        eprintln!("SKIPPED: promtool not found (apt-get install prometheus; .ci/run installs it)");
        None
    }
}

#[tokio::test]
async fn metrics_count_requests_attempts_retries_breakers_and_pass_promtool() {
    let app = spawn_app_with(metrics_app).await;
    // The API's own router does not serve metrics.
    assert_eq!(app.get("/metrics").await.status(), 404);

    // An applied change, then its replay.
    let key = uuid::Uuid::new_v4().to_string();
    let one = json!({"email_address": "alice.m1@example.com"});
    assert_eq!(app.patch_with_key("alice", &one, &key).await.status(), 200);
    let replay = app.patch_with_key("alice", &one, &key).await;
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    // One 503, then the retry applies it.
    app.sandbox
        .add_fault(FaultSpec::status("juspay_customer_update", 503, "", None).times(1));
    let two = json!({"email_address": "alice.m2@example.com"});
    assert_eq!(app.patch("alice", &two).await.status(), 200);
    // Razorpay keeps failing: two attempts open its breaker, the third fails fast, and the
    // change goes on in the background (202).
    app.sandbox
        .add_fault(FaultSpec::status("razorpay_upi_update", 503, "", None).times(20));
    let upi = json!({"upi": upi_body("alice.m3@okaxis", "change_vpa")});
    assert_eq!(app.patch("alice", &upi).await.status(), 202);
    // A refused request.
    let resp = app.patch("alice", &json!({"email_address": "nope"})).await;
    assert_eq!(resp.status(), 422);

    let text = scrape(&app).await;
    let v = |name: &str, labels: &[(&str, &str)]| sample(&text, name, labels);
    let patch = |status| {
        v(
            "http_server_request_duration_seconds_count",
            &[
                ("method", "PATCH"),
                ("route", "/profile/{user}"),
                ("status", status),
            ],
        )
    };
    assert_eq!(patch("200"), Some(3.0), "{text}");
    assert_eq!(patch("202"), Some(1.0));
    assert_eq!(patch("422"), Some(1.0));
    assert_eq!(
        v(
            "http_server_request_duration_seconds_count",
            &[("method", "GET"), ("route", "/metrics"), ("status", "404")]
        ),
        None,
        "an unmatched path is labelled `unmatched`, never by its raw path"
    );
    assert_eq!(
        v(
            "http_server_request_duration_seconds_count",
            &[("method", "GET"), ("route", "unmatched"), ("status", "404")]
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            "http_server_active_requests",
            &[("method", "PATCH"), ("route", "/profile/{user}")]
        ),
        Some(0.0)
    );
    let attempts = |provider, outcome| {
        v(
            "profile_gateway_upstream_attempt_duration_seconds_count",
            &[("provider", provider), ("outcome", outcome)],
        )
    };
    assert_eq!(attempts("juspay_customer", "applied"), Some(2.0));
    assert_eq!(
        attempts("juspay_customer", "upstream_unavailable"),
        Some(1.0)
    );
    // The third Razorpay attempt never left: the open breaker stopped it.
    assert_eq!(attempts("razorpay_upi", "upstream_unavailable"), Some(2.0));
    let per = |name, provider| v(name, &[("provider", provider)]);
    assert_eq!(
        per("profile_gateway_upstream_retries_total", "juspay_customer"),
        Some(1.0)
    );
    assert_eq!(
        per("profile_gateway_upstream_retries_total", "razorpay_upi"),
        Some(1.0)
    );
    assert_eq!(
        per("profile_gateway_upstream_retries_total", "juspay_wallet"),
        Some(0.0)
    );
    assert_eq!(
        per(
            "profile_gateway_upstream_retry_budget_denied_total",
            "razorpay_upi"
        ),
        Some(0.0)
    );
    assert_eq!(
        per("profile_gateway_upstream_breaker_open", "razorpay_upi"),
        Some(1.0)
    );
    assert_eq!(
        per("profile_gateway_upstream_breaker_open", "juspay_customer"),
        Some(0.0)
    );
    assert_eq!(
        v(
            "profile_gateway_upstream_breaker_transitions_total",
            &[("provider", "razorpay_upi"), ("to", "open")]
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            "profile_gateway_changes_finished_total",
            &[("status", "applied")]
        ),
        Some(2.0)
    );
    assert_eq!(
        v(
            "profile_gateway_changes_finished_total",
            &[("status", "failed")]
        ),
        Some(0.0)
    );
    assert_eq!(
        v(
            "profile_gateway_steps_total",
            &[("provider", "juspay_customer"), ("status", "applied")]
        ),
        Some(2.0)
    );
    assert_eq!(
        v(
            "profile_gateway_problems_total",
            &[("code", "validation_failed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        v("profile_gateway_idempotent_replays_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        v("profile_gateway_idempotency_conflicts_total", &[]),
        Some(0.0)
    );
    assert_eq!(v("profile_gateway_completer_backlog", &[]), Some(1.0));
    assert!(v("profile_gateway_completer_oldest_pending_age_seconds", &[]).unwrap() >= 0.0);
    assert_eq!(v("profile_gateway_lease_takeovers_total", &[]), Some(0.0));
    // Three new changes and the replay's attempt (answered as a known key), each a batch of one.
    assert_eq!(
        v(
            "profile_gateway_db_batch_size_count",
            &[("statement", "record")]
        ),
        Some(4.0)
    );
    assert!(
        v(
            "profile_gateway_db_batch_size_count",
            &[("statement", "settle")]
        )
        .unwrap()
            >= 3.0
    );
    assert!(
        v(
            "profile_gateway_db_commit_duration_seconds_count",
            &[("statement", "links")]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(v("profile_gateway_db_pool_max", &[]), Some(5.0));
    assert!(v("profile_gateway_db_pool_connections", &[("state", "idle")]).is_some());
    assert!(
        v(
            "profile_gateway_db_pool_connections",
            &[("state", "in_use")]
        )
        .is_some()
    );
    assert!(v("profile_gateway_db_pool_acquire_timeouts_total", &[]).is_some());
    assert!(
        v(
            "profile_gateway_audit_maintenance_last_success_timestamp_seconds",
            &[]
        )
        .is_some()
    );
    assert_eq!(
        v(
            "profile_gateway_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    // No label value names a user, a change or a request.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(!line.contains("alice"), "{line}");
        assert!(!line.contains("x-request-id"), "{line}");
    }

    if let Some(promtool) = promtool() {
        let mut check = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool: {said}"
        );
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_patch_count() {
    let Some(promtool) = promtool() else { return };
    let app = spawn_app_with(metrics_app).await;
    for i in 0..3 {
        let body = json!({"email_address": format!("bob.prom{i}@example.org")});
        assert_eq!(app.patch("bob", &body).await.status(), 200);
    }
    let target = app
        .metrics_base
        .as_ref()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: gateway\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut prometheus = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus (Debian package) runs");
    let server = format!("http://127.0.0.1:{port}");
    let query = r#"sum(http_server_request_duration_seconds_count{method="PATCH",route="/profile/{user}",status="200"})"#;
    let started = Instant::now();
    let mut last;
    let count = loop {
        let out = std::process::Command::new(&promtool)
            .args(["query", "instant", &server, query])
            .output()
            .unwrap();
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // `{} => 3 @[1764612345.678]`
        let value = last
            .split("=>")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            break v;
        }
        if started.elapsed() > Duration::from_secs(60) {
            break f64::NAN;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert_eq!(count, 3.0, "promtool query instant said: {last}");
}
