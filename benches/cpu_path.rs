//! The per-request CPU path of a PATCH without any I/O: parse and validate the body, plan the steps,
//! build the step requests, encode the three upstream request bodies, decode the three upstream
//! success bodies, and mask + HMAC the values for the audit event; and the audit chain's work per
//! change (the two events' values in jsonb's text form, their canonical encodings and SHA-256).
//!
//! `cargo bench --bench cpu_path` (about half a minute). Regressions here show up without a
//! database or upstreams; the end-to-end figures come from `bench/run`.
//!
//! (Over ~400 lines on purpose: one criterion group per stage of the request path, sharing one set of inputs; split, it would scatter them.)

use criterion::{Criterion, criterion_group, criterion_main};
use profile_gateway::audit;
use profile_gateway::crypto::PiiHasher;
use profile_gateway::domain::{self, ProfileLinks, ProfilePatch, StepRequest, TimestampWindow};
use profile_gateway::domain::{ChangeStatus, StepStatus};
use profile_gateway::domain::{Field, Target};
use profile_gateway::providers::http::TransportError;
use profile_gateway::providers::{Registry, juspay_customer, juspay_wallet, razorpay_upi};
use profile_gateway::telemetry::metrics::Metrics;
use profile_gateway::telemetry::otel;
use serde_json::{Value, json};
use std::hint::black_box;
use std::time::Duration;

fn full_body() -> Value {
    json!({
        "mobile_number": "9812345678",
        "mobile_country_code": "91",
        "email_address": "bench@example.com",
        "first_name": "Bench",
        "last_name": "Mark",
        "upi": {
            "upi_number": "9876543210",
            "vpa": "bench@okaxis",
            "action": "change_vpa",
            "consent": true,
            "device": {"fingerprint": "3f1c0d2e9a", "fingerprint_timestamp": 1767225600000u64}
        }
    })
}

/// The body as it arrives on the wire (the handler parses bytes into a `Value` first).
fn full_body_bytes() -> Vec<u8> {
    serde_json::to_vec(&full_body()).unwrap()
}

fn links() -> ProfileLinks {
    ProfileLinks::empty(&Registry::standard().link_members())
        .with(Target::JUSPAY_CUSTOMER, &["cst_bench"])
        .with(Target::JUSPAY_WALLET, &["wlt_bench"])
        .with(Target::RAZORPAY_UPI, &["cref_bench"])
}

const CUSTOMER_BODY: &[u8] = br#"{"id":"cst_bench","object":"customer","object_reference_id":"bench","mobile_number":"9812345678","mobile_country_code":"91","email_address":"bench@example.com","first_name":"Bench","last_name":"Mark","date_created":"2024-01-15T10:00:00+0000","last_updated":"2024-01-15T10:00:00+0000"}"#;
const WALLET_BODY: &[u8] = br#"{"id":"wlt_bench","object":"wallet_account","wallet":"PAYTM","token":null,"current_balance":null,"linked":false,"last_refreshed":null,"gateway_reference_id":null,"metadata":{"mobile_number":"9812345678"}}"#;
const UPI_BODY: &[u8] = br#"{"entity":"upi_number","upi_number":"9876543210","type":"mobile","status":"active","vpa":"bench@okaxis"}"#;

/// Encodes the upstream request body of one step, as the adapters do.
fn encode(request: &StepRequest<'_>) -> Vec<u8> {
    let v = |f| request.value(f);
    match request.step.target {
        Target::JUSPAY_CUSTOMER => {
            serde_urlencoded::to_string(juspay_customer::wire::UpdateCustomerForm {
                mobile_number: v(Field::MobileNumber),
                mobile_country_code: v(Field::MobileCountryCode),
                email_address: v(Field::EmailAddress),
                first_name: v(Field::FirstName),
                last_name: v(Field::LastName),
            })
            .unwrap()
            .into_bytes()
        }
        Target::JUSPAY_WALLET => {
            serde_urlencoded::to_string(juspay_wallet::wire::UpdateMobileForm {
                command: "update",
                mobile_number: v(Field::MobileNumber).unwrap(),
            })
            .unwrap()
            .into_bytes()
        }
        _ => {
            let upi = request.patch.upi.as_ref().unwrap();
            serde_json::to_vec(&razorpay_upi::wire::UpdateUpiNumber {
                upi_number: upi.upi_number.as_str(),
                vpa: upi.vpa.as_str(),
                action: upi.action.as_str(),
                consent: true,
            })
            .unwrap()
        }
    }
}

