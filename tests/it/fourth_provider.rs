//! A provider the gateway does not ship, defined here and registered through the application
//! builder: its adapter, its links member, its settings and a tiny upstream of its own. A PATCH
//! fans out to it like to the standard three, and its step and audit events are recorded.

use crate::helpers::*;
use futures_util::future::BoxFuture;
use profile_gateway::domain::{Field, LinkMember, ProviderSpec, StepRequest, Target};
use profile_gateway::providers::{
    self, BuildContext, ProviderAdapter, Reading, Registry, StepError, StepResult, classify,
    http::ReadLimits,
};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

const ACME: Target = Target::new("acme_wallet");

const ACME_SPEC: ProviderSpec = ProviderSpec {
    target: ACME,
    link: LinkMember::one(ACME, "acme_wallet_id"),
    fields: &[Field::MobileNumber],
};

/// The provider's account settings, parsed by the provider itself from
/// `[providers.acme_wallet.account]`.
#[derive(Clone)]
struct AcmeSettings {
    base_url: String,
    api_key: String,
}

impl AcmeSettings {
    fn from_section(section: Option<&Value>) -> Result<Self, String> {
        let section = section.ok_or("[providers.acme_wallet.account] is required")?;
        let text = |k: &str| {
            section[k]
                .as_str()
                .map(str::to_string)
                .ok_or(format!("providers.acme_wallet.account.{k} is required"))
        };
        Ok(Self {
            base_url: text("base_url")?,
            api_key: text("api_key")?,
        })
    }
}

struct AcmeWallet {
    client: reqwest::Client,
    settings: AcmeSettings,
    /// Its traffic policy's timeout and body cap (`[providers.all]`, `[providers.acme_wallet]`).
    read: ReadLimits,
}

impl AcmeWallet {
    async fn update(&self, wallet: &str, mobile_number: &str) -> StepResult {
        let url = providers::endpoint(ACME, &self.settings.base_url, &["v2", "wallets", wallet])?;
        let request = self
            .client
            .put(url)
            .header("x-acme-key", providers::sensitive(&self.settings.api_key))
            .json(&json!({"phone": mobile_number}));
        let response = providers::exchange(ACME, request, &self.read, |_| {
            classify::ErrorFacts::default()
        })
        .await?;
        let echoed = response
            .json()
            .and_then(|v| v["phone"].as_str().map(String::from));
        if echoed.as_deref() != Some(mobile_number) {
            return Err(classify::bad_success(
                ACME,
                response.status,
                "its phone is not the number sent",
            ));
        }
        Ok(())
    }
}

impl ProviderAdapter for AcmeWallet {
    fn target(&self) -> Target {
        ACME
    }

    fn apply<'a>(&'a self, request: &'a StepRequest<'a>) -> BoxFuture<'a, StepResult> {
        Box::pin(async move {
            let number = request
                .value(Field::MobileNumber)
                .ok_or_else(|| providers::cannot_build(ACME))?;
            self.update(&request.step.upstream_ref, number).await
        })
    }

    fn read<'a>(
        &'a self,
        _request: &'a StepRequest<'a>,
    ) -> BoxFuture<'a, Result<Reading, StepError>> {
        // This upstream has no read: nothing is ever confirmed by reading it back.
        Box::pin(async move {
            Ok(Reading {
                identified: false,
                fields: Vec::new(),
            })
        })
    }
}

/// What the upstream received: method, path, the key header and the JSON body.
type Received = Arc<Mutex<Vec<(String, String, Option<String>, Value)>>>;

