//! `serve --sandbox`: the gateway wired to an in-process upstream simulator, with demo users and a
//! demo caller, so a team can try the API with two commands and no credentials.

use crate::domain::{LinkMember, ProfileLinks, Target, UserId};
use crate::secret::Secret;
use crate::settings::{CallerSettings, Settings};
use upstream_sandbox::{self as sandbox, DEMO_WEBHOOK_SECRET, SandboxConfig, SandboxHandle};

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
    settings.sandbox = true;
    if !settings.auth.callers.iter().any(|c| c.name == "demo") {
        settings.auth.callers.push(CallerSettings {
            name: "demo".into(),
            token_sha256: Some(crate::auth::token_sha256(DEMO_TOKEN)),
            // Written out (no "*"): what the demo and the conformance run need, and no more.
            scopes: [
                crate::auth::SCOPE_WRITE,
                crate::auth::SCOPE_READ,
                crate::auth::SCOPE_LINKS_READ,
                crate::auth::SCOPE_LINKS_WRITE,
                crate::auth::SCOPE_OPERATE,
            ]
            .map(String::from)
            .to_vec(),
            // Outcome webhooks go to the simulator's receiver: GET /__sandbox/webhooks shows them.
            webhook_url: Some(handle.webhook_url()),
            webhook_secret: Some(Secret::new(sandbox::DEMO_WEBHOOK_SECRET)),
            ..Default::default()
        });
    }
    Ok(handle)
}

/// The simulator's demo objects of each demo user, by provider.
const DEMO_OBJECTS: [(&str, Target, &[&str]); 6] = [
    ("alice", Target::JUSPAY_CUSTOMER, &["cst_demo_alice"]),
    (
        "alice",
        Target::JUSPAY_WALLET,
        &["wlt_demo_alice_paytm", "wlt_demo_alice_mobikwik"],
    ),
    ("alice", Target::RAZORPAY_UPI, &["cref_demo_alice"]),
    ("bob", Target::JUSPAY_CUSTOMER, &["cst_demo_bob"]),
    ("bob", Target::JUSPAY_WALLET, &["wlt_demo_bob_paytm"]),
    ("bob", Target::RAZORPAY_UPI, &["cref_demo_bob"]),
];

/// The demo users and their links at `members` (a provider without demo objects gets none).
pub fn demo_links(members: &[LinkMember]) -> Vec<(&'static str, ProfileLinks)> {
    ["alice", "bob"]
        .into_iter()
        .map(|user| {
            let links = DEMO_OBJECTS
                .iter()
                .filter(|(u, _, _)| *u == user)
                .fold(ProfileLinks::empty(members), |l, (_, target, ids)| {
                    l.with(*target, ids)
                });
            (user, links)
        })
        .collect()
}

/// Links the demo users to the simulator's demo objects at the standard providers.
pub async fn seed_links(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    seed_links_at(pool, &crate::providers::Registry::standard().link_members()).await
}

/// As [`seed_links`], for the providers whose members are `members`.
pub async fn seed_links_at(pool: &sqlx::PgPool, members: &[LinkMember]) -> Result<(), sqlx::Error> {
    let origin = crate::domain::Origin::at_edge("sandbox-seed".into(), None, None)
        .acted_by("sandbox-seed", crate::domain::Actor::system());
    for (user, links) in demo_links(members) {
        let user = UserId::parse(user).expect("demo user ids are valid");
        if crate::store::links::get(pool, &user, members)
            .await?
            .as_ref()
            != Some(&links)
            && let crate::store::links::PutOutcome::Conflict(_) =
                crate::store::links::put(pool, &user, &links, &origin).await?
        {
            return Err(sqlx::Error::Protocol(format!(
                "the demo objects of {user} are linked to another user"
            )));
        }
    }
    Ok(())
}

/// Where the sandbox listens: loopback unless `server.listen` was set explicitly (by the settings
/// file or `PROFILE_GATEWAY__SERVER__LISTEN`); another address is allowed, with a warning, since
/// the demo token is published.
pub fn sandbox_listen(settings: &mut Settings, config: &[std::path::PathBuf]) {
    let in_env = std::env::var_os("PROFILE_GATEWAY__SERVER__LISTEN").is_some();
    let in_file = config.iter().any(|path| {
        config::Config::builder()
            .add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml))
            .build()
            .is_ok_and(|c| c.get_string("server.listen").is_ok())
    });
    if !(in_env || in_file) {
        settings.server.listen = "127.0.0.1:8080".into();
    }
    let loopback = settings
        .server
        .listen
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback());
    if !loopback {
        tracing::warn!(listen = %settings.server.listen, "SANDBOX MODE on a non-loopback address: anyone who can reach it can use the published demo token");
    }
}

pub fn banner(addr: std::net::SocketAddr, sandbox_url: &str) -> String {
    let port = addr.port();
    format!(
        r#"
================================================================================
 SANDBOX MODE: upstreams are simulated at {sandbox_url}; no real provider is called.
 Demo caller token: {DEMO_TOKEN}
 Demo users: alice, bob (links already set)
 Its outcome webhooks: curl -sS {sandbox_url}/__sandbox/webhooks
 (signed with {DEMO_WEBHOOK_SECRET})

 Try:
   curl -sS -X PATCH http://127.0.0.1:{port}/profile/alice \
     -H 'Authorization: Bearer {DEMO_TOKEN}' -H 'Content-Type: application/json' \
     -H "Idempotency-Key: $(cat /proc/sys/kernel/random/uuid)" \
     -d '{{"mobile_number":"9812345678","email_address":"alice.new@example.com","upi":{{"upi_number":"9876543210","vpa":"alice.new@okaxis","action":"change_vpa","consent":true,"device":{{"fingerprint":"3f1c0d2e9a","fingerprint_timestamp":'"$(date +%s000)"'}}}}}}'
================================================================================
"#
    )
}