fn decode_all() -> usize {
    let c: juspay_customer::wire::Customer =
        serde_json::from_slice(black_box(CUSTOMER_BODY)).unwrap();
    let w: juspay_wallet::wire::WalletAccount =
        serde_json::from_slice(black_box(WALLET_BODY)).unwrap();
    let u: razorpay_upi::wire::UpiNumberEntity =
        serde_json::from_slice(black_box(UPI_BODY)).unwrap();
    c.mobile_number.map_or(0, |s| s.len())
        + w.metadata
            .and_then(|m| m.mobile_number)
            .map_or(0, |s| s.len())
        + u.vpa.map_or(0, |s| s.len())
}

fn cpu_path(c: &mut Criterion) {
    let body = full_body();
    let bytes = full_body_bytes();
    let links = links();
    let hasher = PiiHasher::new("k1", [7u8; 32]);
    let patch =
        ProfilePatch::parse(&body, &TimestampWindow::unbounded()).expect("the bench body is valid");
    let specs = Registry::standard().specs();
    let steps = domain::plan(&patch, &links, &specs).expect("the bench user has every link");
    assert_eq!(steps.len(), 3, "customer, one wallet, razorpay");
    let requests: Vec<StepRequest> = steps
        .iter()
        .map(|step| StepRequest {
            step,
            patch: &patch,
        })
        .collect();

    let mut g = c.benchmark_group("cpu_path");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);

    g.bench_function("parse_validate", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_slice(black_box(&bytes)).unwrap();
            ProfilePatch::parse(&v, &TimestampWindow::unbounded()).unwrap()
        })
    });
    g.bench_function("plan_and_requests", |b| {
        b.iter(|| {
            let steps = domain::plan(black_box(&patch), black_box(&links), &specs).unwrap();
            steps
                .iter()
                .map(|step| {
                    black_box(StepRequest {
                        step,
                        patch: &patch,
                    });
                })
                .count()
        })
    });
    g.bench_function("encode_3_upstream_bodies", |b| {
        b.iter(|| {
            black_box(&requests)
                .iter()
                .map(|r| encode(r).len())
                .sum::<usize>()
        })
    });
    g.bench_function("decode_3_upstream_bodies", |b| b.iter(decode_all));
    g.bench_function("audit_masked_values", |b| {
        b.iter(|| audit::masked_values(black_box(&patch), &hasher, None))
    });
    g.bench_function("whole_path", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_slice(black_box(&bytes)).unwrap();
            let patch = ProfilePatch::parse(&v, &TimestampWindow::unbounded()).unwrap();
            let steps = domain::plan(&patch, &links, &specs).unwrap();
            let mut n = 0;
            for step in &steps {
                n += encode(&StepRequest {
                    step,
                    patch: &patch,
                })
                .len();
            }
            n += decode_all();
            let values = audit::masked_values(&patch, &hasher, None);
            (n, values)
        })
    });
    g.finish();
}

/// A key of each accepted algorithm: Ed25519 and P-256 from random bytes, RSA-2048 from the
/// `openssl` CLI (skipped when it is missing).
fn bench_keys() -> Vec<(
    &'static str,
    jsonwebtoken::Algorithm,
    jsonwebtoken::EncodingKey,
)> {
    use jsonwebtoken::{Algorithm, EncodingKey};
    use rand::RngCore;
    let mut rng = rand::thread_rng();
    let mut ed = hex::decode("302e020100300506032b657004220420").unwrap();
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    ed.extend_from_slice(&seed);
    let mut ec =
        hex::decode("3041020100301306072a8648ce3d020106082a8648ce3d030107042730250201010420")
            .unwrap();
    rng.fill_bytes(&mut seed);
    seed[0] &= 0x7f;
    ec.extend_from_slice(&seed);
    let mut keys = vec![
        ("EdDSA", Algorithm::EdDSA, EncodingKey::from_ed_der(&ed)),
        ("ES256", Algorithm::ES256, EncodingKey::from_ec_der(&ec)),
    ];
    let rsa = std::process::Command::new("sh")
        .args([
            "-c",
            "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 2>/dev/null | openssl pkey -traditional -outform DER",
        ])
        .output();
    match rsa {
        Ok(out) if out.status.success() && !out.stdout.is_empty() => keys.push((
            "RS256",
            Algorithm::RS256,
            EncodingKey::from_rsa_der(&out.stdout),
        )),
        _ => eprintln!("openssl not available: skipping the RS256 case"),
    }
    keys
}