async fn spawn_acme_upstream() -> (String, Received) {
    let received: Received = Arc::default();
    let log = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/v2/wallets/{id}",
        axum::routing::put(
            move |axum::extract::Path(id): axum::extract::Path<String>,
                  headers: axum::http::HeaderMap,
                  axum::Json(body): axum::Json<Value>| {
                let log = Arc::clone(&log);
                async move {
                    let key = headers
                        .get("x-acme-key")
                        .and_then(|v| v.to_str().ok())
                        .map(String::from);
                    log.lock().unwrap().push((
                        "PUT".into(),
                        format!("/v2/wallets/{id}"),
                        key,
                        body.clone(),
                    ));
                    axum::Json(json!({"wallet": id, "phone": body["phone"]}))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, received)
}

fn registry() -> Registry {
    Registry::standard().with(ACME_SPEC, move |ctx: &BuildContext<'_>| {
        let settings = AcmeSettings::from_section(ctx.section)?;
        let adapter: Arc<dyn ProviderAdapter> = Arc::new(AcmeWallet {
            client: ctx.client.clone(),
            settings,
            read: ctx.read_limits(),
        });
        Ok(adapter)
    })
}

#[tokio::test]
async fn a_provider_registered_by_the_embedder_gets_its_step_rows_and_audit_events() {
    let (base_url, received) = spawn_acme_upstream().await;
    // Its settings section: its account, and a traffic key of its own over `[providers.all]`.
    let app = spawn_app_with_providers(
        |s| {
            let acme = s.providers.section_mut("acme_wallet");
            acme.account = Some(json!({"base_url": base_url, "api_key": "acme-test-key"}).into());
            acme.timeout_ms = Some(2_000);
        },
        registry(),
    )
    .await;

    // Its links member sits beside the standard ones, in the shape it declares.
    let links = json!({
        "juspay_customer_id": "cst_demo_alice",
        "juspay_wallet_ids": ["wlt_demo_alice_paytm"],
        "razorpay_customer_reference": "cref_demo_alice",
        "acme_wallet_id": "acme_alice",
    });
    let resp = app
        .client
        .put(app.url("/profile/alice/links"))
        .bearer_auth(TOKEN)
        .json(&links)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got: Value = app.get("/profile/alice/links").await.json().await.unwrap();
    assert_eq!(got, links);
    assert_eq!(
        app.count(
            "select count(*) from user_links
              where user_id = 'alice' and provider = 'acme_wallet'
                and object_id = 'acme_alice' and ordinal = 0"
        )
        .await,
        1
    );

    let resp = app
        .patch("alice", &json!({"mobile_number": "9812345678"}))
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "applied");
    let steps: Vec<(String, String, Value, String)> = body["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["target"].as_str().unwrap().into(),
                s["ref"].as_str().unwrap().into(),
                s["fields"].clone(),
                s["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    let fields = json!(["mobile_number"]);
    assert_eq!(
        steps,
        [
            (
                "juspay_customer".into(),
                "cst_demo_alice".into(),
                fields.clone(),
                "applied".into()
            ),
            (
                "juspay_wallet".into(),
                "wlt_demo_alice_paytm".into(),
                fields.clone(),
                "applied".into()
            ),
            (
                "acme_wallet".into(),
                "acme_alice".into(),
                fields.clone(),
                "applied".into()
            ),
        ]
    );

    // Its upstream got exactly the request its adapter builds.
    assert_eq!(
        *received.lock().unwrap(),
        [(
            "PUT".to_string(),
            "/v2/wallets/acme_alice".to_string(),
            Some("acme-test-key".to_string()),
            json!({"phone": "9812345678"}),
        )]
    );

    let change_id = body["change_id"].as_str().unwrap();
    let step_row: (String, String, Vec<String>, String) = sqlx::query_as(
        "select target, upstream_ref, fields, status from change_steps
          where change_id = $1::uuid and target = 'acme_wallet'",
    )
    .bind(change_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        step_row,
        (
            "acme_wallet".into(),
            "acme_alice".into(),
            vec!["mobile_number".into()],
            "applied".into()
        )
    );
    // Its attempt is in the change's final event, and the auditor view gives it the value the
    // change's request event recorded.
    let events: Vec<(String, String, Vec<String>, Value)> = sqlx::query_as(
        r#"select event_type, status, fields, masked_values from audit_step_attempts
            where change_id = $1::uuid and target = 'acme_wallet'"#,
    )
    .bind(change_id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let (event_type, outcome, fields, values) = &events[0];
    assert_eq!(
        (event_type.as_str(), outcome.as_str(), fields.as_slice()),
        (
            "change_completed",
            "applied",
            ["mobile_number".to_string()].as_slice()
        )
    );
    assert_eq!(values["mobile_number"]["new"], "******5678");

    // The change as read back shows its step too.
    let read: Value = app
        .get(&format!("/changes/{change_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["steps"], body["steps"]);
}

#[tokio::test]
async fn a_step_row_naming_an_unregistered_provider_is_an_error_not_another_provider() {
    let app = spawn_app().await;
    let resp = app
        .patch("alice", &json!({"email_address": "a.new@example.com"}))
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let change_id = body["change_id"].as_str().unwrap();
    sqlx::query(
        r#"update changes set steps = (select jsonb_object_agg(k, v || '{"target": "gone_provider"}')
                                         from jsonb_each(steps) s(k, v))
            where id = $1::uuid"#,
    )
    .bind(change_id)
    .execute(&app.pool)
    .await
    .unwrap();
    let resp = app.get(&format!("/changes/{change_id}")).await;
    assert_eq!(resp.status(), 500);
}

/// An adapter whose every call panics: a bug in a provider.
struct Panicking;

impl ProviderAdapter for Panicking {
    fn target(&self) -> Target {
        ACME
    }

    fn apply<'a>(&'a self, _request: &'a StepRequest<'a>) -> BoxFuture<'a, StepResult> {
        Box::pin(async move { panic!("a provider bug") })
    }

    fn read<'a>(
        &'a self,
        _request: &'a StepRequest<'a>,
    ) -> BoxFuture<'a, Result<Reading, StepError>> {
        Box::pin(async move { panic!("a provider bug") })
    }
}

#[tokio::test]
async fn a_drive_that_panics_still_answers_202_and_its_key_replays() {
    // Alone, so the change is only its step.
    let registry = Registry::empty().with(ACME_SPEC, |_ctx: &BuildContext<'_>| {
        let adapter: Arc<dyn ProviderAdapter> = Arc::new(Panicking);
        Ok(adapter)
    });
    let app = spawn_app_with_providers(|_| {}, registry).await;
    let resp = app
        .client
        .put(app.url("/profile/alice/links"))
        .bearer_auth(TOKEN)
        .json(&json!({"acme_wallet_id": "acme_alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = json!({"mobile_number": "9812345678"});
    let key = "panic-key-0000000001";

    // Recorded before the panic: the caller learns it is in progress, not a 500.
    let first = app.patch_with_key("alice", &body, key).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["status"], "pending");
    // The key was marked answered: a retry replays the change instead of 409 in flight.
    let again = app.patch_with_key("alice", &body, key).await;
    assert_eq!(again.status(), 202);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["change_id"], first["change_id"]);
}
