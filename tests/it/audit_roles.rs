//! Roles that cannot rewrite history, `serve`'s refusal of privileged roles, and checkpoints by
//! several replicas.

use crate::checkpoints::{openssl_keys, url_of};
use crate::helpers::*;
use profile_gateway::startup::Application;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::Duration;

const MAINTENANCE_LOGIN: &str = "pgw_test_maintenance";

fn cli(url: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_profile-gateway"))
        .arg("audit")
        .args(args)
        .env("PROFILE_GATEWAY__DATABASE__URL", url)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The user's rows of `audit_log` and of `audit_step_attempts`, as JSON.
async fn audit_log_of(pool: &PgPool, user: &str) -> Value {
    sqlx::query_scalar(
        "select jsonb_build_object(
                  'log', (select coalesce(json_agg(row_to_json(l) order by l.event_id), '[]')::jsonb
                            from audit_log l where user_id = $1),
                  'attempts', (select coalesce(json_agg(row_to_json(a) order by a.event_id, a.step_no), '[]')::jsonb
                                 from audit_step_attempts a where user_id = $1))",
    )
    .bind(user)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_app_role_cannot_detach_maintain_or_change_what_auditors_see() {
    let app = spawn_app().await;
    let resp = app
        .patch("alice", &json!({"mobile_number": "9812345678"}))
        .await;
    assert_eq!(resp.status(), 200);
    let superuser_url = url_of(&app.db_name);
    let app_url = app_role_url(&superuser_url).await;
    let as_app = PgPool::connect(&app_url).await.unwrap();

    for sql in [
        "select audit_detach_expired(13)",
        "select audit_detach_expired(1)",
        "select audit_ensure_partitions(2)",
        "select audit_detach_expired_unchecked(1)",
    ] {
        let err = sqlx::query(sql).execute(&as_app).await.unwrap_err();
        assert!(
            err.to_string().contains("permission denied"),
            "{sql}: {err}"
        );
    }
    let (ok, out) = cli(&app_url, &["maintain"]);
    assert!(!ok && out.contains("permission denied"), "{out}");
    // The webhook tables: the default privileges gave the app role everything; its migration
    // takes back all but what the settle and the dispatcher use. What went out stays recorded.
    for sql in [
        "delete from webhook_events",
        "delete from webhook_attempts",
        "delete from webhook_receivers",
        "truncate webhook_events cascade",
        "update webhook_attempts set status_code = 200",
    ] {
        let err = sqlx::query(sql).execute(&as_app).await.unwrap_err();
        assert!(
            err.to_string().contains("permission denied"),
            "{sql}: {err}"
        );
    }
    for sql in [
        "select count(*) from webhook_events",
        "select count(*) from webhook_attempts",
        "update webhook_receivers set failures = 0 where false",
    ] {
        sqlx::query(sql).execute(&as_app).await.expect(sql);
    }

    // The maintenance role may, within the 12-month minimum that SQL enforces for everyone.
    ensure_login_role(MAINTENANCE_LOGIN, "profile_gateway_maintenance").await;
    let maint_url = superuser_url.replacen("://postgres@", &format!("://{MAINTENANCE_LOGIN}@"), 1);
    let (ok, out) = cli(&maint_url, &["maintain"]);
    assert!(ok, "{out}");
    assert!(out.contains("created "), "{out}");
    for url in [&maint_url, &superuser_url] {
        let pool = PgPool::connect(url).await.unwrap();
        let err = sqlx::query("select audit_detach_expired(11)")
            .execute(&pool)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("at least 12 months"),
            "{url}: {err}"
        );
        pool.close().await;
    }

    // What the auditor sees of an applied change comes from the events alone.
    let before = audit_log_of(&app.pool, "alice").await;
    let rows = before["log"].as_array().unwrap();
    assert!(rows.len() >= 3, "{before}");
    assert!(
        rows.iter()
            .filter(|r| !r["change_id"].is_null())
            .all(|r| r["change_status"] == "applied"),
        "{before}"
    );
    let attempts = before["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "customer and two wallets: {before}");
    assert!(
        attempts
            .iter()
            .all(|r| r["status"] == "applied" && r["error_message"].is_null()),
        "{before}"
    );
    for sql in [
        r#"update changes
              set steps = (select jsonb_object_agg(k, v || '{"status": "failed", "error_message": "forged",
                                                        "attempts": 1, "upstream_status": 500,
                                                        "upstream_code": "forged", "error_retryable": false}')
                             from jsonb_each(steps) s(k, v))
            where user_id = 'alice'"#,
        "update changes set status = 'failed', finished_at = now() - interval '1 day'
          where user_id = 'alice'",
    ] {
        let done = sqlx::query(sql).execute(&as_app).await.unwrap();
        assert!(done.rows_affected() > 0, "{sql}");
    }
    // The views are read only for it (refused for its privileges, or as not updatable).
    for sql in [
        "update change_steps set status = 'failed'",
        "delete from audit_step_attempts",
        "delete from audit_step_attempt_rows",
    ] {
        let err = sqlx::query(sql)
            .execute(&as_app)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("permission denied") || err.contains("cannot"),
            "{sql}: {err}"
        );
    }
    let after = audit_log_of(&app.pool, "alice").await;
    assert_eq!(after, before, "the app role changed what auditors see");
    as_app.close().await;
}

fn serve_config(dir: &std::path::Path) -> std::path::PathBuf {
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[auth.callers]]\nname = \"role-test\"\ntoken_sha256 = \"{}\"\nscopes = [\"profile:read\"]\n",
            profile_gateway::auth::token_sha256(TOKEN)
        ),
    )
    .unwrap();
    config
}

