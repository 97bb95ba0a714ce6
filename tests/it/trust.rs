//! Caller trust (issue 13): object ownership, scopes, reserved and hostile ids, JWT callers with
//! JWKS over HTTP, end-user assertions, the sandbox database guard.
//!
//! (Over ~400 lines on purpose: each caller-trust rule (ownership, scopes, JWT, assertions) is one test over shared JWKS fixtures; split, it would scatter them.)

use crate::helpers::*;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use profile_gateway::settings::{CallerSettings, IssuerSettings, Mode};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

const ALICE: &str = "test-token-writer";

fn alice_links() -> Value {
    json!({
        "juspay_customer_id": "cst_demo_alice",
        "juspay_wallet_ids": ["wlt_mallory_own", "wlt_demo_alice_mobikwik"],
        "razorpay_customer_reference": "cref_demo_alice"
    })
}

async fn put_links(app: &TestApp, token: &str, user: &str, body: &Value) -> reqwest::Response {
    app.client
        .put(app.url(&format!("/profile/{user}/links")))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn bola_linking_another_users_objects_is_refused() {
    let app = spawn_app().await;
    let before: Value = app.get("/profile/alice/links").await.json().await.unwrap();
    let events_before = app
        .count("select count(*) from audit_events where event_type = 'links_updated'")
        .await;

    let resp = put_links(&app, ALICE, "mallory", &alice_links()).await;
    let (status, body) = problem(resp).await;
    assert_eq!(status, 409);
    assert_eq!(body["code"], "link_conflict");
    let pointers: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(
        pointers,
        [
            "/juspay_customer_id",
            "/juspay_wallet_ids/1",
            "/razorpay_customer_reference"
        ]
    );
    assert!(
        !body.to_string().contains("alice"),
        "never names the holder: {body}"
    );

    // Nothing changed: mallory has no links, alice keeps hers, no upstream was called.
    assert_eq!(
        app.count("select count(*) from profile_links where user_id = 'mallory'")
            .await,
        0
    );
    let after: Value = app.get("/profile/alice/links").await.json().await.unwrap();
    assert_eq!(before, after);
    assert_eq!(
        app.count("select count(*) from audit_events where event_type = 'links_updated'")
            .await,
        events_before
    );
    assert_eq!(
        app.count("select count(*) from audit_events where event_type = 'links_refused' and user_id = 'mallory' and error_code = 'link_conflict'").await,
        1
    );
    let resp = app
        .patch("mallory", &json!({"email_address": "m@evil.example"}))
        .await;
    let (status, body) = problem(resp).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("user_not_found"))
    );
    assert_eq!(app.count("select count(*) from changes").await, 0);
    assert!(app.journal().is_empty());

    // The database itself refuses a second holder, whatever the application does.
    sqlx::query("insert into profile_links (user_id) values ('eve')")
        .execute(&app.pool)
        .await
        .unwrap();
    for (provider, object) in [
        ("juspay_wallet", "wlt_demo_bob_paytm"),
        ("juspay_customer", "cst_demo_bob"),
    ] {
        let err = sqlx::query(
            "insert into user_links (user_id, provider, object_id, ordinal) values ('eve', $1, $2, 0)",
        )
        .bind(provider)
        .bind(object)
        .execute(&app.pool)
        .await
        .unwrap_err();
        assert!(err.to_string().contains("user_links_object_once"), "{err}");
    }
}

