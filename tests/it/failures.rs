//! Upstream failures: each class maps to its step error and HTTP status, partial failures are
//! recorded as such, and a database outage stops a change before any upstream call.
//!
//! (Over ~400 lines on purpose: one test per upstream failure class, all over the sandbox's fault fixtures; split, it would scatter them.)

use crate::helpers::*;
use serde_json::{Value, json};
use upstream_sandbox::FaultSpec;

const JSON: Option<&str> = Some("application/json");

struct Case {
    name: &'static str,
    fault: FaultSpec,
    step_status: &'static str,
    code: &'static str,
    retryable: bool,
    upstream_status: Option<u16>,
    upstream_code: Option<&'static str>,
    http: u16,
    problem_code: &'static str,
}

fn cases() -> Vec<Case> {
    let w = "juspay_wallet_update";
    vec![
        Case {
            name: "juspay validation error envelope",
            fault: FaultSpec::status(
                w,
                400,
                r#"{"status":"invalid_request_error","error_code":"invalid_input","error_message":"Mobile 9000000002 invalid","error_info":{"code":"INVALID_INPUT","category":"USER_ERROR","fields":[{"field_name":"mobile_number","reason":"bad"}]}}"#,
                JSON,
            ),
            step_status: "failed",
            code: "upstream_rejected",
            retryable: false,
            upstream_status: Some(400),
            upstream_code: Some("invalid_input"),
            http: 422,
            problem_code: "upstream_rejected",
        },
        Case {
            name: "juspay not found with its envelope",
            fault: FaultSpec::status(
                w,
                404,
                r#"{"status":"invalid_request_error","error_code":"object_not_found","error_message":"Cannot find what you are looking for"}"#,
                JSON,
            ),
            step_status: "failed",
            code: "upstream_not_found",
            retryable: false,
            upstream_status: Some(404),
            upstream_code: Some("object_not_found"),
            http: 422,
            problem_code: "upstream_not_found",
        },
        Case {
            name: "404 without a body is a wrong path, not a missing object",
            fault: FaultSpec::status(w, 404, "", None),
            step_status: "failed",
            code: "upstream_bad_response",
            retryable: false,
            upstream_status: Some(404),
            upstream_code: None,
            http: 502,
            problem_code: "upstream_bad_response",
        },
        Case {
            name: "auth failure",
            fault: FaultSpec::status(
                w,
                401,
                r#"{"status":"invalid_request_error","error_code":"access_denied"}"#,
                JSON,
            ),
            step_status: "failed",
            code: "upstream_auth_failed",
            retryable: false,
            upstream_status: Some(401),
            upstream_code: Some("access_denied"),
            http: 502,
            problem_code: "upstream_auth_failed",
        },
        Case {
            name: "ip allow-list 403",
            fault: FaultSpec::status(w, 403, "Forbidden", Some("text/plain")),
            step_status: "failed",
            code: "upstream_auth_failed",
            retryable: false,
            upstream_status: Some(403),
            upstream_code: None,
            http: 502,
            problem_code: "upstream_auth_failed",
        },
        Case {
            name: "rate limited without Retry-After",
            fault: FaultSpec::status(w, 429, "", None),
            step_status: "failed",
            code: "upstream_rate_limited",
            retryable: true,
            upstream_status: Some(429),
            upstream_code: None,
            http: 502,
            problem_code: "upstream_rate_limited",
        },
        Case {
            name: "html 502 from a proxy",
            fault: FaultSpec::status(
                w,
                502,
                "<html><body>Bad Gateway</body></html>",
                Some("text/html"),
            ),
            step_status: "failed",
            code: "upstream_unavailable",
            retryable: true,
            upstream_status: Some(502),
            upstream_code: None,
            http: 502,
            problem_code: "upstream_unavailable",
        },
        Case {
            name: "500 with a free-text code",
            fault: FaultSpec::status(
                w,
                500,
                r#"{"status":"error","error_code":"Something went wrong for 9000000002"}"#,
                JSON,
            ),
            step_status: "failed",
            code: "upstream_unavailable",
            retryable: true,
            upstream_status: Some(500),
            upstream_code: None,
            http: 502,
            problem_code: "upstream_unavailable",
        },
        Case {
            name: "200 that is not JSON",
            fault: FaultSpec::status(w, 200, "OK", Some("text/plain")),
            step_status: "unknown",
            code: "upstream_bad_response",
            retryable: false,
            upstream_status: Some(200),
            upstream_code: None,
            http: 502,
            problem_code: "upstream_bad_response",
        },
        Case {
            name: "200 that echoes another number",
            fault: FaultSpec::status(
                w,
                200,
                r#"{"id":"wlt_demo_bob_paytm","object":"wallet_account","metadata":{"mobile_number":"1111111111"}}"#,
                JSON,
            ),
            step_status: "unknown",
            code: "upstream_bad_response",
            retryable: false,
            upstream_status: Some(200),
            upstream_code: None,
            http: 502,
            problem_code: "upstream_bad_response",
        },
        Case {
            name: "redirect is not followed",
            fault: FaultSpec::status(w, 302, "", None),
            step_status: "failed",
            code: "upstream_bad_response",
            retryable: false,
            upstream_status: Some(302),
            upstream_code: None,
            http: 502,
            problem_code: "upstream_bad_response",
        },
        Case {
            name: "connection reset",
            fault: FaultSpec::reset(w),
            step_status: "unknown",
            code: "upstream_unavailable",
            retryable: true,
            upstream_status: None,
            upstream_code: None,
            http: 502,
            problem_code: "upstream_unavailable",
        },
        Case {
            name: "hang until the per-provider timeout",
            fault: FaultSpec::hang(w),
            step_status: "unknown",
            code: "upstream_timeout",
            retryable: true,
            upstream_status: None,
            upstream_code: None,
            http: 504,
            problem_code: "upstream_timeout",
        },
        Case {
            name: "truncated body",
            fault: FaultSpec::truncate(w).after_apply(),
            step_status: "unknown",
            code: "upstream_unavailable",
            retryable: true,
            upstream_status: Some(200),
            upstream_code: None,
            http: 502,
            problem_code: "upstream_unavailable",
        },
    ]
}

