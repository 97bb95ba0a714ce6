//! The upstream sandbox: strictness, state, faults, journal and admin API, over real HTTP.
//!
//! (Over ~400 lines on purpose: one test per documented strictness rule, fault kind and admin route of the simulator; split, it would scatter them.)

use std::time::{Duration, Instant};

use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use upstream_sandbox::{
    self as sandbox, DEMO_JUSPAY_API_KEY, DEMO_JUSPAY_MERCHANT_ID, DEMO_RAZORPAY_KEY_ID,
    DEMO_RAZORPAY_KEY_SECRET, FaultKind, FaultSpec, SandboxConfig, SandboxHandle, SeedData,
    UpiStatus,
};

const FORM: &str = "application/x-www-form-urlencoded";
const UPI_PATH: &str = "/v1/upi/tpap/upi_number";

async fn start() -> SandboxHandle {
    start_with(SandboxConfig::default()).await
}

async fn start_with(config: SandboxConfig) -> SandboxHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    sandbox::spawn(config, listener).await.expect("spawn")
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

fn juspay(sb: &SandboxHandle, method: reqwest::Method, path: &str) -> RequestBuilder {
    client()
        .request(method, format!("{}{path}", sb.base_url()))
        .basic_auth(DEMO_JUSPAY_API_KEY, Some(""))
        .header("x-merchantid", DEMO_JUSPAY_MERCHANT_ID)
}

fn wallet_update(sb: &SandboxHandle, wallet: &str, body: &str) -> RequestBuilder {
    juspay(sb, reqwest::Method::POST, &format!("/wallets/{wallet}"))
        .header("version", "2023-06-30")
        .header("content-type", FORM)
        .body(body.to_owned())
}

fn customer_update(sb: &SandboxHandle, customer: &str, body: &str) -> RequestBuilder {
    juspay(sb, reqwest::Method::POST, &format!("/customers/{customer}"))
        .header("content-type", FORM)
        .body(body.to_owned())
}

fn razorpay(
    sb: &SandboxHandle,
    method: reqwest::Method,
    customer_reference: &str,
) -> RequestBuilder {
    client()
        .request(method, format!("{}{UPI_PATH}", sb.base_url()))
        .basic_auth(DEMO_RAZORPAY_KEY_ID, Some(DEMO_RAZORPAY_KEY_SECRET))
        .header("x-device-fingerprint", "3f1c0d")
        .header("x-device-fingerprint-timestamp", "1496918882000")
        .header("x-customer-reference", customer_reference)
}

fn upi_update(sb: &SandboxHandle, customer_reference: &str, body: Value) -> RequestBuilder {
    razorpay(sb, reqwest::Method::PATCH, customer_reference).json(&body)
}

fn change_vpa(number: &str, vpa: &str) -> Value {
    json!({"upi_number": number, "vpa": vpa, "action": "change_vpa", "consent": true})
}

async fn send(req: RequestBuilder) -> (StatusCode, Value) {
    let response = req.send().await.expect("send");
    let status = response.status();
    let body = response.json().await.expect("json body");
    (status, body)
}

fn assert_juspay_error(body: &Value, error_code: &str) {
    assert_eq!(body["status"], "invalid_request_error", "{body}");
    assert_eq!(body["error_code"], error_code, "{body}");
    assert!(body["error_message"].is_string(), "{body}");
}

fn assert_razorpay_error(body: &Value, reason: &str, field: Option<&str>) {
    let error = &body["error"];
    assert_eq!(error["code"], "BAD_REQUEST_ERROR", "{body}");
    assert!(error["description"].is_string(), "{body}");
    assert_eq!(error["reason"], reason, "{body}");
    assert_eq!(
        error["field"],
        field.map_or(Value::Null, Value::from),
        "{body}"
    );
    for member in ["source", "step"] {
        assert_eq!(error[member], "NA", "{body}");
    }
    assert_eq!(error["metadata"], json!({}), "{body}");
}

