//! The lifecycle the kubelet sees: readiness that tells the truth about the schema and the
//! drain, not about upstreams or pool pressure; SIGTERM that loses nothing (the real binary, as a
//! child process); `migrate` from two pods at once.
//!
//! (Over ~400 lines on purpose: each probe and drain rule is one test over the same process fixtures; split, it would scatter them.)

use crate::helpers::*;
use profile_gateway::db;
use profile_gateway::settings::Settings;
use profile_gateway::startup::Application;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use upstream_sandbox::{FaultSpec, SandboxHandle};

const BIN: &str = env!("CARGO_BIN_EXE_profile-gateway");

fn fast_health(s: &mut Settings) {
    s.database.health_check_interval_ms = 100;
    s.database.health_unreachable_after_ms = 1000;
}

fn newest_migration() -> i64 {
    *profile_gateway::lifecycle::binary_versions()
        .last()
        .unwrap()
}

/// Builds and serves the app; returns its base URL and a clone of its request pool.
async fn serve(settings: &Settings) -> (String, PgPool) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = Application::build(settings, listener).await.unwrap();
    let base = format!("http://{}", app.local_addr());
    let pool = app.pool.clone();
    tokio::spawn(app.run_until(std::future::pending()));
    (base, pool)
}

async fn ready(base: &str) -> (u16, Value) {
    let resp = reqwest::get(format!("{base}/health/ready")).await.unwrap();
    let status = resp.status().as_u16();
    if status == 200 {
        return (status, resp.json().await.unwrap());
    }
    problem(resp).await
}

