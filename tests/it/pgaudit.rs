//! Direct SQL reads by auditors are logged by PostgreSQL's pgaudit extension (PCI DSS
//! 10.2.1.3), on a private cluster this test starts with pgaudit preloaded (the shared server
//! cannot be restarted by a test). docs/auditing.md says what a deployment enables.

use crate::db_tls::{as_postgres, pg_bin, run};
use sqlx::PgPool;

struct Cluster {
    data: std::path::PathBuf,
    log: std::path::PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn start_pgaudit_cluster() -> Cluster {
    let lib = pg_bin("postgres")
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("lib/pgaudit.so");
    assert!(
        lib.exists(),
        "{} missing: install the Debian package postgresql-15-pgaudit (.ci/run does)",
        lib.display()
    );
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = dir.path().to_path_buf();
    let (data, port) = crate::db_tls::init_cluster(&root);
    let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
    conf.push_str(&format!(
        "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n\
         shared_preload_libraries = 'pgaudit'\npgaudit.log_relation = on\npgaudit.log_parameter = off\n",
        root.display()
    ));
    std::fs::write(data.join("postgresql.conf"), conf).unwrap();
    let log = root.join("postgres.log");
    run(as_postgres("pg_ctl")
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "30", "start"]));
    Cluster {
        data,
        log,
        port,
        _dir: dir,
    }
}

#[tokio::test]
async fn pgaudit_logs_every_read_by_an_auditor_login_which_cannot_turn_it_off() {
    let cluster = start_pgaudit_cluster();
    let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port);
    let pool = PgPool::connect(&admin).await.unwrap();
    sqlx::query("create database gateway")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let url = format!("postgres://postgres@127.0.0.1:{}/gateway", cluster.port);
    let pool = PgPool::connect(&url).await.unwrap();
    profile_gateway::db::migrate(&pool).await.unwrap();
    // What docs/auditing.md tells a deployment to do for each auditor's login role.
    for sql in [
        "create extension pgaudit",
        "create role auditor_jane login in role profile_gateway_auditor",
        "alter role auditor_jane set pgaudit.log = 'read, function'",
        "insert into audit_events (user_id, event_type, caller, outcome) values ('alice', 'probe', 'test', 'ok')",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool.close().await;

    let jane = PgPool::connect(&url.replacen("postgres@", "auditor_jane@", 1))
        .await
        .unwrap();
    let n: i64 =
        sqlx::query_scalar("select count(*) from audit_log where user_id = 'alice' /* jane-1 */")
            .fetch_one(&jane)
            .await
            .unwrap();
    assert_eq!(n, 1);
    let err = sqlx::query("set pgaudit.log = 'none'")
        .execute(&jane)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    jane.close().await;

    // The log line names the session, the statement and the relation read.
    let log = std::fs::read_to_string(&cluster.log).unwrap();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("AUDIT: SESSION") && l.contains("jane-1"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("READ,SELECT") && l.contains("public.audit_log")),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l.contains("public.audit_events")),
        "the tables behind the view are logged too: {log}"
    );
}
