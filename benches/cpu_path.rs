//! The per-request CPU path of a PATCH without any I/O: parse and validate the body, plan the steps,
//! build the step requests, encode the three upstream request bodies, decode the three upstream
//! success bodies, and mask + HMAC the values for the audit event.
//!
//! `cargo bench --bench cpu_path` (about half a minute). Regressions here show up without a
//! database or upstreams; the end-to-end figures come from `bench/run`.

use criterion::{Criterion, criterion_group, criterion_main};
use profile_gateway::audit;
use profile_gateway::crypto::PiiHasher;
use profile_gateway::domain::{self, ProfileLinks, ProfilePatch, StepRequest, TimestampWindow};
use profile_gateway::providers::{juspay_customer, juspay_wallet, razorpay_upi};
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
    ProfileLinks {
        juspay_customer_id: Some("cst_bench".into()),
        juspay_wallet_ids: vec!["wlt_bench".into()],
        razorpay_customer_reference: Some("cref_bench".into()),
    }
}

const CUSTOMER_BODY: &[u8] = br#"{"id":"cst_bench","object":"customer","object_reference_id":"bench","mobile_number":"9812345678","mobile_country_code":"91","email_address":"bench@example.com","first_name":"Bench","last_name":"Mark","date_created":"2024-01-15T10:00:00+0000","last_updated":"2024-01-15T10:00:00+0000"}"#;
const WALLET_BODY: &[u8] = br#"{"id":"wlt_bench","object":"wallet_account","wallet":"PAYTM","token":null,"current_balance":null,"linked":false,"last_refreshed":null,"gateway_reference_id":null,"metadata":{"mobile_number":"9812345678"}}"#;
const UPI_BODY: &[u8] = br#"{"entity":"upi_number","upi_number":"9876543210","type":"mobile","status":"active","vpa":"bench@okaxis"}"#;

/// Encodes the upstream request body of one step, as the adapters do.
fn encode(request: &StepRequest) -> Vec<u8> {
    match request {
        StepRequest::JuspayCustomer {
            mobile_number,
            mobile_country_code,
            email_address,
            first_name,
            last_name,
            ..
        } => serde_urlencoded::to_string(juspay_customer::wire::UpdateCustomerForm {
            mobile_number: mobile_number.as_ref().map(|v| v.as_str()),
            mobile_country_code: mobile_country_code.as_ref().map(|v| v.as_str()),
            email_address: email_address.as_ref().map(|v| v.as_str()),
            first_name: first_name.as_ref().map(|v| v.as_str()),
            last_name: last_name.as_ref().map(|v| v.as_str()),
        })
        .unwrap()
        .into_bytes(),
        StepRequest::JuspayWallet { mobile_number, .. } => {
            serde_urlencoded::to_string(juspay_wallet::wire::UpdateMobileForm {
                command: "update",
                mobile_number: mobile_number.as_str(),
            })
            .unwrap()
            .into_bytes()
        }
        StepRequest::RazorpayUpi { upi, .. } => {
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
    let steps = domain::plan(&patch, &links).expect("the bench user has every link");
    assert_eq!(steps.len(), 3, "customer, one wallet, razorpay");
    let requests: Vec<StepRequest> = steps.iter().map(|s| s.request(&patch).unwrap()).collect();

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
            let steps = domain::plan(black_box(&patch), black_box(&links)).unwrap();
            steps
                .iter()
                .map(|s| s.request(&patch).unwrap())
                .collect::<Vec<_>>()
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
            let steps = domain::plan(&patch, &links).unwrap();
            let mut n = 0;
            for s in &steps {
                n += encode(&s.request(&patch).unwrap()).len();
            }
            n += decode_all();
            let values = audit::masked_values(&patch, &hasher, None);
            (n, values)
        })
    });
    g.finish();
}

criterion_group!(benches, cpu_path);
criterion_main!(benches);