/// Polls readiness until `want` or `within` passes; returns the last answer.
async fn await_ready_status(base: &str, want: u16, within: Duration) -> (u16, Value) {
    let started = Instant::now();
    loop {
        let (status, body) = ready(base).await;
        // "starting" is the answer before the first check; wait past it.
        let starting = body["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("starting"));
        if (status == want && !starting) || started.elapsed() > within {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Readiness stays 200 on every poll for `during`.
async fn assert_stays_ready(base: &str, during: Duration) {
    let started = Instant::now();
    while started.elapsed() < during {
        let (status, body) = ready(base).await;
        assert_eq!(status, 200, "readiness flapped: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn readiness_is_503_on_an_unmigrated_database_until_migrate_runs() {
    let sandbox = spawn_sandbox().await;
    let (_name, url) = fresh_database().await;
    let mut s = base_settings(&url, &sandbox.base_url());
    s.database.migrate_on_start = false;
    fast_health(&mut s);
    let (base, _) = serve(&s).await;

    let (status, p) = await_ready_status(&base, 503, Duration::from_secs(5)).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (503, Some("not_ready")),
        "{p}"
    );
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.starts_with("schema not migrated"), "{detail}");
    assert!(
        detail.contains(&newest_migration().to_string()),
        "the reason names the expected migration: {detail}"
    );
    let live = reqwest::get(format!("{base}/health/live")).await.unwrap();
    assert_eq!(live.status(), 200, "liveness never depends on the database");

    let pool = PgPool::connect(&url).await.unwrap();
    db::migrate(&pool).await.unwrap();
    let (status, body) = await_ready_status(&base, 200, Duration::from_secs(5)).await;
    assert_eq!(status, 200, "ready once migrated: {body}");
    assert_eq!(body, json!({"status": "ready"}));
}

/// Applies every migration of the binary but the newest, from a copy of migrations/.
async fn migrate_all_but_newest(pool: &PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = std::fs::read_dir(&source)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    let newest = files.pop().unwrap();
    assert!(
        newest
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&newest_migration().to_string())
    );
    for f in files {
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    sqlx::migrate::Migrator::new(dir.path())
        .await
        .unwrap()
        .run(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn readiness_is_503_one_migration_behind_and_200_when_the_schema_is_ahead() {
    let sandbox = spawn_sandbox().await;
    let (_name, url) = fresh_database().await;
    let pool = PgPool::connect(&url).await.unwrap();
    migrate_all_but_newest(&pool).await;
    let mut s = base_settings(&url, &sandbox.base_url());
    s.database.migrate_on_start = false;
    fast_health(&mut s);
    let (base, _) = serve(&s).await;

    let (status, p) = await_ready_status(&base, 503, Duration::from_secs(5)).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (503, Some("not_ready")),
        "{p}"
    );
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("schema behind: 1 migration(s) not applied"),
        "{detail}"
    );
    assert!(detail.contains(&newest_migration().to_string()), "{detail}");

    db::migrate(&pool).await.unwrap();
    assert_eq!(
        await_ready_status(&base, 200, Duration::from_secs(5))
            .await
            .0,
        200
    );
    // A newer binary's expand-only migration: this (older) binary stays ready, and its own
    // migrate is a no-op rather than an error.
    sqlx::query(
        "insert into _sqlx_migrations (version, description, success, checksum, execution_time)
         values (29991231000000, 'from a newer binary', true, '\\x00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    db::migrate(&pool).await.unwrap();
    assert_stays_ready(&base, Duration::from_millis(600)).await;
}

#[tokio::test]
async fn readiness_stays_200_with_the_request_pool_saturated() {
    let sandbox = spawn_sandbox().await;
    let (_name, url) = fresh_database().await;
    let mut s = base_settings(&url, &sandbox.base_url());
    s.database.max_connections = 2;
    s.database.acquire_timeout_ms = 300;
    fast_health(&mut s);
    let (base, pool) = serve(&s).await;
    assert_eq!(
        await_ready_status(&base, 200, Duration::from_secs(5))
            .await
            .0,
        200
    );
    // Take every connection the request pool will give (the LISTEN task may hold one already).
    let mut held = Vec::new();
    while let Ok(conn) = pool.acquire().await {
        held.push(conn);
    }
    assert!(!held.is_empty());
    assert_eq!(
        (pool.size(), pool.num_idle()),
        (2, 0),
        "the request pool is saturated"
    );
    // Longer than health_unreachable_after_ms: a probe that needed a pool connection would fail.
    assert_stays_ready(&base, Duration::from_millis(2000)).await;
    drop(held);
}

#[tokio::test]
async fn readiness_stays_200_with_every_upstream_failing() {
    let app = spawn_app_with(|s| {
        fast_health(s);
        single_attempt(s);
    })
    .await;
    assert_eq!(
        await_ready_status(&app.base, 200, Duration::from_secs(5))
            .await
            .0,
        200
    );
    app.sandbox.add_fault(FaultSpec::status(
        "*",
        503,
        "unavailable",
        Some("text/plain"),
    ));
    let (status, p) = problem(app.patch("alice", &json!({"first_name": "Alicia"})).await).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (502, Some("upstream_unavailable")),
        "{p}"
    );
    assert_stays_ready(&app.base, Duration::from_millis(1500)).await;
}

/// A TCP relay to PostgreSQL that a test can cut (closing every relayed connection and refusing
/// new ones) and restore: a database outage as the gateway sees it.
struct DbRelay {
    addr: std::net::SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    kill: Arc<Mutex<tokio_util::sync::CancellationToken>>,
}

impl DbRelay {
    async fn start(target: String) -> DbRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = DbRelay {
            addr: listener.local_addr().unwrap(),
            cut: Arc::default(),
            kill: Arc::default(),
        };
        let (cut, kill) = (Arc::clone(&relay.cut), Arc::clone(&relay.kill));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if cut.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let stop = kill.lock().unwrap().clone();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        relay
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut kill = self.kill.lock().unwrap();
        kill.cancel();
        *kill = tokio_util::sync::CancellationToken::new();
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn readiness_is_503_after_the_database_is_unreachable_for_a_while_and_recovers() {
    let sandbox = spawn_sandbox().await;
    let (_name, url) = fresh_database().await;
    let mut direct = url::Url::parse(&url).unwrap();
    let target = format!(
        "{}:{}",
        direct.host_str().unwrap(),
        direct.port().unwrap_or(5432)
    );
    let relay = DbRelay::start(target).await;
    direct.set_port(Some(relay.addr.port())).unwrap();
    direct.set_host(Some("127.0.0.1")).unwrap();
    let mut s = base_settings(direct.as_str(), &sandbox.base_url());
    fast_health(&mut s);
    let (base, _) = serve(&s).await;
    assert_eq!(
        await_ready_status(&base, 200, Duration::from_secs(5))
            .await
            .0,
        200
    );

    relay.cut();
    let (status, p) = await_ready_status(&base, 503, Duration::from_secs(5)).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (503, Some("not_ready")),
        "{p}"
    );
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .starts_with("database unreachable for"),
        "{p}"
    );
    let live = reqwest::get(format!("{base}/health/live")).await.unwrap();
    assert_eq!(live.status(), 200, "liveness never depends on the database");

    relay.restore();
    let (status, body) = await_ready_status(&base, 200, Duration::from_secs(5)).await;
    assert_eq!(status, 200, "ready again once the database is back: {body}");
}

// ---- the real binary as a child process ----

struct Child {
    child: tokio::process::Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Child {
    fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

fn command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .env_remove("PROFILE_GATEWAY_CONFIG")
        .env_remove(profile_gateway::runtime::ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("PROFILE_GATEWAY__") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn spawn_child(mut cmd: tokio::process::Command) -> Child {
    let mut child = cmd.spawn().expect("the profile-gateway binary starts");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let lines = Arc::clone(&stderr);
    let pipe = child.stderr.take().unwrap();
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(pipe).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            lines.lock().unwrap().push(line);
        }
    });
    Child { child, stderr }
}

/// The deployment's split: non-secret settings in one file, every credential in a second
/// `--config` layer (a Kubernetes Secret mounted as a file); none in the environment.
fn write_configs(dir: &Path, db_url: &str, sandbox: &SandboxHandle) -> (String, String) {
    let config = dir.join("gateway.toml");
    let secrets = dir.join("secrets.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
shutdown_delay_ms = 3000
shutdown_grace_ms = 3000

[database]
health_check_interval_ms = 100
health_unreachable_after_ms = 1000

[juspay]
base_url = "{base}"
merchant_id = "{merchant}"
timeout_ms = 10000

[razorpay]
base_url = "{base}"
key_id = "{key_id}"

[upstream]
# The sandbox speaks plain HTTP on loopback.
allow_plain_http = true

[telemetry]
log_format = "json"
log_level = "info"

[[auth.callers]]
name = "test-writer"
token_sha256 = "{token}"
scopes = ["profile:write", "profile:read"]
"#,
            base = sandbox.base_url(),
            merchant = upstream_sandbox::DEMO_JUSPAY_MERCHANT_ID,
            key_id = upstream_sandbox::DEMO_RAZORPAY_KEY_ID,
            token = profile_gateway::auth::token_sha256(TOKEN),
        ),
    )
    .unwrap();
    std::fs::write(
        &secrets,
        format!(
            r#"[database]
url = "{db_url}"
[juspay]
api_key = "{juspay}"
[razorpay]
key_secret = "{razorpay}"
[changes]
encryption_key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
[audit]
hmac_key = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="
"#,
            juspay = upstream_sandbox::DEMO_JUSPAY_API_KEY,
            razorpay = upstream_sandbox::DEMO_RAZORPAY_KEY_SECRET,
        ),
    )
    .unwrap();
    (
        config.to_string_lossy().into_owned(),
        secrets.to_string_lossy().into_owned(),
    )
}

async fn listening_addr(child: &Child) -> String {
    let started = Instant::now();
    loop {
        let found = child.stderr.lock().unwrap().iter().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["message"] == "profile-gateway listening")
                .then(|| v["addr"].as_str().map(String::from))?
        });
        if let Some(addr) = found {
            return format!("http://{addr}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the gateway did not start:\n{}",
            child.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sigterm(child: &Child) {
    let pid = child.child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

fn patch_request(
    client: &reqwest::Client,
    base: &str,
    user: &str,
    body: Value,
) -> impl Future<Output = reqwest::Response> + use<> {
    let req = client
        .patch(format!("{base}/profile/{user}"))
        .bearer_auth(TOKEN)
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .json(&body);
    async move { req.send().await.unwrap() }
}

#[tokio::test]
async fn sigterm_mid_patch_drains_without_losing_a_request() {
    let sandbox = spawn_sandbox().await;
    let (_name, url) = fresh_database().await;
    let pool = PgPool::connect(&url).await.unwrap();
    db::migrate(&pool).await.unwrap();
    profile_gateway::demo::seed_links(&pool).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Migrated as the owner (above); served as the least-privilege app role.
    let app_url = app_role_url(&url).await;
    let (config, secrets) = write_configs(dir.path(), &app_url, &sandbox);
    // On the runtime a one-CPU pod gets (every other child here runs multi_thread on CI's cores).
    let mut cmd = command(&["--config", &config, "--config", &secrets, "serve"]);
    cmd.env(profile_gateway::runtime::ENV, "current_thread");
    let child = spawn_child(cmd);
    let base = listening_addr(&child).await;
    assert_eq!(
        await_ready_status(&base, 200, Duration::from_secs(10))
            .await
            .0,
        200,
        "{}",
        child.log()
    );

    // Alice's change meets a slow upstream: it is still in flight when SIGTERM comes, and
    // finishes after the shutdown delay, during the graceful drain.
    sandbox.add_fault(FaultSpec::latency("juspay_customer_update", 4500).times(1));
    let client = reqwest::Client::new();
    let slow = tokio::spawn(patch_request(
        &client,
        &base,
        "alice",
        json!({"first_name": "Alicia"}),
    ));
    let in_flight = Instant::now();
    while sandbox.counters().values().map(|c| c.calls).sum::<u64>() == 0 {
        assert!(
            in_flight.elapsed() < Duration::from_secs(5),
            "the PATCH never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut child = child;
    let signalled = Instant::now();
    sigterm(&child);

    let (status, p) = await_ready_status(&base, 503, Duration::from_secs(1)).await;
    assert_eq!(
        (status, p["code"].as_str()),
        (503, Some("not_ready")),
        "{p}"
    );
    assert!(p["detail"].as_str().unwrap().starts_with("draining"), "{p}");

    // A request on a brand-new connection during the shutdown delay is still served.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let during = patch_request(&fresh, &base, "bob", json!({"first_name": "Bobby"})).await;
    assert!(
        signalled.elapsed() < Duration::from_millis(3000),
        "sent within the shutdown delay"
    );
    assert_eq!(during.status(), 200, "{}", during.text().await.unwrap());

    let slow = slow.await.unwrap();
    assert_eq!(slow.status(), 200, "the in-flight PATCH completes");
    let body: Value = slow.json().await.unwrap();
    assert_eq!(body["status"], "applied", "{body}");

    // Budget from SIGTERM: shutdown delay (3 s) + the slow in-flight PATCH (its upstream answers
    // 4.5 s after it started) + shutdown grace (3 s) + margin.
    let budget = Duration::from_secs(12).saturating_sub(signalled.elapsed());
    let exit = tokio::time::timeout(budget, child.child.wait())
        .await
        .expect("the process exits within its shutdown budget")
        .unwrap();
    assert!(exit.success(), "exit {exit:?}:\n{}", child.log());
    assert!(
        signalled.elapsed() >= Duration::from_millis(3000),
        "the listener stayed open for the whole shutdown delay"
    );
    let statuses: Vec<String> = sqlx::query_scalar("select status from changes order by user_id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        statuses,
        ["applied", "applied"],
        "both changes recorded as applied"
    );
    let log = child.log();
    assert!(log.contains("draining"), "{log}");
    assert!(
        !log.contains("/health/ready"),
        "probes are not logged at info: {log}"
    );
    assert!(log.contains("tokio_workers"), "{log}");
    assert!(
        log.contains(r#""runtime":"current_thread""#),
        "logs the runtime flavour it runs: {log}"
    );
}

#[tokio::test]
async fn migrate_from_two_processes_at_once() {
    let (_name, url) = fresh_database().await;
    let run = |url: &str| {
        let mut cmd = command(&["migrate"]);
        cmd.env("PROFILE_GATEWAY__DATABASE__URL", url)
            .env("PROFILE_GATEWAY__TELEMETRY__LOG_FORMAT", "json");
        spawn_child(cmd)
    };
    let mut a = run(&url);
    let mut b = run(&url);
    let (ra, rb) = tokio::join!(a.child.wait(), b.child.wait());
    assert!(ra.unwrap().success(), "first migrate:\n{}", a.log());
    assert!(rb.unwrap().success(), "second migrate:\n{}", b.log());
    let pool = PgPool::connect(&url).await.unwrap();
    let applied: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        applied as usize,
        profile_gateway::lifecycle::binary_versions().len()
    );
    assert_eq!(
        profile_gateway::lifecycle::schema_status(&pool)
            .await
            .unwrap(),
        profile_gateway::lifecycle::Schema::Current
    );
    for child in [&a, &b] {
        assert!(
            child.log().contains(&newest_migration().to_string()),
            "logs the version it left: {}",
            child.log()
        );
    }

    // Failure is a non-zero exit with a message naming what to fix.
    let mut bad = run("postgres://postgres@127.0.0.1:1/nothing");
    let status = bad.child.wait().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!status.success());
    assert!(
        bad.log().contains("cannot connect to database.url"),
        "{}",
        bad.log()
    );
}

#[tokio::test]
async fn an_unknown_runtime_flavour_is_refused_before_anything_starts() {
    let mut cmd = command(&["migrate"]);
    cmd.env(profile_gateway::runtime::ENV, "work_stealing").env(
        "PROFILE_GATEWAY__DATABASE__URL",
        "postgres://postgres@127.0.0.1:1/nothing",
    );
    let mut child = spawn_child(cmd);
    let status = child.child.wait().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!status.success());
    let log = child.log();
    assert!(
        log.contains("PROFILE_GATEWAY_RUNTIME=\"work_stealing\"") && !log.contains("database"),
        "names the variable, not the database it never reached: {log}"
    );
}