#[tokio::test]
async fn each_upstream_failure_class_maps_to_its_step_error_and_status() {
    let app = spawn_app_with(single_attempt).await;
    for case in cases() {
        app.sandbox.clear_faults();
        app.sandbox.add_fault(case.fault.clone().times(1));
        app.sandbox.clear_journal();
        // Bob: one customer step that succeeds, one wallet step that meets the fault.
        let resp = app
            .patch("bob", &json!({"mobile_number": "9000000002"}))
            .await;
        let (status, p) = problem(resp).await;
        assert_eq!(status, case.http, "{}: {p}", case.name);
        assert_eq!(p["code"], case.problem_code, "{}", case.name);
        assert_eq!(p["change_status"], "partially_applied", "{}", case.name);
        let steps = p["steps"].as_array().unwrap();
        assert_eq!(steps[0]["target"], "juspay_customer");
        assert_eq!(
            steps[0]["status"], "applied",
            "{}: applied steps are listed too",
            case.name
        );
        let wallet = &steps[1];
        assert_eq!(
            wallet["status"], case.step_status,
            "{}: {wallet}",
            case.name
        );
        let e = &wallet["error"];
        assert_eq!(e["code"], case.code, "{}: {e}", case.name);
        assert_eq!(e["retryable"], case.retryable, "{}", case.name);
        assert_eq!(
            e["upstream_status"],
            json!(case.upstream_status),
            "{}",
            case.name
        );
        assert_eq!(
            e["upstream_code"],
            json!(case.upstream_code),
            "{}",
            case.name
        );
        assert!(
            !p.to_string().contains("9000000002"),
            "{}: upstream text must not be echoed",
            case.name
        );
        // The record says the same as the response.
        let change_id = p["change_id"].as_str().unwrap();
        let row: (String, String, Option<String>) = sqlx::query_as(
            "select c.status, s.status, s.error_code from changes c join change_steps s on s.change_id = c.id
              where c.id = $1::uuid and s.target = 'juspay_wallet'",
        )
        .bind(change_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(
            row,
            (
                "partially_applied".into(),
                case.step_status.into(),
                Some(case.code.into())
            ),
            "{}",
            case.name
        );
    }
}

#[tokio::test]
async fn razorpay_status_and_code_disagreements_are_judged_by_status_and_reason() {
    let app = spawn_app_with(single_attempt).await;
    let r = "razorpay_upi_update";
    let table: Vec<(FaultSpec, &str, u16)> = vec![
        (
            FaultSpec::status(
                r,
                401,
                r#"{"error":{"code":"BAD_REQUEST_ERROR","description":"The api key provided is invalid","source":"NA","step":"NA","reason":"NA"}}"#,
                JSON,
            ),
            "upstream_auth_failed",
            502,
        ),
        (
            FaultSpec::status(
                r,
                400,
                r#"{"error":{"code":"BAD_REQUEST_ERROR","description":"UPI number does not exist","reason":"upi_number_not_found"}}"#,
                JSON,
            ),
            "upstream_not_found",
            422,
        ),
        (
            FaultSpec::status(
                r,
                500,
                r#"{"error":{"code":"SERVER_ERROR","description":null,"field":"","reason":"NA","metadata":{}}}"#,
                JSON,
            ),
            "upstream_unavailable",
            502,
        ),
        (
            FaultSpec::status(
                r,
                200,
                r#"{"entity":"upi_number","upi_number":"912345678","type":"numeric","status":"deregistered","vpa":"bob@okhdfc"}"#,
                JSON,
            ),
            "upstream_bad_response",
            502,
        ),
    ];
    for (fault, code, http) in table {
        app.sandbox.clear_faults();
        app.sandbox.add_fault(fault.times(1));
        let mut upi = upi_body("bob.z@okhdfc", "change_vpa");
        upi["upi_number"] = json!("912345678");
        let (status, p) = problem(app.patch("bob", &json!({"upi": upi})).await).await;
        assert_eq!(
            (status, p["steps"][0]["error"]["code"].as_str()),
            (http, Some(code)),
            "{p}"
        );
        assert_eq!(p["change_status"], "failed");
    }
}

#[tokio::test]
async fn all_timeouts_answer_504_and_mixed_failures_502() {
    let app = spawn_app_with(|s| {
        single_attempt(s);
        juspay_timeout_ms(s, 300);
        s.providers.section_mut("razorpay_upi").timeout_ms = Some(300);
    })
    .await;
    app.sandbox.add_fault(FaultSpec::hang("*").times(2));
    let (status, p) = problem(
        app.patch("bob", &json!({"mobile_number": "9000000003"}))
            .await,
    )
    .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (504, Some("upstream_timeout"))
    );
    assert_eq!(p["change_status"], "failed");
    assert!(
        p["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "unknown")
    );
}

#[tokio::test]
async fn a_database_outage_is_a_503_and_no_upstream_is_called() {
    let sandbox = spawn_sandbox().await;
    // Port 1 on loopback: nothing listens there, so every connection is refused at once.
    let mut settings = base_settings(
        "postgres://postgres@127.0.0.1:1/nothing",
        &sandbox.base_url(),
    );
    settings.database.migrate_on_start = false;
    settings.database.acquire_timeout_ms = 500;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = profile_gateway::startup::Application::build(&settings, listener)
        .await
        .unwrap();
    let base = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until(std::future::pending()));
    let client = reqwest::Client::new();
    let resp = client
        .patch(format!("{base}/profile/alice"))
        .bearer_auth(TOKEN)
        .header("idempotency-key", "db-down-key-0000001")
        .json(&json!({"mobile_number": "9812345678"}))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("retry-after"));
    let (status, p) = problem(resp).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (503, Some("database_unavailable"))
    );
    assert!(
        sandbox.journal().is_empty(),
        "nothing may reach an upstream before the change is recorded"
    );
    let ready = client
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let live = client
        .get(format!("{base}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
}

#[tokio::test]
async fn the_record_is_written_before_the_first_upstream_call() {
    let app = spawn_app().await;
    // Slow the customer update so the change can be observed mid-flight.
    app.sandbox
        .add_fault(FaultSpec::latency("juspay_customer_update", 600).times(1));
    let app_ref = &app;
    let patch = async move {
        app_ref
            .patch("bob", &json!({"email_address": "mid@example.org"}))
            .await
    };
    let observe = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let j = app.journal();
        assert_eq!(j.len(), 1, "the call is in flight");
        let rows: Vec<(String, String)> = sqlx::query_as(
            "select c.status, s.status from changes c join change_steps s on s.change_id = c.id",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        assert_eq!(rows, [("pending".to_string(), "pending".to_string())]);
        let payload: Option<Vec<u8>> = sqlx::query_scalar("select payload_enc from changes")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        let payload = payload.expect("the values still to send are kept, sealed");
        assert!(!String::from_utf8_lossy(&payload).contains("mid@example.org"));
    };
    let (resp, ()) = tokio::join!(patch, observe);
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "applied");
}