#[tokio::test]
async fn links_need_their_own_scopes_checked_before_the_body() {
    let app = spawn_app_with(|s| {
        s.auth.callers.push(CallerSettings {
            name: "patcher".into(),
            token_sha256: Some(profile_gateway::auth::token_sha256("patch-only-token")),
            scopes: vec!["profile:write".into(), "profile:read".into()],
            ..Default::default()
        });
    })
    .await;
    // profile:write no longer suffices, and the body is not even looked at: not JSON, too large.
    for (ct, body) in [
        ("application/json", alice_links().to_string()),
        ("text/plain", "x".into()),
        ("application/json", "x".repeat(100_000)),
    ] {
        let resp = app
            .client
            .put(app.url("/profile/mallory/links"))
            .bearer_auth("patch-only-token")
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, p) = problem(resp).await;
        assert_eq!(
            (status, p["code"].as_str()),
            (403, Some("forbidden")),
            "{ct}"
        );
        assert!(p["detail"].as_str().unwrap().contains("links:write"));
    }
    let resp = app
        .client
        .get(app.url("/profile/alice/links"))
        .bearer_auth("patch-only-token")
        .send()
        .await
        .unwrap();
    assert_eq!(problem(resp).await.0, 403);
    assert_eq!(
        app.count("select count(*) from profile_links where user_id = 'mallory'")
            .await,
        0
    );
}

#[tokio::test]
async fn reserved_user_ids_and_hostile_object_ids_are_refused() {
    let app = spawn_app().await;
    let resp = app
        .patch("_system", &json!({"email_address": "a@b.example"}))
        .await;
    let (status, body) = problem(resp).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_path_parameter"))
    );
    let resp = put_links(
        &app,
        ALICE,
        "_system",
        &json!({"juspay_customer_id": "cst_x"}),
    )
    .await;
    assert_eq!(problem(resp).await.0, 400);

    let resp = put_links(
        &app,
        ALICE,
        "mallory",
        &json!({"juspay_customer_id": ".", "juspay_wallet_ids": ["..", "-x", "_y"]}),
    )
    .await;
    let (status, body) = problem(resp).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("validation_failed"))
    );
    let pointers: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(
        pointers,
        [
            "/juspay_customer_id",
            "/juspay_wallet_ids/0",
            "/juspay_wallet_ids/1",
            "/juspay_wallet_ids/2"
        ]
    );
    assert_eq!(
        app.count("select count(*) from profile_links where user_id = 'mallory'")
            .await,
        0
    );

    // A dot-only id stored before ids were checked never becomes a path: the step fails, nothing
    // is sent with the merchant's credentials.
    for stored in [
        "insert into profile_links (user_id) values ('legacy')",
        "insert into user_links (user_id, provider, object_id, ordinal)
         values ('legacy', 'juspay_customer', '.', 0), ('legacy', 'juspay_wallet', '..', 0)",
    ] {
        sqlx::query(stored).execute(&app.pool).await.unwrap();
    }
    let resp = app
        .patch(
            "legacy",
            &json!({"email_address": "l@example.com", "mobile_number": "9812345678"}),
        )
        .await;
    assert!(resp.status().is_client_error() || resp.status().is_server_error());
    assert!(app.journal().is_empty(), "{:?}", app.journal());
}

// ---- JWT callers -----------------------------------------------------------------------------

/// A signing key generated for the test (Ed25519 from random bytes, PKCS#8 v1 wrapping).
pub(crate) struct TestKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
}