#[tokio::test]
async fn sandbox_wallet_update_changes_state_and_reads_return_it() {
    let sb = start().await;
    let (status, body) = send(wallet_update(
        &sb,
        "wlt_demo_alice_paytm",
        "command=update&mobile_number=77777777",
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({
            "id": "wlt_demo_alice_paytm", "object": "wallet_account", "wallet": "PAYTM",
            "token": null, "current_balance": null, "linked": false, "last_refreshed": null,
            "metadata": {"mobile_number": "77777777"}, "gateway_reference_id": null
        })
    );

    let (status, body) = send(juspay(
        &sb,
        reqwest::Method::GET,
        "/wallets/wlt_demo_alice_paytm",
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["metadata"]["mobile_number"], "77777777");

    // By object_reference_id; the other wallet kept its number.
    let (status, body) = send(juspay(
        &sb,
        reqwest::Method::GET,
        "/customers/alice/wallets",
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["count"], 2);
    let numbers: Vec<(&str, &str)> = body["list"]
        .as_array()
        .expect("list")
        .iter()
        .map(|w| {
            (
                w["id"].as_str().unwrap_or_default(),
                w["metadata"]["mobile_number"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        numbers,
        [
            ("wlt_demo_alice_paytm", "77777777"),
            ("wlt_demo_alice_mobikwik", "9876543210")
        ]
    );
    let counters = sb.counters();
    assert_eq!(counters["juspay_wallet_update"].calls, 1);
    assert_eq!(counters["juspay_wallet_update"].applied, 1);
    assert_eq!(counters["juspay_wallet_get"].applied, 0);
}

#[tokio::test]
async fn sandbox_customer_update_by_reference_and_field_rules() {
    let sb = start().await;
    let (status, body) = send(customer_update(
        &sb,
        "alice",
        "email_address=alice.l%2Bwork%40example.org&first_name=Alice-May&mobile_country_code=65",
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], "cst_demo_alice");
    assert_eq!(body["object"], "customer");
    assert_eq!(body["object_reference_id"], "alice");
    assert_eq!(body["email_address"], "alice.l+work@example.org");
    for member in ["date_created", "last_updated", "last_name", "mobile_number"] {
        assert!(body[member].is_string(), "{member} in {body}");
    }

    let (_, read) = send(juspay(
        &sb,
        reqwest::Method::GET,
        "/customers/cst_demo_alice",
    ))
    .await;
    assert_eq!(read["first_name"], "Alice-May");
    assert_eq!(read["mobile_country_code"], "65");
    assert_eq!(read["last_name"], "Liddell");

    let (status, body) = send(customer_update(
        &sb,
        "cst_demo_alice",
        "email_address=.alice%40example.com&first_name=Al%20ice&mobile_number=12ab&mobile_country_code=12345",
    ))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_juspay_error(&body, "invalid_input");
    let info = &body["error_info"];
    assert_eq!(info["code"], "INVALID_INPUT");
    assert_eq!(info["category"], "USER_ERROR");
    assert!(info["user_message"].is_string() && info["developer_message"].is_string());
    let fields: Vec<&str> = info["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| {
            assert!(f["reason"].is_string());
            f["field_name"].as_str().unwrap_or_default()
        })
        .collect();
    assert_eq!(
        fields,
        [
            "mobile_number",
            "mobile_country_code",
            "email_address",
            "first_name"
        ]
    );
    let (_, read) = send(juspay(&sb, reqwest::Method::GET, "/customers/alice")).await;
    assert_eq!(
        read["email_address"], "alice.l+work@example.org",
        "rejected update left no trace"
    );

    for bad_email in ["a..b%40x.com", "alice_%40x.com", "al%28ice%40x.com"] {
        let (status, _) = send(customer_update(
            &sb,
            "bob",
            &format!("email_address={bad_email}"),
        ))
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad_email}");
    }

    let (status, body) = send(customer_update(&sb, "bob", "nickname=b")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "at least one field");
    assert_juspay_error(&body, "invalid_request");
}

#[tokio::test]
async fn sandbox_juspay_auth_and_merchant_rules() {
    let sb = start().await;
    let url = format!("{}/customers/cst_demo_bob", sb.base_url());
    let attempts = [
        client()
            .get(&url)
            .header("x-merchantid", DEMO_JUSPAY_MERCHANT_ID),
        client()
            .get(&url)
            .basic_auth("wrong_key", Some(""))
            .header("x-merchantid", DEMO_JUSPAY_MERCHANT_ID),
        client()
            .get(&url)
            .basic_auth(DEMO_JUSPAY_API_KEY, Some("not-empty"))
            .header("x-merchantid", DEMO_JUSPAY_MERCHANT_ID),
        client()
            .get(&url)
            .basic_auth(DEMO_JUSPAY_API_KEY, Some(""))
            .header("x-merchantid", "someone_else"),
        // A second, different copy of the header is not ignored.
        juspay(&sb, reqwest::Method::GET, "/customers/cst_demo_bob")
            .header("x-merchantid", "someone_else"),
    ];
    for (i, attempt) in attempts.into_iter().enumerate() {
        let (status, body) = send(attempt).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {i}");
        assert_juspay_error(&body, "access_denied");
    }

    let no_merchant = client().get(&url).basic_auth(DEMO_JUSPAY_API_KEY, Some(""));
    let (status, body) = send(no_merchant).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_juspay_error(&body, "invalid_request");

    // Optional on the wallet API.
    let wallet = client()
        .get(format!("{}/wallets/wlt_demo_bob_paytm", sb.base_url()))
        .basic_auth(DEMO_JUSPAY_API_KEY, None::<&str>);
    assert_eq!(send(wallet).await.0, StatusCode::OK);

    // Without a configured merchant id the header is not checked at all.
    let sb = start_with(SandboxConfig {
        juspay_merchant_id: None,
        ..SandboxConfig::default()
    })
    .await;
    let anonymous_merchant = client()
        .get(format!("{}/customers/bob", sb.base_url()))
        .basic_auth(DEMO_JUSPAY_API_KEY, Some(""));
    assert_eq!(send(anonymous_merchant).await.0, StatusCode::OK);
}

#[tokio::test]
async fn sandbox_juspay_wallet_update_needs_version_form_and_command() {
    let sb = start().await;
    let url = "/wallets/wlt_demo_bob_paytm";
    let ok_body = "command=update&mobile_number=77777777";
    let bad_versions = [None, Some("2019-09-16"), Some("2019-9-17"), Some("latest")];
    for version in bad_versions {
        let mut req = juspay(&sb, reqwest::Method::POST, url)
            .header("content-type", FORM)
            .body(ok_body);
        if let Some(v) = version {
            req = req.header("version", v);
        }
        let (status, body) = send(req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "version {version:?}");
        assert_juspay_error(&body, "invalid_request");
    }

    let json_body = juspay(&sb, reqwest::Method::POST, url)
        .header("version", "2019-09-17")
        .json(&json!({"command": "update", "mobile_number": "77777777"}));
    let (status, body) = send(json_body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "JSON instead of a form");
    assert_juspay_error(&body, "invalid_request");

    for body in [
        "command=delete&mobile_number=77777777",
        "mobile_number=77777777",
    ] {
        let (status, err) = send(wallet_update(&sb, "wlt_demo_bob_paytm", body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(err["error_info"]["fields"][0]["field_name"], "command");
    }
    let (status, err) = send(wallet_update(
        &sb,
        "wlt_demo_bob_paytm",
        "command=update&mobile_number=123",
    ))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        err["error_info"]["fields"][0]["field_name"],
        "mobile_number"
    );

    let (status, body) = send(wallet_update(&sb, "wlt_nope", ok_body)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        json!({"status": "invalid_request_error", "error_code": "object_not_found",
               "error_message": "Cannot find what you are looking for"})
    );
    let (status, _) = send(juspay(&sb, reqwest::Method::GET, "/customers/nobody")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    assert_eq!(sb.counters()["juspay_wallet_update"].applied, 0);
    let state = sb.state();
    let bob = state
        .juspay_wallets
        .iter()
        .find(|w| w.id == "wlt_demo_bob_paytm");
    assert_eq!(
        bob.and_then(|w| w.mobile_number.as_deref()),
        Some("9123456780")
    );
}

#[tokio::test]
async fn sandbox_razorpay_actions_change_state() {
    let sb = start().await;
    let (status, first) = send(upi_update(
        &sb,
        "cref_demo_alice",
        change_vpa("9876543210", "alice.new@okicici"),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let id = first["upi_transaction_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!id.is_empty());
    let expected = json!({"entity": "upi_number", "upi_transaction_id": id, "upi_number": "9876543210",
                          "type": "mobile", "status": "active", "vpa": "alice.new@okicici"});
    assert_eq!(first, expected);

    let (_, list) = send(razorpay(&sb, reqwest::Method::GET, "cref_demo_alice")).await;
    assert_eq!(
        list,
        json!({"entity": "collection", "count": 1, "upi_numbers": [
            {"number": "9876543210", "type": "mobile", "vpa": "alice.new@okicici", "status": "active"}]})
    );

    let action = |action: &str| json!({"upi_number": "912345678", "vpa": "bob@okhdfc", "action": action, "consent": true});
    for (name, status) in [
        ("inactivate", "inactive"),
        ("activate", "active"),
        ("deregister", "deregistered"),
    ] {
        let (code, body) = send(upi_update(&sb, "cref_demo_bob", action(name))).await;
        assert_eq!(code, StatusCode::OK, "{name}: {body}");
        assert_eq!(body["status"], status);
        assert_eq!(body["type"], "numeric");
        assert_ne!(
            body["upi_transaction_id"],
            Value::from(id.as_str()),
            "fresh id each call"
        );
    }
    for name in ["activate", "change_vpa"] {
        let (code, body) = send(upi_update(&sb, "cref_demo_bob", action(name))).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{name} after deregister");
        assert_razorpay_error(&body, "upi_number_deregistered", Some("action"));
    }
    let bob = sb
        .state()
        .razorpay_customers
        .into_iter()
        .find(|c| c.customer_reference == "cref_demo_bob");
    assert_eq!(
        bob.map(|c| c.upi_numbers[0].status),
        Some(UpiStatus::Deregistered)
    );

    let (_, list) = send(razorpay(&sb, reqwest::Method::GET, "cref_unknown")).await;
    assert_eq!(list["count"], 0);
    assert_eq!(sb.counters()["razorpay_upi_update"].applied, 4);
}

#[tokio::test]
async fn sandbox_razorpay_strictness() {
    let sb = start().await;
    let url = format!("{}{UPI_PATH}", sb.base_url());
    let good = change_vpa("9876543210", "alice@okicici");

    let unauthenticated = [
        client().patch(&url).json(&good),
        client()
            .patch(&url)
            .basic_auth(DEMO_RAZORPAY_KEY_ID, Some("wrong"))
            .json(&good),
        // Right credentials, wrong scheme word.
        {
            let creds = base64_basic(DEMO_RAZORPAY_KEY_ID, DEMO_RAZORPAY_KEY_SECRET);
            client()
                .patch(&url)
                .header("authorization", format!("basic {creds}"))
                .json(&good)
        },
    ];
    for (i, req) in unauthenticated.into_iter().enumerate() {
        let (status, body) = send(req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {i}");
        assert_eq!(
            body,
            json!({"error": {"code": "BAD_REQUEST_ERROR", "description": "The api key provided is invalid",
                   "field": null, "source": "NA", "step": "NA", "reason": "NA", "metadata": {}}})
        );
    }

    for missing in [
        "x-device-fingerprint",
        "x-device-fingerprint-timestamp",
        "x-customer-reference",
    ] {
        let mut req = client()
            .patch(&url)
            .basic_auth(DEMO_RAZORPAY_KEY_ID, Some(DEMO_RAZORPAY_KEY_SECRET))
            .json(&good);
        for header in [
            "x-device-fingerprint",
            "x-device-fingerprint-timestamp",
            "x-customer-reference",
        ] {
            if header != missing {
                req = req.header(header, "1496918882000");
            }
        }
        let (status, body) = send(req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "without {missing}");
        assert_eq!(body["error"]["field"], missing);
    }
    let bad_timestamp = client()
        .patch(&url)
        .basic_auth(DEMO_RAZORPAY_KEY_ID, Some(DEMO_RAZORPAY_KEY_SECRET))
        .header("x-device-fingerprint", "3f1c0d")
        .header("x-device-fingerprint-timestamp", "2017-06-08T10:48:02Z")
        .header("x-customer-reference", "cref_demo_alice")
        .json(&good);
    let (status, body) = send(bad_timestamp).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "x-device-fingerprint-timestamp");
    let twice = upi_update(&sb, "cref_demo_alice", good.clone())
        .header("x-customer-reference", "cref_demo_bob");
    let (status, body) = send(twice).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "x-customer-reference");

    let form = razorpay(&sb, reqwest::Method::PATCH, "cref_demo_alice")
        .header("content-type", FORM)
        .body("upi_number=9876543210&vpa=alice%40okicici&action=change_vpa&consent=true");
    let (status, body) = send(form).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "form body");
    assert_razorpay_error(&body, "input_validation_failed", None);

    let cases = [
        (
            json!({"upi_number": "9876543210", "vpa": "alice@okicici", "action": "change_vpa", "consent": false}),
            "consent_not_given",
            Some("consent"),
        ),
        (
            json!({"upi_number": "9876543210", "vpa": "alice@okicici", "action": "change_vpa"}),
            "input_validation_failed",
            Some("consent"),
        ),
        (
            json!({"upi_number": "9876543210", "vpa": "alice@okicici", "action": "change_vpa", "consent": "true"}),
            "input_validation_failed",
            Some("consent"),
        ),
        (
            json!({"upi_number": "9876543210", "vpa": "alice@okicici", "action": "delete", "consent": true}),
            "input_validation_failed",
            Some("action"),
        ),
        (
            json!({"vpa": "alice@okicici", "action": "change_vpa", "consent": true}),
            "input_validation_failed",
            Some("upi_number"),
        ),
        (
            change_vpa("9876543210", "alice-at-okicici"),
            "invalid_vpa",
            Some("vpa"),
        ),
        (
            change_vpa("1111111111", "alice@okicici"),
            "upi_number_not_found",
            Some("upi_number"),
        ),
        // Bob's number does not belong to Alice.
        (
            change_vpa("912345678", "alice@okicici"),
            "upi_number_not_found",
            Some("upi_number"),
        ),
    ];
    for (body, reason, field) in cases {
        let (status, err) = send(upi_update(&sb, "cref_demo_alice", body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_razorpay_error(&err, reason, field);
    }
    let (status, err) = send(upi_update(&sb, "cref_nobody", good)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"]["description"], "UPI number does not exist");
    assert_razorpay_error(&err, "upi_number_not_found", Some("upi_number"));

    assert_eq!(sb.counters()["razorpay_upi_update"].applied, 0);
    assert_eq!(sb.state(), SeedData::demo());
}

fn is_connection_reset(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionReset
        {
            return true;
        }
        source = e.source();
    }
    false
}

fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

#[tokio::test]
async fn sandbox_unknown_paths_are_404_without_a_body() {
    let sb = start().await;
    for path in [
        "/v1/wallets/wlt_demo_bob_paytm",
        "/customers",
        "/__sandbox/nope",
    ] {
        let response = juspay(&sb, reqwest::Method::GET, path)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(response.text().await.expect("text").is_empty(), "{path}");
    }
    let journal = sb.journal();
    assert_eq!(journal.len(), 2, "admin paths are not journaled");
    assert_eq!(journal[0].route, None);
    assert_eq!(journal[0].status, Some(404));
}

#[tokio::test]
async fn sandbox_latency_fault_delays_then_answers() {
    let sb = start().await;
    sb.add_fault(FaultSpec::latency("juspay_wallet_get", 300).times(1));
    let started = Instant::now();
    let (status, _) = send(juspay(
        &sb,
        reqwest::Method::GET,
        "/wallets/wlt_demo_bob_paytm",
    ))
    .await;
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(800),
        "{elapsed:?}"
    );

    let started = Instant::now();
    send(juspay(
        &sb,
        reqwest::Method::GET,
        "/wallets/wlt_demo_bob_paytm",
    ))
    .await;
    assert!(started.elapsed() < Duration::from_millis(300), "only once");
}

#[tokio::test]
async fn sandbox_status_fault_is_verbatim_and_counts_down() {
    let sb = start().await;
    let html = "<html><body>502 Bad Gateway</body></html>";
    let id = sb.add_fault(FaultSpec::status("*", 502, html, Some("text/html")).times(2));
    for _ in 0..2 {
        let response = upi_update(
            &sb,
            "cref_demo_alice",
            change_vpa("9876543210", "a1@okicici"),
        )
        .send()
        .await
        .expect("send");
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()["content-type"], "text/html");
        assert_eq!(response.text().await.expect("text"), html);
    }
    assert!(sb.faults().is_empty(), "used up");
    let (status, _) = send(upi_update(
        &sb,
        "cref_demo_alice",
        change_vpa("9876543210", "a1@okicici"),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);

    let counters = sb.counters();
    assert_eq!(counters["razorpay_upi_update"].calls, 3);
    assert_eq!(counters["razorpay_upi_update"].faults, 2);
    assert_eq!(
        counters["razorpay_upi_update"].applied, 1,
        "a fault before apply changes nothing"
    );
    let journal = sb.journal();
    let fired: Vec<Option<u64>> = journal
        .iter()
        .map(|e| e.fault.as_ref().map(|f| f.id))
        .collect();
    assert_eq!(fired, [Some(id), Some(id), None]);
    assert_eq!(journal[0].status, Some(502));
}

#[tokio::test]
async fn sandbox_reset_fault_is_a_connection_error() {
    let sb = start().await;
    sb.add_fault(FaultSpec::reset("juspay_customer_get").times(1));
    let err = juspay(&sb, reqwest::Method::GET, "/customers/bob")
        .send()
        .await
        .expect_err("reset");
    assert!(!err.is_timeout(), "{err:?}");
    assert!(err.status().is_none(), "no response at all: {err:?}");
    assert!(
        is_connection_reset(&err),
        "an RST, not a clean close: {err:?}"
    );
    assert_eq!(sb.journal()[0].status, None);
    // The sandbox keeps serving new connections.
    assert_eq!(
        send(juspay(&sb, reqwest::Method::GET, "/customers/bob"))
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn sandbox_hang_fault_lasts_until_the_client_gives_up() {
    let sb = start().await;
    sb.add_fault(FaultSpec::hang("juspay_customer_wallets"));
    let started = Instant::now();
    let err = juspay(&sb, reqwest::Method::GET, "/customers/bob/wallets")
        .timeout(Duration::from_millis(400))
        .send()
        .await
        .expect_err("hang");
    assert!(err.is_timeout(), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(400));
    let entry = &sb.journal()[0];
    assert_eq!(entry.fault.as_ref().map(|f| f.kind), Some(FaultKind::Hang));
    assert_eq!(entry.status, None);
}

#[tokio::test]
async fn sandbox_shutdown_releases_hung_calls() {
    let sb = start().await;
    sb.add_fault(FaultSpec::hang("*"));
    let call =
        tokio::spawn(juspay(&sb, reqwest::Method::GET, "/wallets/wlt_demo_bob_paytm").send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    sb.shutdown().await;
    let result = call.await.expect("join");
    assert!(result.is_err_and(|e| !e.is_timeout()));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn sandbox_truncate_fault_breaks_the_body() {
    let sb = start().await;
    sb.add_fault(FaultSpec::truncate("juspay_wallet_get").times(1));
    let response = juspay(&sb, reqwest::Method::GET, "/wallets/wlt_demo_bob_paytm")
        .send()
        .await
        .expect("headers arrive");
    assert_eq!(response.status(), StatusCode::OK);
    let announced = response.content_length().unwrap_or_default();
    assert!(announced > 0);
    assert!(response.bytes().await.is_err(), "body is cut short");
}

#[tokio::test]
async fn sandbox_after_apply_faults_change_state_but_fail_the_call() {
    let sb = start().await;
    sb.add_fault(
        FaultSpec::status(
            "juspay_customer_update",
            500,
            r#"{"status":"error"}"#,
            Some("application/json"),
        )
        .after_apply()
        .times(1),
    );
    let (status, body) = send(customer_update(&sb, "bob", "last_name=Mender")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, json!({"status": "error"}));
    let (_, read) = send(juspay(&sb, reqwest::Method::GET, "/customers/bob")).await;
    assert_eq!(read["last_name"], "Mender");
    assert_eq!(sb.counters()["juspay_customer_update"].applied, 1);

    sb.add_fault(
        FaultSpec::reset("razorpay_upi_update")
            .after_apply()
            .times(1),
    );
    let err = upi_update(
        &sb,
        "cref_demo_alice",
        change_vpa("9876543210", "alice@ybl"),
    )
    .send()
    .await
    .expect_err("reset after apply");
    assert!(!err.is_timeout());
    let (_, list) = send(razorpay(&sb, reqwest::Method::GET, "cref_demo_alice")).await;
    assert_eq!(list["upi_numbers"][0]["vpa"], "alice@ybl");

    // Truncating after apply cuts the real answer.
    sb.add_fault(
        FaultSpec::truncate("juspay_wallet_update")
            .after_apply()
            .times(1),
    );
    let response = wallet_update(
        &sb,
        "wlt_demo_bob_paytm",
        "command=update&mobile_number=55555555",
    )
    .send()
    .await
    .expect("headers");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.bytes().await.is_err());
    let (_, wallet) = send(juspay(
        &sb,
        reqwest::Method::GET,
        "/wallets/wlt_demo_bob_paytm",
    ))
    .await;
    assert_eq!(wallet["metadata"]["mobile_number"], "55555555");
}

#[tokio::test]
async fn sandbox_probability_fires_on_a_share_of_calls() {
    let sb = start().await;
    sb.add_fault(FaultSpec::status("juspay_wallet_get", 429, "", None).probability(0.5));
    let mut limited = 0;
    for _ in 0..40 {
        let response = juspay(&sb, reqwest::Method::GET, "/wallets/wlt_demo_bob_paytm")
            .send()
            .await
            .expect("send");
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
        }
    }
    assert!((5..=35).contains(&limited), "{limited} of 40");
    assert_eq!(sb.counters()["juspay_wallet_get"].faults, limited);
}

#[tokio::test]
async fn sandbox_journal_records_the_wire_request_with_secrets_masked() {
    let sb = start().await;
    let body =
        r#"{"upi_number":"9876543210","vpa":"alice@okicici","action":"change_vpa","consent":true}"#;
    let response = razorpay(&sb, reqwest::Method::PATCH, "cref_demo_alice")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    send(juspay(
        &sb,
        reqwest::Method::GET,
        "/customers/bob?options.add_wallets=true",
    ))
    .await;
    let wrong_key = client()
        .get(format!("{}/wallets/wlt_demo_bob_paytm", sb.base_url()))
        .basic_auth("guess", Some(""));
    send(wrong_key).await;

    let journal = sb.journal();
    assert_eq!(journal.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    let upi = &journal[0];
    assert_eq!(upi.route.as_deref(), Some("razorpay_upi_update"));
    assert_eq!(upi.method, "PATCH");
    assert_eq!(upi.path, UPI_PATH);
    assert_eq!(upi.body, body);
    assert_eq!(upi.headers["authorization"], "Basic ****");
    assert_eq!(upi.headers["x-customer-reference"], "cref_demo_alice");
    assert_eq!(
        upi.headers["x-device-fingerprint-timestamp"],
        "1496918882000"
    );
    assert_eq!(upi.headers["content-type"], "application/json");
    assert_eq!(upi.auth_principal.as_deref(), Some(DEMO_RAZORPAY_KEY_ID));
    assert!(upi.auth_ok);
    assert_eq!(upi.status, Some(200));
    assert_eq!(upi.fault, None);

    let customer = &journal[1];
    assert_eq!(customer.path, "/customers/bob?options.add_wallets=true");
    assert_eq!(
        customer.auth_principal.as_deref(),
        Some("juspay_api_key_ok")
    );
    assert_eq!(customer.headers["x-merchantid"], DEMO_JUSPAY_MERCHANT_ID);
    assert_eq!(journal[2].auth_principal.as_deref(), Some("invalid"));
    assert!(!journal[2].auth_ok);
    assert_eq!(journal[2].status, Some(401));

    let dump = serde_json::to_string(&journal).expect("serialize");
    for secret in [
        DEMO_RAZORPAY_KEY_SECRET.to_owned(),
        DEMO_JUSPAY_API_KEY.to_owned(),
        base64_basic(DEMO_RAZORPAY_KEY_ID, DEMO_RAZORPAY_KEY_SECRET),
        base64_basic(DEMO_JUSPAY_API_KEY, ""),
    ] {
        assert!(!dump.contains(&secret), "journal leaks {secret}");
    }
    sb.clear_journal();
    assert!(sb.journal().is_empty());
}

#[tokio::test]
async fn sandbox_admin_api_over_http() {
    let sb = start().await;
    let http = client();
    let admin = |path: &str| format!("{}/__sandbox/{path}", sb.base_url());

    let created: Value = http
        .post(admin("faults"))
        .body(
            r#"{"route":"juspay_wallet_get","kind":"status","status":503,"body":"busy","times":1}"#,
        )
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert!(created["id"].is_u64(), "{created}");
    let listed: Value = http
        .get(admin("faults"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(listed[0]["route"], "juspay_wallet_get");
    assert_eq!(listed[0]["times"], 1);
    let bad = http
        .post(admin("faults"))
        .body(r#"{"route":"nope","kind":"reset"}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let cleared = http.delete(admin("faults")).send().await.expect("send");
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    assert!(sb.faults().is_empty());

    send(juspay(
        &sb,
        reqwest::Method::GET,
        "/wallets/wlt_demo_bob_paytm",
    ))
    .await;
    let counters: Value = http
        .get(admin("counters"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(
        counters["juspay_wallet_get"],
        json!({"calls": 1, "applied": 0, "faults": 0})
    );
    let journal: Value = http
        .get(admin("journal"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(journal[0]["route"], "juspay_wallet_get");
    http.delete(admin("journal")).send().await.expect("send");
    assert!(sb.journal().is_empty());

    // A state dump loads back, faults included.
    let mut state: Value = http
        .get(admin("state"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    state["juspay_customers"][1]["first_name"] = "Robert".into();
    state["faults"] = json!([{"route": "razorpay_upi_get", "kind": "reset"}]);
    let put = http
        .put(admin("state"))
        .json(&state)
        .send()
        .await
        .expect("send");
    assert_eq!(put.status(), StatusCode::NO_CONTENT);
    let (_, bob) = send(juspay(&sb, reqwest::Method::GET, "/customers/bob")).await;
    assert_eq!(bob["first_name"], "Robert");
    assert_eq!(sb.faults().len(), 1);
    let invalid =
        json!({"juspay_wallets": [{"id": "w", "customer_id": "ghost", "wallet": "PAYTM"}]});
    let put = http
        .put(admin("state"))
        .json(&invalid)
        .send()
        .await
        .expect("send");
    assert_eq!(put.status(), StatusCode::BAD_REQUEST);

    let reset = http.post(admin("reset")).send().await.expect("send");
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    assert_eq!(sb.state(), SeedData::demo());
    assert!(sb.journal().is_empty());
    assert_eq!(sb.counters()["juspay_customer_get"].calls, 0);
}

#[tokio::test]
async fn sandbox_seed_faults_and_invalid_seeds() {
    let mut seed = SeedData::demo();
    seed.faults
        .push(FaultSpec::status("juspay_customer_get", 500, "oops", Some("text/plain")).times(1));
    let sb = start_with(SandboxConfig {
        seed,
        ..SandboxConfig::default()
    })
    .await;
    let response = juspay(&sb, reqwest::Method::GET, "/customers/bob")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.text().await.expect("text"), "oops");

    let mut duplicate = SeedData::demo();
    duplicate
        .juspay_customers
        .push(duplicate.juspay_customers[0].clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let result = sandbox::spawn(
        SandboxConfig {
            seed: duplicate,
            ..SandboxConfig::default()
        },
        listener,
    )
    .await;
    assert!(result.is_err());

    let path = std::env::temp_dir().join(format!("sandbox-seed-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_vec(&SeedData::demo()).expect("json")).expect("write");
    let loaded = SeedData::from_json_file(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(loaded.expect("load"), SeedData::demo());
}
