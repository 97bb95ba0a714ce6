//! `serve --sandbox`: the gateway wired to an in-process upstream simulator, with demo users and a
//! demo caller, so a team can try the API with two commands and no credentials.

use crate::audit::AuditContext;
use crate::domain::{ProfileLinks, UserId};
use crate::sandbox::{self, SandboxConfig, SandboxHandle};
use crate::secret::Secret;
use crate::settings::{CallerSettings, Settings};

/// The demo caller's bearer token. Printed at start; only ever accepted in sandbox mode.
pub const DEMO_TOKEN: &str = "sandbox-demo-token";

/// Starts the simulator on a loopback port and points every upstream setting at it. Whatever the
/// configuration said about upstreams is overridden: sandbox mode never talks to a real provider.
pub async fn start_sandbox(settings: &mut Settings) -> std::io::Result<SandboxHandle> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let handle = sandbox::spawn(SandboxConfig::default(), listener).await?;
    let base = handle.base_url();
    settings.juspay.base_url = Some(base.clone());
    settings.juspay.api_key = Some(Secret::new(sandbox::DEMO_JUSPAY_API_KEY));
    settings.juspay.merchant_id = Some(sandbox::DEMO_JUSPAY_MERCHANT_ID.to_string());
    settings.razorpay.base_url = Some(base);
    settings.razorpay.key_id = Some(sandbox::DEMO_RAZORPAY_KEY_ID.to_string());
    settings.razorpay.key_secret = Some(Secret::new(sandbox::DEMO_RAZORPAY_KEY_SECRET));
    settings.database.migrate_on_start = true;
    if !settings.auth.callers.iter().any(|c| c.name == "demo") {
        settings.auth.callers.push(CallerSettings {
            name: "demo".into(),
            token_sha256: crate::auth::token_sha256(DEMO_TOKEN),
            scopes: Vec::new(),
            rate_per_s: None,
            burst: None,
        });
    }
    Ok(handle)
}

/// The demo users and their links to the simulator's demo data.
pub fn demo_links() -> Vec<(&'static str, ProfileLinks)> {
    vec![
        (
            "alice",
            ProfileLinks {
                juspay_customer_id: Some("cst_demo_alice".into()),
                juspay_wallet_ids: vec![
                    "wlt_demo_alice_paytm".into(),
                    "wlt_demo_alice_mobikwik".into(),
                ],
                razorpay_customer_reference: Some("cref_demo_alice".into()),
            },
        ),
        (
            "bob",
            ProfileLinks {
                juspay_customer_id: Some("cst_demo_bob".into()),
                juspay_wallet_ids: vec!["wlt_demo_bob_paytm".into()],
                razorpay_customer_reference: Some("cref_demo_bob".into()),
            },
        ),
    ]
}

pub async fn seed_links(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    let ctx = AuditContext {
        caller: "sandbox-seed".into(),
        request_id: "sandbox-seed".into(),
        trace_id: None,
        caller_addr: None,
    };
    for (user, links) in demo_links() {
        let user = UserId::parse(user).expect("demo user ids are valid");
        if crate::store::links::get(pool, &user).await?.as_ref() != Some(&links) {
            crate::store::links::put(pool, &user, &links, &ctx).await?;
        }
    }
    Ok(())
}

pub fn banner(addr: std::net::SocketAddr, sandbox_url: &str) -> String {
    let port = addr.port();
    format!(
        r#"
================================================================================
 SANDBOX MODE: upstreams are simulated at {sandbox_url}; no real provider is called.
 Demo caller token: {DEMO_TOKEN}
 Demo users: alice, bob (links already set)

 Try:
   curl -sS -X PATCH http://127.0.0.1:{port}/profile/alice \
     -H 'Authorization: Bearer {DEMO_TOKEN}' -H 'Content-Type: application/json' \
     -H "Idempotency-Key: $(cat /proc/sys/kernel/random/uuid)" \
     -d '{{"mobile_number":"9812345678","email_address":"alice.new@example.com","upi":{{"upi_number":"9876543210","vpa":"alice.new@okaxis","action":"change_vpa","consent":true,"device":{{"fingerprint":"3f1c0d2e9a","fingerprint_timestamp":'"$(date +%s000)"'}}}}}}'
================================================================================
"#
    )
}