impl TestKey {
    pub(crate) fn ed25519(kid: &str) -> Self {
        use rand::RngCore;
        let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
        let mut seed = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut seed);
        der.extend_from_slice(&seed);
        Self {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(&der),
        }
    }

    pub(crate) fn p256(kid: &str) -> Self {
        use rand::RngCore;
        let mut der =
            hex::decode("3041020100301306072a8648ce3d020106082a8648ce3d030107042730250201010420")
                .unwrap();
        let mut scalar = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut scalar);
        scalar[0] &= 0x7f; // below the group order
        der.extend_from_slice(&scalar);
        Self {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&der),
        }
    }

    fn jwk(&self) -> Jwk {
        let mut jwk = Jwk::from_encoding_key(&self.encoding, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        jwk
    }

    pub(crate) fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// A JWKS endpoint on loopback serving whatever set the test puts in, counting fetches.
#[derive(Clone)]
pub(crate) struct JwksServer {
    url: String,
    set: Arc<Mutex<JwkSet>>,
    fetches: Arc<Mutex<u32>>,
}

impl JwksServer {
    pub(crate) async fn start(keys: &[&TestKey]) -> Self {
        let set = Arc::new(Mutex::new(JwkSet {
            keys: keys.iter().map(|k| k.jwk()).collect(),
        }));
        let fetches = Arc::new(Mutex::new(0));
        let (s, f) = (set.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/openid/v1/jwks",
            axum::routing::get(move || {
                let (s, f) = (s.clone(), f.clone());
                async move {
                    *f.lock().unwrap() += 1;
                    let body = serde_json::to_string(&*s.lock().unwrap()).unwrap();
                    ([("content-type", "application/json")], body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/openid/v1/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, set, fetches }
    }

    fn serve(&self, keys: &[&TestKey]) {
        self.set.lock().unwrap().keys = keys.iter().map(|k| k.jwk()).collect();
    }

    fn fetches(&self) -> u32 {
        *self.fetches.lock().unwrap()
    }
}

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const IDP: &str = "https://login.example.com";
const SUBJECT: &str = "system:serviceaccount:checkout:checkout-app";

fn issuer(iss: &str, url: &str, audience: &str, min_refresh_s: u64) -> IssuerSettings {
    IssuerSettings {
        issuer: iss.into(),
        audiences: vec![audience.into()],
        jwks_url: Some(url.into()),
        ca_file: None,
        jwks_bearer_token_file: None,
        jwks_file: None,
        algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
        leeway_s: 0,
        refresh_interval_s: 3600,
        min_refresh_s,
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub(crate) fn sa_claims(aud: &str) -> Value {
    json!({"iss": ISSUER, "sub": SUBJECT, "aud": [aud], "iat": now(), "nbf": now() - 5, "exp": now() + 600})
}

async fn links_as(app: &TestApp, bearer: &str) -> reqwest::Response {
    app.client
        .get(app.url("/profile/alice/links"))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
}

async fn unauthorized_detail(resp: reqwest::Response) -> String {
    let (status, body) = problem(resp).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    body["detail"].as_str().unwrap().to_string()
}

pub(crate) fn jwt_app_settings(
    jwks: &JwksServer,
    idp: Option<&JwksServer>,
) -> impl FnOnce(&mut profile_gateway::settings::Settings) {
    let (k8s, idp) = (jwks.url.clone(), idp.map(|i| i.url.clone()));
    move |s| {
        s.auth
            .issuers
            .push(issuer(ISSUER, &k8s, "profile-gateway", 0));
        s.auth.callers.push(CallerSettings {
            name: "checkout-app".into(),
            issuer: Some(ISSUER.into()),
            subject: Some(SUBJECT.into()),
            scopes: vec!["profile:write".into(), "links:read".into()],
            ..Default::default()
        });
        if let Some(idp) = idp {
            s.auth.issuers.push(issuer(IDP, &idp, "profile-gateway", 0));
            s.auth.callers[2].require_user_assertion = true;
            s.auth.callers[2].user_assertion_issuer = Some(IDP.into());
        }
        profile_gateway::startup::validate(
            s,
            Mode::Production,
            &profile_gateway::startup::provider_names(),
        )
        .expect("JWT settings are valid");
    }
}

#[tokio::test]
async fn jwt_callers_are_verified_rule_by_rule() {
    let key = TestKey::ed25519("k1");
    let ec = TestKey::p256("ec1");
    let jwks = JwksServer::start(&[&key, &ec]).await;
    let app = spawn_app_with(jwt_app_settings(&jwks, None)).await;

    let ok = key.sign(&sa_claims("profile-gateway"));
    let resp = links_as(&app, &ok).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        links_as(&app, &ec.sign(&sa_claims("profile-gateway")))
            .await
            .status(),
        200
    );

    let mut expired = sa_claims("profile-gateway");
    expired["exp"] = json!(now() - 10);
    let mut early = sa_claims("profile-gateway");
    early["nbf"] = json!(now() + 600);
    let mut wrong_iss = sa_claims("profile-gateway");
    wrong_iss["iss"] = json!("https://evil.example");
    let mut other_sub = sa_claims("profile-gateway");
    other_sub["sub"] = json!("system:serviceaccount:other:app");
    let stranger = TestKey::ed25519("k1");
    let unknown_kid = TestKey::ed25519("nope");
    // alg confusion: HS256 with the issuer's public key bytes as the "secret".
    let public = serde_json::to_vec(&key.jwk()).unwrap();
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("k1".into());
    let confused = jsonwebtoken::encode(
        &hs,
        &sa_claims("profile-gateway"),
        &EncodingKey::from_secret(&public).unwrap(),
    )
    .unwrap();
    let (_, rest) = ok.split_once('.').unwrap();
    let none_alg = format!(
        "{}.{}",
        base64_url(br#"{"alg":"none","kid":"k1"}"#),
        rest.rsplit_once('.').unwrap().0
    ) + ".";
    for (token, rule) in [
        (key.sign(&expired), "expired"),
        (key.sign(&early), "not valid yet"),
        (key.sign(&sa_claims("someone-else")), "audience"),
        (key.sign(&wrong_iss), "issuer"),
        (unknown_kid.sign(&sa_claims("profile-gateway")), "key id"),
        (stranger.sign(&sa_claims("profile-gateway")), "signature"),
        (confused, "algorithm"),
        (none_alg, "JWT"),
        (key.sign(&other_sub), "subject"),
    ] {
        let detail = unauthorized_detail(links_as(&app, &token).await).await;
        assert!(detail.contains(rule), "{rule}: {detail}");
        assert!(!detail.contains(&token[..20]), "the token is never echoed");
    }
    assert_eq!(app.count("select count(*) from changes").await, 0);
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn jwks_key_rotation_takes_effect_after_one_refresh() {
    let old = TestKey::ed25519("2026-old");
    let jwks = JwksServer::start(&[&old]).await;
    let app = spawn_app_with(jwt_app_settings(&jwks, None)).await;
    assert_eq!(
        links_as(&app, &old.sign(&sa_claims("profile-gateway")))
            .await
            .status(),
        200
    );
    let fetched = jwks.fetches();

    // The issuer rotates: the new key is published, the old one removed.
    let new = TestKey::p256("2026-new");
    jwks.serve(&[&new]);
    assert_eq!(
        links_as(&app, &new.sign(&sa_claims("profile-gateway")))
            .await
            .status(),
        200
    );
    assert_eq!(
        jwks.fetches(),
        fetched + 1,
        "one refresh, on the unknown kid"
    );
    let detail =
        unauthorized_detail(links_as(&app, &old.sign(&sa_claims("profile-gateway"))).await).await;
    assert!(detail.contains("key id"), "{detail}");

    let ready: Value = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["issuers"][0]["issuer"], ISSUER);
    assert_eq!(ready["issuers"][0]["keys_current"], true);
}

#[tokio::test]
async fn unknown_kids_refresh_at_most_once_per_min_refresh_and_unreachable_issuers_fail_closed() {
    let key = TestKey::ed25519("k1");
    let jwks = JwksServer::start(&[&key]).await;
    let url = jwks.url.clone();
    let app = spawn_app_with(move |s| {
        s.auth
            .issuers
            .push(issuer(ISSUER, &url, "profile-gateway", 3600));
        s.auth
            .issuers
            .push(issuer(IDP, "http://127.0.0.1:9/jwks", "profile-gateway", 0));
        s.auth.callers.push(CallerSettings {
            name: "checkout-app".into(),
            issuer: Some(ISSUER.into()),
            subject: Some(SUBJECT.into()),
            scopes: vec!["links:read".into()],
            ..Default::default()
        });
    })
    .await;
    assert_eq!(
        links_as(&app, &key.sign(&sa_claims("profile-gateway")))
            .await
            .status(),
        200
    );
    let fetched = jwks.fetches();
    for i in 0..5 {
        let t = TestKey::ed25519(&format!("random-{i}")).sign(&sa_claims("profile-gateway"));
        assert_eq!(links_as(&app, &t).await.status(), 401);
    }
    assert!(
        jwks.fetches() <= fetched + 1,
        "unknown kids cannot make the gateway hammer the issuer"
    );

    let mut claims = sa_claims("profile-gateway");
    claims["iss"] = json!(IDP);
    let detail = unauthorized_detail(links_as(&app, &key.sign(&claims)).await).await;
    assert!(detail.contains("cannot be fetched"), "{detail}");
    let ready: Value = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["issuers"][1]["keys_current"], false, "{ready}");
    assert!(ready["issuers"][1]["last_error"].is_string(), "{ready}");
}

// ---- End-user assertions ---------------------------------------------------------------------

pub(crate) fn assertion(idp: &TestKey, sub: &str, jti: &str, life: i64) -> String {
    idp.sign(&json!({"iss": IDP, "sub": sub, "aud": "profile-gateway", "iat": now(), "exp": now() + life, "jti": jti}))
}

async fn patch_as(
    app: &TestApp,
    bearer: &str,
    user: &str,
    key: &str,
    assertion: Option<&str>,
) -> reqwest::Response {
    let mut req = app
        .client
        .patch(app.url(&format!("/profile/{user}")))
        .bearer_auth(bearer)
        .header("idempotency-key", key)
        .json(&json!({"email_address": "alice.jwt@example.com"}));
    if let Some(a) = assertion {
        req = req.header("user-assertion", a);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn end_user_assertions_bind_a_change_to_the_signed_in_user_once() {
    let sa = TestKey::ed25519("sa");
    let idp_key = TestKey::p256("idp");
    let k8s = JwksServer::start(&[&sa]).await;
    let idp = JwksServer::start(&[&idp_key]).await;
    let app = spawn_app_with(jwt_app_settings(&k8s, Some(&idp))).await;
    let bearer = sa.sign(&sa_claims("profile-gateway"));
    let key = || uuid::Uuid::new_v4().to_string();

    let refused = [
        (None, 401, "user_assertion_required"),
        (
            Some(assertion(&idp_key, "bob", "j-bob", 60)),
            403,
            "user_assertion_mismatch",
        ),
        (
            Some(assertion(&idp_key, "alice", "j-long", 3600)),
            401,
            "user_assertion_invalid",
        ),
        (
            Some(assertion(&TestKey::p256("idp"), "alice", "j-forged", 60)),
            401,
            "user_assertion_invalid",
        ),
    ];
    for (a, status, code) in refused {
        let (s, body) = problem(patch_as(&app, &bearer, "alice", &key(), a.as_deref()).await).await;
        assert_eq!((s, body["code"].as_str()), (status, Some(code)), "{body}");
    }
    assert_eq!(app.count("select count(*) from changes").await, 0);
    assert!(app.journal().is_empty());

    let a = assertion(&idp_key, "alice", "j-1", 120);
    let k = key();
    let resp = patch_as(&app, &bearer, "alice", &k, Some(&a)).await;
    assert_eq!(resp.status(), 200);
    // A network retry (same key, same assertion) replays; any other use of the jti is refused.
    let resp = patch_as(&app, &bearer, "alice", &k, Some(&a)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["idempotent-replayed"], "true");
    let (s, body) = problem(patch_as(&app, &bearer, "alice", &key(), Some(&a)).await).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (409, Some("user_assertion_replayed"))
    );
    assert_eq!(app.count("select count(*) from changes").await, 1);

    // Who acted: the caller, how it authenticated, its subject, the end user and the jti.
    let row: (String, String, String, String, String, String) = sqlx::query_as(
        "select caller, auth_method, caller_subject, end_user_subject, end_user_assertion_jti, gateway_request_id
           from audit_log where event_type = 'change_requested'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(row.0, "checkout-app");
    assert_eq!(row.1, format!("jwt:{ISSUER}"));
    assert_eq!(row.2, SUBJECT);
    assert_eq!(row.3, "alice");
    assert_eq!(row.4, "j-1");
    assert!(uuid::Uuid::parse_str(&row.5).is_ok());
}

/// Who acted is part of every event of a change and of its hash (migration 20261201000700): the
/// request, each attempt and the completion carry the actor in their own row, `audit_log` shows
/// it from there (not from the `changes` row, which the gateway's role may update), and an edit
/// of it is caught by `audit verify`, whether or not the editor re-hashed the event.
#[tokio::test]
async fn who_acted_is_in_every_event_of_a_change_and_covered_by_its_hash() {
    use profile_gateway::audit::verify::{self, Filter, ProblemKind};

    let sa = TestKey::ed25519("sa");
    let idp_key = TestKey::p256("idp");
    let k8s = JwksServer::start(&[&sa]).await;
    let idp = JwksServer::start(&[&idp_key]).await;
    let app = spawn_app_with(jwt_app_settings(&k8s, Some(&idp))).await;
    let bearer = sa.sign(&sa_claims("profile-gateway"));
    let a = assertion(&idp_key, "alice", "j-who", 120);
    let key = uuid::Uuid::new_v4().to_string();
    let resp = patch_as(&app, &bearer, "alice", &key, Some(&a)).await;
    assert_eq!(resp.status(), 200);
    let change: Value = resp.json().await.unwrap();
    assert_eq!(change["status"], "applied", "{change}");
    let change_id: uuid::Uuid = change["change_id"].as_str().unwrap().parse().unwrap();

    // Every event of the change, in the row itself.
    let rows: Vec<(i64, String, Option<Value>)> = sqlx::query_as(
        "select seq, event_type, actor from audit_events where change_id = $1 order by seq",
    )
    .bind(change_id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let kinds: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"change_requested"), "{kinds:?}");
    assert_eq!(kinds, ["change_requested", "change_completed"]);
    let actor = rows[0]
        .2
        .clone()
        .expect("the request event carries its actor");
    let gateway_request_id = actor["gateway_request_id"].as_str().unwrap().to_string();
    assert!(
        uuid::Uuid::parse_str(&gateway_request_id).is_ok(),
        "{actor}"
    );
    assert_eq!(
        actor,
        json!({
            "auth": format!("jwt:{ISSUER}"),
            "subject": SUBJECT,
            "assertion_subject": "alice",
            "assertion_jti": "j-who",
            "gateway_request_id": gateway_request_id,
        })
    );
    for (seq, kind, a) in &rows {
        assert_eq!(a.as_ref(), Some(&actor), "seq {seq} ({kind})");
    }

    // And in audit_log, from the event.
    let who = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<
            _,
            (
                String,
                String,
                String,
                String,
                String,
                String,
                String,
                String,
            ),
        >(
            "select event_type, caller, auth_method, caller_subject, end_user_subject,
                    end_user_assertion_jti, gateway_request_id, actor_source
               from audit_log where change_id = $1 order by user_event_seq",
        )
        .bind(change_id)
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let expected: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.1.clone(),
                "checkout-app".to_string(),
                format!("jwt:{ISSUER}"),
                SUBJECT.to_string(),
                "alice".to_string(),
                "j-who".to_string(),
                gateway_request_id.clone(),
                "event".to_string(),
            )
        })
        .collect();
    assert_eq!(who(app.pool.clone()).await, expected);

    // The gateway's role may update the change row; what audit_log shows does not move.
    let app_role = sqlx::PgPool::connect(&format!(
        "{}/{}",
        admin_url().rsplit_once('/').unwrap().0.replacen(
            "://postgres@",
            &format!("://{APP_LOGIN}@"),
            1
        ),
        app.db_name
    ))
    .await
    .unwrap();
    let updated = sqlx::query(
        r#"update changes set actor = '{"auth": "token", "subject": "mallory", "assertion_subject": "bob",
                                        "assertion_jti": "j-forged", "gateway_request_id": "forged"}'
            where id = $1"#,
    )
    .bind(change_id)
    .execute(&app_role)
    .await
    .unwrap();
    assert_eq!(updated.rows_affected(), 1);
    assert_eq!(who(app.pool.clone()).await, expected);

    // Link events carry the actor in the same column, no longer inside their values.
    let (links_actor, in_values): (Option<Value>, bool) = sqlx::query_as(
        "select actor, \"values\" ? 'actor' from audit_events
          where user_id = 'alice' and event_type = 'links_updated' order by seq limit 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(links_actor.unwrap()["auth"], "system");
    assert!(!in_values);

    let clean = verify::verify(&mut app.pool.acquire().await.unwrap(), &Filter::default())
        .await
        .unwrap();
    assert!(clean.is_ok(), "{:?}", clean.problems);

    // Rewriting who acted of an event some other event links to (the request; its completion
    // follows): as it is, re-hashed with the v1 rules (actor dropped, so it looks like an older
    // gateway's event), or re-hashed with v2.
    let (mid_seq, last_seq) = (rows[0].0, rows.last().unwrap().0);
    let forged = r#"'{"auth": "token", "subject": "mallory", "assertion_subject": "alice", "assertion_jti": "j-who", "gateway_request_id": "x"}'"#;
    let tamperings = [
        (
            format!("update audit_events set actor = {forged} where change_id = '{change_id}' and seq = {mid_seq}"),
            ProblemKind::Altered,
            mid_seq,
        ),
        (
            format!(
                "update audit_events e set actor = null, format = null, hash = audit_event_hash(id, occurred_at, user_id, seq,
                        prev_hash, event_type, caller, outcome, change_id, step_no, target, upstream_ref, fields,
                        \"values\", hmac_key_id, error_code, request_id, trace_id, caller_addr)
                  where change_id = '{change_id}' and seq = {mid_seq}"
            ),
            ProblemKind::BrokenLink,
            mid_seq + 1,
        ),
        (
            format!(
                "update audit_events set actor = {forged} where change_id = '{change_id}' and seq = {mid_seq};
                 update audit_events e set hash = audit_event_row_hash(e) where change_id = '{change_id}' and seq = {mid_seq}"
            ),
            ProblemKind::BrokenLink,
            mid_seq + 1,
        ),
        // The last event re-hashed: nothing links to it, but the chain head does.
        (
            format!(
                "update audit_events set actor = {forged} where change_id = '{change_id}' and seq = {last_seq};
                 update audit_events e set hash = audit_event_row_hash(e) where change_id = '{change_id}' and seq = {last_seq}"
            ),
            ProblemKind::HeadMismatch,
            last_seq,
        ),
    ];
    for (sql, kind, seq) in tamperings {
        let mut tx = app.pool.begin().await.unwrap();
        sqlx::query(LOCK_THE_TRAIL).execute(&mut *tx).await.unwrap();
        sqlx::query("alter table audit_events disable trigger user")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::raw_sql(DROP_SEQ_INDEXES)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::raw_sql(&sql).execute(&mut *tx).await.unwrap();
        let report = verify::verify(&mut tx, &Filter::default()).await.unwrap();
        let found: Vec<_> = report
            .problems
            .iter()
            .map(|p| (p.user_id.as_str(), p.kind, p.seq))
            .collect();
        assert_eq!(found, [("alice", kind, Some(seq))], "{sql}");
        assert!(
            report.problems[0]
                .to_string()
                .starts_with(&format!("{} user=alice", kind.as_str())),
            "{}",
            report.problems[0]
        );
        tx.rollback().await.unwrap();
    }
}

// ---- Sandbox guard ---------------------------------------------------------------------------

#[tokio::test]
async fn the_sandbox_refuses_a_database_a_production_gateway_used() {
    let app = spawn_app().await;
    // The production gateway claims its database in the background.
    for _ in 0..100 {
        if app
            .count(
                "select count(*) from gateway_metadata where key = 'mode' and value = 'production'",
            )
            .await
            == 1
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let db_url = format!(
        "{}/{}",
        admin_url().rsplit_once('/').unwrap().0,
        app.db_name
    );
    let mut settings = base_settings(&db_url, &app.sandbox.base_url());
    settings.sandbox = true;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = match profile_gateway::startup::Application::build(&settings, listener).await {
        Ok(_) => panic!("the sandbox must refuse a production database"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&app.db_name), "{err}");
    assert!(err.contains("database.url"), "{err}");
    assert_eq!(
        app.count("select count(*) from profile_links").await,
        2,
        "no demo links seeded"
    );
}

// ---- Migration and fingerprints --------------------------------------------------------------

#[tokio::test]
async fn the_ownership_migration_stops_on_existing_duplicates_and_names_them() {
    use profile_gateway::db::MIGRATOR;
    let (_name, url) = fresh_database().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let before = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(
            MIGRATOR
                .migrations
                .iter()
                .filter(|m| m.version < 20261201000100)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before.run(&pool).await.unwrap();
    sqlx::query(
        "insert into profile_links (user_id, juspay_customer_id, juspay_wallet_ids, razorpay_customer_reference) values
           ('alice', 'cst_shared', '{wlt_a}', 'cref_a'),
           ('mallory', 'cst_shared', '{wlt_b}', 'cref_b'),
           ('bob', null, '{wlt_shared}', 'cref_c'),
           ('eve', null, '{wlt_shared, wlt_e}', 'cref_d')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let err = MIGRATOR.run(&pool).await.unwrap_err().to_string();
    // The failed run's session may keep the migration lock; the Job process would exit here.
    pool.close().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    assert!(
        err.contains("juspay_customer_id held by users 'alice', 'mallory'"),
        "{err}"
    );
    assert!(
        err.contains("juspay_wallet_ids held by users 'bob', 'eve'"),
        "{err}"
    );
    assert!(
        !err.contains("cst_shared") && !err.contains("wlt_shared"),
        "no object ids: {err}"
    );
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        count("select count(*) from profile_links").await,
        4,
        "no row dropped"
    );
    assert_eq!(
        count("select count(*) from _sqlx_migrations where version >= 20261201000100").await,
        0
    );
    // Once the operator resolves them, the migration goes through.
    for fix in [
        "update profile_links set juspay_customer_id = 'cst_m' where user_id = 'mallory'",
        "update profile_links set juspay_wallet_ids = '{wlt_e}' where user_id = 'eve'",
    ] {
        sqlx::query(fix).execute(&pool).await.unwrap();
    }
    MIGRATOR.run(&pool).await.unwrap();
    assert_eq!(
        count("select count(*) from user_links where provider = 'juspay_wallet'").await,
        4
    );
}

#[tokio::test]
async fn idempotency_fingerprints_are_keyed_and_old_ones_still_replay() {
    let app = spawn_app().await;
    let body = json!({"mobile_number": "9812345678"});
    let key = uuid::Uuid::new_v4().to_string();
    assert_eq!(app.patch_with_key("alice", &body, &key).await.status(), 200);
    let stored: Vec<u8> =
        sqlx::query_scalar("select fingerprint from idempotency_keys where idem_key = $1")
            .bind(&key)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((stored.len(), stored[0]), (33, 2), "version 2, HMAC");
    let unkeyed =
        profile_gateway::changes::idempotency::fingerprint("PATCH", "/profile/alice", &body);
    assert_ne!(
        &stored[1..],
        &unkeyed[..],
        "not the unkeyed hash a guess can be tested against"
    );

    // A key recorded before the change (version 1, unkeyed) still compares until it is reaped.
    sqlx::query("update idempotency_keys set fingerprint = $1 where idem_key = $2")
        .bind(&unkeyed)
        .bind(&key)
        .execute(&app.pool)
        .await
        .unwrap();
    let resp = app.patch_with_key("alice", &body, &key).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["idempotent-replayed"], "true");
    let (status, p) = problem(
        app.patch_with_key("alice", &json!({"mobile_number": "9812340000"}), &key)
            .await,
    )
    .await;
    assert_eq!(
        (status, p["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    assert_eq!(app.count("select count(*) from changes").await, 1);
}
