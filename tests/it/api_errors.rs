//! Every error the service emits is problem+json with a stable code and the request id.

use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn authentication_and_scopes() {
    let app = spawn_app().await;
    let url = app.url("/profile/alice");
    let body = json!({"first_name": "Al"});
    let none = app.client.patch(&url).json(&body).send().await.unwrap();
    assert_eq!(problem(none).await.1["code"], "unauthorized");
    let wrong = app
        .client
        .patch(&url)
        .bearer_auth("nope")
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, p) = problem(wrong).await;
    assert_eq!((status, p["code"].as_str()), (401, Some("unauthorized")));
    let basic = app
        .client
        .patch(&url)
        .basic_auth(TOKEN, Some(""))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    let reader = app
        .client
        .patch(&url)
        .bearer_auth(READ_ONLY_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, p) = problem(reader).await;
    assert_eq!((status, p["code"].as_str()), (403, Some("forbidden")));
    let read = app
        .client
        .get(app.url("/profile/alice/links"))
        .bearer_auth(READ_ONLY_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert!(app.journal().is_empty());
    assert_eq!(app.count("select count(*) from changes").await, 0);
}

#[tokio::test]
async fn validation_lists_every_field_and_changes_nothing() {
    let app = spawn_app().await;
    let resp = app
        .patch(
            "alice",
            &json!({"mobile_number": "98-76", "email_address": "a..b@example.com", "first_name": "Jon Snow",
                    "colour": "red", "upi": {"upi_number": "9876543210", "vpa": "alice@okaxis",
                    "action": "change_vpa", "consent": false}}),
        )
        .await;
    let (status, p) = problem(resp).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (422, Some("validation_failed"))
    );
    let errors: Vec<(String, String)> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["pointer"].as_str().unwrap().into(),
                e["code"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("/colour", "unknown_field"),
        ("/mobile_number", "not_digits"),
        ("/email_address", "invalid_email"),
        ("/first_name", "invalid_characters"),
        ("/upi/device", "required"),
        ("/upi/consent", "consent_required"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let mut sorted_got = errors.clone();
    sorted_got.sort();
    let mut sorted_expected = expected.clone();
    sorted_expected.sort();
    assert_eq!(sorted_got, sorted_expected);
    assert!(!p.to_string().contains("98-76"), "values are not echoed");
    assert!(app.journal().is_empty(), "no upstream call");
    assert_eq!(app.count("select count(*) from changes").await, 0);
    assert_eq!(
        app.count("select count(*) from audit_events where event_type <> 'links_updated'")
            .await,
        0
    );
    assert_eq!(
        app.count("select last_change_seq from profile_links where user_id = 'alice'")
            .await,
        0
    );
}

#[tokio::test]
async fn protocol_errors_are_problems_too() {
    let app = spawn_app().await;
    let c = &app.client;

    let (s, p) = problem(c.get(app.url("/nowhere")).send().await.unwrap()).await;
    assert_eq!((s, p["code"].as_str()), (404, Some("route_not_found")));

    let (s, p) = problem(
        c.delete(app.url("/profile/alice"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (405, Some("method_not_allowed")));

    let (s, p) = problem(
        c.patch(app.url("/profile/alice"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body("{\"first_name\": ")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (400, Some("malformed_json")));

    let (s, p) = problem(
        c.patch(app.url("/profile/alice"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("first_name=Al")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, p["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );

    let big = json!({"first_name": "A".repeat(20_000)});
    let (s, p) = problem(
        c.patch(app.url("/profile/alice"))
            .bearer_auth(TOKEN)
            .json(&big)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (413, Some("payload_too_large")));

    let (s, p) = problem(app.get("/changes/not-a-uuid").await).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (400, Some("invalid_path_parameter"))
    );
    let (s, p) = problem(
        app.get("/changes/00000000-0000-4000-8000-000000000000")
            .await,
    )
    .await;
    assert_eq!((s, p["code"].as_str()), (404, Some("change_not_found")));
    let (s, p) = problem(app.get("/profile/alice/changes?limit=0").await).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (400, Some("invalid_query_parameter"))
    );

    let (s, p) = problem(app.get("/profile/%FF/links").await).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (400, Some("invalid_path_parameter"))
    );
    let (s, p) = problem(app.get("/profile/alice/changes?limit=1&limit=2").await).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (400, Some("invalid_query_parameter"))
    );
    // The auth scheme name is case-insensitive.
    let lower = c
        .get(app.url("/profile/alice/links"))
        .header("authorization", format!("bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 200);

    // A caller-supplied request id is kept and echoed.
    let resp = c
        .get(app.url("/nowhere"))
        .header("x-request-id", "caller-req-0001")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "caller-req-0001");
    assert_eq!(problem(resp).await.1["request_id"], "caller-req-0001");
}
