//! Spawns the gateway exactly as `main` does (through `Application::build`) against a fresh
//! database and a fresh sandbox.
//!
//! (Over ~400 lines on purpose: every test's setup lives here so that tests differ only in what they check; split, it would scatter them.)

use profile_gateway::providers::Registry;
use profile_gateway::settings::{CallerSettings, Mode, Settings};
use profile_gateway::startup::Application;
use serde_json::{Value, json};
use sqlx::PgPool;
use upstream_sandbox::{self as sandbox, JournalEntry, SandboxConfig, SandboxHandle};

pub const TOKEN: &str = "test-token-writer";
pub const READ_ONLY_TOKEN: &str = "test-token-reader";

/// What a superuser who rewrites the audit trail does besides disabling its triggers: drops the
/// per-partition unique indexes on (user_id, seq) and the plausible-time check (migration
/// 20261202000200), which would refuse a renumbered, re-dated or inserted event outright.
/// Taken first by a test that rewrites the audit trail, in the order the gateway's statements take
/// them (the user's row, then the audit tables), so the gateway's background work waits for the
/// test instead of deadlocking with it.
pub const LOCK_THE_TRAIL: &str = "lock table profile_links, audit_events, audit_chain_heads, audit_chain_anchors in access exclusive mode";

/// A transaction holding the trail locked as an attacker with superuser rights locks it first.
/// The gateway's background writers (completer, janitor, checkpoints) take some of these tables
/// in another order, so the LOCK may lose a deadlock to one of them: such an attempt did nothing
/// yet, and is made again.
pub async fn lock_the_trail(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    for _ in 0..20 {
        let mut tx = pool.begin().await.unwrap();
        match sqlx::query(LOCK_THE_TRAIL).execute(&mut *tx).await {
            Ok(_) => return tx,
            Err(e) if e.to_string().contains("deadlock detected") => {
                drop(tx);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{LOCK_THE_TRAIL}: {e}"),
        }
    }
    panic!("{LOCK_THE_TRAIL}: lost 20 deadlocks in a row")
}

pub const DROP_SEQ_INDEXES: &str = "do $$ declare i text; begin
    for i in select c.relname from pg_class c join pg_index x on x.indexrelid = c.oid
               join pg_inherits h on h.inhrelid = x.indrelid
              where h.inhparent = 'public.audit_events'::regclass and c.relname like '%user_seq'
    loop execute format('drop index %I', i); end loop;
    alter table audit_events drop constraint if exists audit_events_plausible_time; end $$";

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

pub struct TestApp {
    pub base: String,
    pub pool: PgPool,
    pub sandbox: SandboxHandle,
    pub client: reqwest::Client,
    #[allow(dead_code)]
    pub db_name: String,
    /// `http://addr` of the metrics listener, when `telemetry.metrics_listen` was set.
    #[allow(dead_code)]
    pub metrics_base: Option<String>,
}

pub fn base_settings(db_url: &str, sandbox_url: &str) -> Settings {
    let env: Vec<(String, String)> = vec![
        ("PROFILE_GATEWAY__DATABASE__URL".into(), db_url.into()),
        (
            "PROFILE_GATEWAY__JUSPAY__BASE_URL".into(),
            sandbox_url.into(),
        ),
        (
            "PROFILE_GATEWAY__JUSPAY__API_KEY".into(),
            sandbox::DEMO_JUSPAY_API_KEY.into(),
        ),
        (
            "PROFILE_GATEWAY__JUSPAY__MERCHANT_ID".into(),
            sandbox::DEMO_JUSPAY_MERCHANT_ID.into(),
        ),
        (
            "PROFILE_GATEWAY__RAZORPAY__BASE_URL".into(),
            sandbox_url.into(),
        ),
        (
            "PROFILE_GATEWAY__RAZORPAY__KEY_ID".into(),
            sandbox::DEMO_RAZORPAY_KEY_ID.into(),
        ),
        (
            "PROFILE_GATEWAY__RAZORPAY__KEY_SECRET".into(),
            sandbox::DEMO_RAZORPAY_KEY_SECRET.into(),
        ),
        (
            "PROFILE_GATEWAY__CHANGES__ENCRYPTION_KEY".into(),
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
        ),
        (
            "PROFILE_GATEWAY__AUDIT__HMAC_KEY".into(),
            "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=".into(),
        ),
        (
            "PROFILE_GATEWAY__PROVIDERS__ALL__TIMEOUT_MS".into(),
            "1500".into(),
        ),
        (
            "PROFILE_GATEWAY__DATABASE__MIGRATE_ON_START".into(),
            "true".into(),
        ),
        (
            "PROFILE_GATEWAY__DATABASE__MAX_CONNECTIONS".into(),
            "5".into(),
        ),
        // The in-process sandbox speaks plain HTTP on loopback.
        (
            "PROFILE_GATEWAY__UPSTREAM__ALLOW_PLAIN_HTTP".into(),
            "true".into(),
        ),
        (
            "PROFILE_GATEWAY__TELEMETRY__LOG_LEVEL".into(),
            "warn".into(),
        ),
    ];
    let mut s = Settings::load(None, env).expect("test settings load");
    s.auth.callers = vec![
        CallerSettings {
            name: "test-writer".into(),
            token_sha256: Some(profile_gateway::auth::token_sha256(TOKEN)),
            scopes: vec![
                "profile:write".into(),
                "profile:read".into(),
                "links:write".into(),
                "links:read".into(),
                "changes:operate".into(),
            ],
            ..Default::default()
        },
        CallerSettings {
            name: "test-reader".into(),
            token_sha256: Some(profile_gateway::auth::token_sha256(READ_ONLY_TOKEN)),
            scopes: vec!["profile:read".into(), "links:read".into()],
            ..Default::default()
        },
    ];
    profile_gateway::startup::validate(
        &s,
        Mode::Production,
        &profile_gateway::startup::provider_names(),
    )
    .expect("test settings are production-valid");
    s
}

pub async fn fresh_database() -> (String, String) {
    let name = format!("pgw_test_{}", uuid::Uuid::new_v4().simple());
    let admin = PgPool::connect(&admin_url())
        .await
        .expect("PostgreSQL must be running for the integration tests");
    sqlx::query(&format!("create database {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let url = format!("{}/{name}", admin_url().rsplit_once('/').unwrap().0);
    (name, url)
}

/// The login role the gateway runs as in production (docs/auditing.md, "Roles and grants").
pub const APP_LOGIN: &str = "pgw_test_gateway";

/// Migrates `db_url` as the superuser (the owner, as the migration Job does) and returns the URL
/// of the same database for [`APP_LOGIN`], a login role granted only profile_gateway_app.
pub async fn app_role_url(db_url: &str) -> String {
    let pool = PgPool::connect(db_url).await.unwrap();
    profile_gateway::db::migrate(&pool).await.unwrap();
    pool.close().await;
    ensure_login_role(APP_LOGIN, "profile_gateway_app").await;
    db_url.replacen("://postgres@", &format!("://{APP_LOGIN}@"), 1)
}

/// Creates login role `name` in group `group` unless it exists. Roles are cluster-wide and tests
/// run in parallel: one creator at a time (advisory locks are per database, so all take it in
/// the admin database).
pub async fn ensure_login_role(name: &str, group: &str) {
    let admin = PgPool::connect(&admin_url()).await.unwrap();
    let mut tx = admin.begin().await.unwrap();
    sqlx::query("select pg_advisory_xact_lock(hashtext('pgw_test_roles'))")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(&format!(
        "do $$ begin
           if not exists (select 1 from pg_roles where rolname = '{name}') then
             create role {name} login in role {group};
           end if;
         end $$"
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    admin.close().await;
}

pub async fn spawn_sandbox() -> SandboxHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    sandbox::spawn(SandboxConfig::default(), listener)
        .await
        .unwrap()
}

/// The app with demo links for `alice` and `bob`; `tweak` adjusts settings before the build.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with_providers(tweak, Registry::standard()).await
}

/// As [`spawn_app_with`], with the providers of `registry` (demo links at those of them that
/// have demo objects).
pub async fn spawn_app_with_providers(
    tweak: impl FnOnce(&mut Settings),
    registry: Registry,
) -> TestApp {
    let members = registry.link_members();
    let sandbox = spawn_sandbox().await;
    let (db_name, db_url) = fresh_database().await;
    let mut settings = base_settings(&app_role_url(&db_url).await, &sandbox.base_url());
    settings.database.migrate_on_start = false;
    tweak(&mut settings);
    profile_gateway::telemetry::init("pretty", &settings.telemetry.log_level);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = Application::build_with(&settings, listener, registry)
        .await
        .expect("app builds");
    let base = format!("http://{}", app.local_addr());
    let metrics_base = app.metrics_addr().map(|a| format!("http://{a}"));
    let pool = PgPool::connect(&db_url).await.unwrap();
    tokio::spawn(app.run_until(std::future::pending()));
    let t = TestApp {
        base,
        pool,
        sandbox,
        client: reqwest::Client::new(),
        db_name,
        metrics_base,
    };
    profile_gateway::demo::seed_links_at(&t.pool, &members)
        .await
        .unwrap();
    t.sandbox.clear_journal();
    // As a rollout would: traffic once readiness says so (its first database check is in the
    // background). A test of an unready state sees it here too, so this only waits, bounded.
    // A client that keeps no connection: tests of the connection cap count every open one.
    let probe = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(10) {
        let ready = probe.get(t.url("/health/ready")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    t
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A PATCH with a fresh Idempotency-Key.
    pub async fn patch(&self, user: &str, body: &Value) -> reqwest::Response {
        self.patch_with_key(user, body, &uuid::Uuid::new_v4().to_string())
            .await
    }

    pub async fn patch_with_key(&self, user: &str, body: &Value, key: &str) -> reqwest::Response {
        self.client
            .patch(self.url(&format!("/profile/{user}")))
            .bearer_auth(TOKEN)
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
    }

    /// Upstream calls the gateway made (admin calls are not journaled).
    pub fn journal(&self) -> Vec<JournalEntry> {
        self.sandbox.journal()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

pub fn upi_body(vpa: &str, action: &str) -> Value {
    json!({
        "upi_number": "9876543210", "vpa": vpa, "action": action, "consent": true,
        "device": {"fingerprint": "3f1c0d2e9a7b", "fingerprint_timestamp": now_ms()}
    })
}

/// Now in UNIX milliseconds: a device fingerprint must be recent (limits.fingerprint_max_age_ms).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub async fn problem(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(
        ct.as_deref(),
        Some("application/problem+json"),
        "status {status}"
    );
    let rid = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["code"].is_string()
            && body["type"].is_string()
            && body["title"].is_string()
            && body["detail"].is_string(),
        "{body}"
    );
    assert_eq!(
        body["request_id"].as_str(),
        rid.as_deref(),
        "request_id must match the x-request-id header"
    );
    (status, body)
}

/// One upstream call's budget at both Juspay providers (what `juspay.timeout_ms` sets).
pub fn juspay_timeout_ms(s: &mut Settings, ms: u64) {
    for provider in ["juspay_customer", "juspay_wallet"] {
        s.providers.section_mut(provider).timeout_ms = Some(ms);
    }
}

/// Settings under which every failure is final at once (no retries), to observe one attempt.
pub fn single_attempt(s: &mut Settings) {
    s.providers.all_mut().max_attempts = Some(1);
    s.providers.all_mut().in_request_attempts = Some(1);
}

/// The gateway as a real process, so it can be SIGKILLed.
pub struct Gateway {
    pub child: tokio::process::Child,
    pub base: String,
}

/// `extra_env` comes last and overrides the rest.
pub async fn start_gateway(
    app: &TestApp,
    config: &std::path::Path,
    failpoints: &str,
    extra_env: &[(&str, &str)],
) -> Gateway {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let sandbox = app.sandbox.base_url();
    // `serve` refuses the superuser outside sandbox mode.
    let db_url = format!(
        "{}/{}",
        admin_url().rsplit_once('/').unwrap().0,
        app.db_name
    );
    let gateway_url = app_role_url(&db_url).await;
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_profile-gateway"))
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "PROFILE_GATEWAY__SERVER__LISTEN",
            format!("127.0.0.1:{port}"),
        )
        .env("PROFILE_GATEWAY__DATABASE__URL", &gateway_url)
        .env("PROFILE_GATEWAY__JUSPAY__BASE_URL", &sandbox)
        .env("PROFILE_GATEWAY__UPSTREAM__ALLOW_PLAIN_HTTP", "true")
        // Killed replicas leave changes pending for the survivor: not refused for the bound.
        .env("PROFILE_GATEWAY__CHANGES__MAX_PENDING_PER_USER", "1000")
        .env("PROFILE_GATEWAY__JUSPAY__API_KEY", "sandbox_juspay_api_key")
        .env("PROFILE_GATEWAY__JUSPAY__MERCHANT_ID", "sandbox_merchant")
        .env("PROFILE_GATEWAY__RAZORPAY__BASE_URL", &sandbox)
        .env("PROFILE_GATEWAY__RAZORPAY__KEY_ID", "rzp_sandbox_key")
        .env(
            "PROFILE_GATEWAY__RAZORPAY__KEY_SECRET",
            "rzp_sandbox_secret",
        )
        .env(
            "PROFILE_GATEWAY__CHANGES__ENCRYPTION_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .env(
            "PROFILE_GATEWAY__AUDIT__HMAC_KEY",
            "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=",
        )
        .env("PROFILE_GATEWAY__CHANGES__LEASE_MS", "1000")
        .env("PROFILE_GATEWAY__CHANGES__COMPLETER_INTERVAL_MS", "100")
        .env("PROFILE_GATEWAY__PROVIDERS__ALL__RETRY_BASE_MS", "20")
        .env("PROFILE_GATEWAY__TELEMETRY__LOG_LEVEL", "error")
        .env("PROFILE_GATEWAY_FAILPOINTS", failpoints)
        .envs(extra_env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the gateway binary starts");
    let base = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    while reqwest::get(format!("{base}/health/ready"))
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "gateway did not become ready"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    Gateway { child, base }
}