/// Verifying a caller's JWT with the issuer's keys already cached: the CPU cost a JWT caller adds
/// to each request (signature, claims, issuer and audience rules; no fetch).
fn jwt_verify(c: &mut Criterion) {
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use profile_gateway::auth::jwks::Issuers;
    use profile_gateway::settings::IssuerSettings;
    let keys = bench_keys();
    let set = JwkSet {
        keys: keys
            .iter()
            .map(|(kid, alg, key)| {
                let mut jwk = Jwk::from_encoding_key(key, *alg).unwrap();
                jwk.common.key_id = Some(kid.to_string());
                jwk
            })
            .collect(),
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, serde_json::to_vec(&set).unwrap()).unwrap();
    let issuer = "https://kubernetes.default.svc.cluster.local";
    let issuers = Issuers::build(&[IssuerSettings {
        issuer: issuer.into(),
        audiences: vec!["profile-gateway".into()],
        jwks_url: None,
        ca_file: None,
        jwks_bearer_token_file: None,
        jwks_file: Some(path),
        algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
        leeway_s: 30,
        refresh_interval_s: 3600,
        min_refresh_s: 3600,
    }])
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "iss": issuer, "sub": "system:serviceaccount:checkout:checkout-app",
        "aud": ["profile-gateway"], "iat": now, "nbf": now, "exp": now + 3600,
        "kubernetes.io": {"namespace": "checkout", "serviceaccount": {"name": "checkout-app"}}
    });
    let mut g = c.benchmark_group("jwt_verify_cached_keys");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    for (kid, alg, key) in &keys {
        let mut header = jsonwebtoken::Header::new(*alg);
        header.kid = Some(kid.to_string());
        let token = jsonwebtoken::encode(&header, &claims, key).unwrap();
        // The first verification loads the keys; the measured ones use the cache.
        rt.block_on(issuers.verify(&token, None)).unwrap();
        g.bench_function(*kid, |b| {
            b.iter(|| {
                rt.block_on(issuers.verify(black_box(&token), None))
                    .unwrap()
            })
        });
    }
    g.finish();
}

/// The tracing and metrics work of one 3-step PATCH, as the gateway does it: the server span
/// (parent extracted, trace id read), one client span per upstream call with `traceparent`
/// injected and its outcome recorded, a span per group-commit write (record, settle), and the
/// metrics the request, its attempts, its writes and its final state update.
fn request_telemetry(metrics: &Metrics, incoming: &axum::http::HeaderMap) -> usize {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::info_span!(
        target: "profile_gateway::telemetry",
        "request",
        otel.name = "PATCH /profile/{user}",
        otel.kind = "server",
        method = "PATCH",
        path = "/profile/bench",
        http.route = "/profile/{user}",
        http.response.status_code = tracing::field::Empty,
        request_id = "bench-request-0001",
        trace_id = tracing::field::Empty,
    );
    let _ = span.set_parent(otel::extract(incoming));
    let trace_id = otel::trace_id(&span).unwrap_or_default();
    span.record("trace_id", trace_id.as_str());
    let active = metrics
        .http_active
        .with_label_values(&["PATCH", "/profile/{user}"]);
    active.inc();
    let mut injected = 0;
    span.in_scope(|| {
        for statement in ["record", "settle"] {
            let w = tracing::info_span!(
                target: "profile_gateway::changes::batcher",
                "db.write",
                otel.name = "group commit",
                otel.kind = "client",
                db.system.name = "postgresql",
                db.operation.batch.size = 1i64,
                profile_gateway.statement = statement,
            );
            w.in_scope(|| {});
            metrics.db_write(statement, 1, Duration::from_micros(800));
        }
        for target in [
            Target::JUSPAY_CUSTOMER,
            Target::JUSPAY_WALLET,
            Target::RAZORPAY_UPI,
        ] {
            let mut request = reqwest::Request::new(
                reqwest::Method::POST,
                "http://127.0.0.1:8090/customers/cst_bench".parse().unwrap(),
            );
            let client = otel::upstream_span(target.as_str(), &mut request);
            injected += request.headers().len();
            client.in_scope(|| {});
            otel::upstream_outcome::<TransportError>(&client, Ok(200));
            metrics.upstream_attempt(target, "applied", Duration::from_millis(3));
        }
    });
    metrics.change_finished(
        ChangeStatus::Applied,
        &[
            (Target::JUSPAY_CUSTOMER, StepStatus::Applied),
            (Target::JUSPAY_WALLET, StepStatus::Applied),
            (Target::RAZORPAY_UPI, StepStatus::Applied),
        ],
    );
    span.record("http.response.status_code", 200i64);
    metrics
        .http_duration
        .with_label_values(&["PATCH", "/profile/{user}", "200"])
        .observe(0.012);
    active.dec();
    injected
}

/// The subscriber `telemetry::init` builds, without the log layer (the same whether or not
/// traces are exported): the OpenTelemetry layer filtered to the gateway's own spans.
fn traced(traces: &otel::Traces) -> tracing::Dispatch {
    assert!(
        traces.exporting,
        "without export the gateway installs no OpenTelemetry layer"
    );
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    let spans = tracing_subscriber::filter::Targets::new()
        .with_target("profile_gateway", tracing::Level::INFO);
    // The SDK's own warnings (a dropped span, a failed export) stay visible.
    let sdk = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("opentelemetry_sdk", tracing::Level::WARN)
                .with_target("opentelemetry_otlp", tracing::Level::WARN),
        );
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(traces.tracer())
                .with_filter(spans),
        )
        .with(sdk);
    tracing::Dispatch::new(subscriber)
}