/// `serve` (not sandbox) against `db_url`; what it printed if it exited within 20 s.
fn serve(config: &std::path::Path, db_url: &str) -> Option<(bool, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_profile-gateway"))
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "PROFILE_GATEWAY__SERVER__LISTEN",
            format!("127.0.0.1:{port}"),
        )
        .env("PROFILE_GATEWAY__DATABASE__URL", db_url)
        .env("PROFILE_GATEWAY__JUSPAY__BASE_URL", "https://127.0.0.1:1")
        .env("PROFILE_GATEWAY__JUSPAY__API_KEY", "k")
        .env("PROFILE_GATEWAY__JUSPAY__MERCHANT_ID", "m")
        .env("PROFILE_GATEWAY__RAZORPAY__BASE_URL", "https://127.0.0.1:1")
        .env("PROFILE_GATEWAY__RAZORPAY__KEY_ID", "k")
        .env("PROFILE_GATEWAY__RAZORPAY__KEY_SECRET", "s")
        .env(
            "PROFILE_GATEWAY__CHANGES__ENCRYPTION_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        )
        .env(
            "PROFILE_GATEWAY__AUDIT__HMAC_KEY",
            "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=",
        )
        .env("PROFILE_GATEWAY__TELEMETRY__LOG_LEVEL", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return Some((
                out.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            ));
        }
        // Still running after it answered: it serves.
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && started.elapsed() > Duration::from_secs(1)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[tokio::test]
async fn serve_refuses_a_superuser_the_owner_and_its_members_outside_sandbox() {
    let (_db, url) = fresh_database().await;
    let app_url = app_role_url(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let config = serve_config(dir.path());

    let (ok, out) = serve(&config, &url).expect("refused at once");
    assert!(!ok, "{out}");
    assert!(
        out.contains("connects as postgres, a superuser")
            && out.contains("granted profile_gateway_app"),
        "{out}"
    );

    // A plain login role that owns the audit tables (the migrations' role), and one of its members.
    ensure_login_role("pgw_test_owner", "profile_gateway_app").await;
    ensure_login_role("pgw_test_owner_member", "pgw_test_owner").await;
    let pool = PgPool::connect(&url).await.unwrap();
    sqlx::query("alter table audit_events owner to pgw_test_owner")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    for (role, says) in [
        ("pgw_test_owner", "the owner of the audit tables"),
        (
            "pgw_test_owner_member",
            "a member of pgw_test_owner, the owner of the audit tables",
        ),
    ] {
        let (ok, out) = serve(
            &config,
            &url.replacen("://postgres@", &format!("://{role}@"), 1),
        )
        .expect("refused at once");
        assert!(!ok, "{out}");
        assert!(
            out.contains(&format!("connects as {role}, {says}"))
                && out.contains("granted profile_gateway_app"),
            "{out}"
        );
    }

    // The app's own login role serves.
    assert_eq!(serve(&config, &app_url), None, "the app role must serve");
}

#[tokio::test]
async fn two_replicas_take_one_checkpoint_per_interval_without_gaps_across_a_restart() {
    let sandbox = spawn_sandbox().await;
    let (_db, url) = fresh_database().await;
    let app_url = app_role_url(&url).await;
    let keys = openssl_keys();
    let witness = tempfile::tempdir().unwrap();
    let mut settings = base_settings(&app_url, &sandbox.base_url());
    settings.database.migrate_on_start = false;
    settings.audit.signing_key_file = Some(keys.private.to_str().unwrap().to_string());
    settings.audit.checkpoint_interval_s = 2;
    settings.audit.witness_dir = Some(witness.path().to_str().unwrap().to_string());
    let start = || async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = Application::build(&settings, listener).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        (stop, task)
    };
    let pool = PgPool::connect(&url).await.unwrap();
    let events = |n: i64| {
        let pool = pool.clone();
        async move {
            for i in 0..n {
                sqlx::query(
                    "insert into audit_events (user_id, event_type, caller, outcome) values ($1, 'probe', 'test', 'ok')",
                )
                .bind(format!("r{}", i % 3))
                .execute(&pool)
                .await
                .unwrap();
            }
        }
    };
    let a = start().await;
    let b = start().await;
    events(5).await;
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    // Replica a goes away (a rollout), c replaces it later.
    a.0.send(()).unwrap();
    a.1.await.unwrap().unwrap();
    events(4).await;
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    let c = start().await;
    events(4).await;
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    for r in [b, c] {
        r.0.send(()).unwrap();
        r.1.await.unwrap().unwrap();
    }

    let rows: Vec<(i64, Option<i64>)> =
        sqlx::query_as("select seq, slot from audit_checkpoints order by seq")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(rows.len() >= 6, "13 s at 2 s per checkpoint: {rows:?}");
    for (i, w) in rows.windows(2).enumerate() {
        assert_eq!(w[1].0, w[0].0 + 1, "checkpoint seqs contiguous: {rows:?}");
        let (Some(s0), Some(s1)) = (w[0].1, w[1].1) else {
            panic!("every checkpoint here is a scheduled one: {rows:?}");
        };
        assert_eq!(
            s1,
            s0 + 1,
            "interval {i}: one checkpoint each, none skipped: {rows:?}"
        );
    }
    assert_eq!(rows[0].0, 1);
    // Everything in the witness (the last may have been taken after the last flush).
    let _ = profile_gateway::audit::checkpoint::flush_witness(&pool, witness.path()).await;
    let files = std::fs::read_dir(witness.path()).unwrap().count();
    assert_eq!(files, rows.len(), "one witness file per checkpoint");
    let (ok, out) = cli(
        &url,
        &[
            "verify",
            "--public-key",
            keys.public.to_str().unwrap(),
            "--checkpoints",
            witness.path().to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    pool.close().await;
}