#[tokio::test]
async fn a_provider_with_its_own_max_attempts_stops_while_the_others_retry() {
    let app = spawn_app_with(|s| {
        let all = s.providers.all_mut();
        all.max_attempts = Some(3);
        all.in_request_attempts = Some(3);
        all.retry_base_ms = Some(1);
        all.retry_cap_ms = Some(5);
        s.providers.section_mut("razorpay_upi").max_attempts = Some(1);
    })
    .await;
    app.sandbox
        .add_fault(FaultSpec::status("juspay_customer_update", 503, "", None).times(2));
    app.sandbox
        .add_fault(FaultSpec::status("razorpay_upi_update", 503, "", None));
    let resp = app
        .patch(
            "bob",
            &json!({
                "email_address": "bob.retry@example.com",
                "upi": upi_body("bob.retry@okaxis", "change_vpa"),
            }),
        )
        .await;
    let body: Value = resp.json().await.unwrap();
    let calls = |route: &str| {
        app.journal()
            .iter()
            .filter(|e| e.route.as_deref() == Some(route))
            .count()
    };
    assert_eq!(calls("juspay_customer_update"), 3, "all's 3 attempts");
    assert_eq!(calls("razorpay_upi_update"), 1, "its own single attempt");
    let status = |target: &str| {
        body["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["target"] == target)
            .map(|s| s["status"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(status("juspay_customer"), "applied", "{body}");
    assert!(
        ["failed", "unknown"].contains(&status("razorpay_upi").as_str()),
        "{body}"
    );
    let attempts: Vec<(String, i32)> =
        sqlx::query_as("select target, attempts from change_steps order by target")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(
        attempts.contains(&("juspay_customer".to_string(), 3))
            && attempts.contains(&("razorpay_upi".to_string(), 1)),
        "{attempts:?}"
    );
}