/// Answers OTLP exports with 200, counting the bytes, so "export on" pays for real encoding and
/// HTTP (on the batch processor's thread and the runtime, beside the measured thread).
async fn otlp_sink() -> String {
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(|body: axum::body::Bytes| async move {
            black_box(body.len());
            ""
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn telemetry(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let sink = rt.block_on(otlp_sink());
    let no_parent = axum::http::HeaderMap::new();
    let mut g = c.benchmark_group("telemetry");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);

    // No subscriber and no metrics: what the request path costs without any of it.
    g.bench_function("none", |b| {
        b.iter(|| {
            let span = tracing::info_span!(target: "profile_gateway", "request");
            span.in_scope(|| black_box(1))
        })
    });
    let metrics = Metrics::new(16);
    // No OTLP endpoint (the default): a subscriber without the OpenTelemetry layer, as
    // `telemetry::init` installs it then; metrics as always.
    let off = tracing::Dispatch::new(tracing_subscriber::registry());
    tracing::dispatcher::with_default(&off, || {
        g.bench_function("export_off", |b| {
            b.iter(|| request_telemetry(&metrics, black_box(&no_parent)))
        });
    });
    // An OTLP endpoint: every span recorded, queued and exported.
    // SAFETY: set before any other thread of this process reads the environment.
    unsafe { std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &sink) };
    let on = {
        let _entered = rt.enter();
        otel::Traces::from_env(true).unwrap()
    };
    assert!(on.exporting);
    tracing::dispatcher::with_default(&traced(&on), || {
        g.bench_function("export_on", |b| {
            b.iter(|| request_telemetry(&metrics, black_box(&no_parent)))
        });
    });
    g.finish();
    rt.block_on(on.shutdown(Duration::from_secs(3)));
}

/// A three-step change's two events as the write path builds and chains them: `change_requested`
/// with the masked values, `change_completed` with every attempt (audit::steps_values_text).
fn chain_events(hasher: &PiiHasher, patch: &ProfilePatch) -> usize {
    use profile_gateway::audit::verify::{self, EventRow};
    use profile_gateway::domain::change::StepOutcome;
    let outcomes: Vec<StepOutcome> = ["juspay_customer", "juspay_wallet", "razorpay_upi"]
        .into_iter()
        .enumerate()
        .map(|(i, target)| StepOutcome {
            step_no: i as i32 + 1,
            attempt: 1,
            status: StepStatus::Applied,
            error: None,
            confirmed_by_read_back: false,
            target: target.into(),
            upstream_ref: format!("ref_bench_{i}"),
            fields: vec!["mobile_number".into()],
        })
        .collect();
    let row = |event_type: &str, values_text: String, prev_hash: String, seq: i64| EventRow {
        id: 0,
        occurred_at: chrono::DateTime::from_timestamp_micros(1_767_225_600_123_456).unwrap(),
        user_id: "bench-0001".into(),
        seq,
        prev_hash,
        hash: String::new(),
        event_type: event_type.into(),
        caller: "bench".into(),
        outcome: "accepted".into(),
        change_id: Some(uuid::Uuid::from_u128(0x0123_4567_89ab_cdef)),
        step_no: None,
        target: None,
        upstream_ref: None,
        fields: vec!["mobile_number".into(), "email_address".into()],
        fields_malformed: false,
        values_text,
        hmac_key_id: Some("k1".into()),
        error_code: None,
        request_id: Some("req-0123456789".into()),
        trace_id: None,
        caller_addr: Some("10.0.0.7".into()),
        actor_text: Some(r#"{"auth": "token", "sub": "bench"}"#.into()),
        format: Some(3),
    };
    let requested = row(
        "change_requested",
        verify::jsonb_text(&audit::masked_values(patch, hasher, None)),
        verify::GENESIS.into(),
        1,
    );
    let h1 = verify::event_hash(&requested);
    let completed = row(
        "change_completed",
        audit::steps_values_text(&outcomes),
        h1,
        2,
    );
    verify::event_hash(&completed).len()
}

fn audit_chain(c: &mut Criterion) {
    let hasher = PiiHasher::new("k1", [7u8; 32]);
    let patch = ProfilePatch::parse(&full_body(), &TimestampWindow::unbounded())
        .expect("the bench body is valid");
    let mut g = c.benchmark_group("audit_chain");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    g.bench_function("two_events_per_change", |b| {
        b.iter(|| chain_events(&hasher, black_box(&patch)))
    });
    g.finish();
}

criterion_group!(benches, cpu_path, jwt_verify, telemetry, audit_chain);
criterion_main!(benches);
