//! PostgreSQL over TLS: a private cluster (initdb on a free port) with a certificate this test
//! makes, reachable only over TLS (`hostnossl ... reject`), and the gateway built against it with
//! `sslmode=verify-full` and `sslrootcert`.

use crate::helpers::*;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn pg_bin(tool: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .map(|e| e.unwrap().path().join("bin"))
        .collect();
    dirs.sort();
    dirs.pop().unwrap().join(tool)
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn as_postgres(tool: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(pg_bin(tool));
    c
}

/// A CA and a server certificate for `localhost` / 127.0.0.1 signed by it.
fn make_certificates(dir: &Path, name: &str) {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=profile-gateway test CA",
        ])
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem")));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr")));
    std::fs::write(p("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.pem"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-extfile")
        .arg(p("ext.cnf"))
        .arg("-out")
        .arg(p("server.pem")));
}

struct Cluster {
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
    certs: PathBuf,
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

/// An empty cluster in `root/data` owned by postgres (trust auth), and a free port for it.
pub fn init_cluster(root: &std::path::Path) -> (std::path::PathBuf, u16) {
    let data = root.join("data");
    run(Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(root));
    run(as_postgres("initdb").arg("-D").arg(&data).args([
        "-U",
        "postgres",
        "-A",
        "trust",
        "--no-locale",
        "-E",
        "UTF8",
    ]));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    (data, port)
}

fn start_tls_cluster() -> Cluster {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = dir.path().to_path_buf();
    let certs = root.join("certs");
    std::fs::create_dir(&certs).unwrap();
    make_certificates(&certs, "good");
    make_certificates(&certs, "other");
    let (data, port) = init_cluster(&root);
    let conf = format!(
        "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n\
         ssl = on\nssl_cert_file = '{certs}/good-server.pem'\nssl_key_file = '{certs}/good-server.key'\n\
         fsync = off\n",
        root = root.display(),
        certs = certs.display()
    );
    let mut pg_conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
    pg_conf.push_str(&conf);
    std::fs::write(data.join("postgresql.conf"), pg_conf).unwrap();
    // Only TLS connections are let in: a plaintext attempt fails instead of silently working.
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
    )
    .unwrap();
    run(Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&root));
    run(Command::new("chmod")
        .arg("600")
        .arg(certs.join("good-server.key")));
    run(as_postgres("pg_ctl")
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(root.join("postgres.log"))
        .args(["-w", "-t", "30", "start"]));
    Cluster {
        data,
        port,
        _dir: dir,
        certs,
    }
}

#[tokio::test]
async fn the_gateway_reaches_postgres_over_verified_tls_and_nothing_else() {
    let cluster = start_tls_cluster();
    let sandbox = spawn_sandbox().await;
    let ca = cluster.certs.join("good-ca.pem");
    let url = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        cluster.port,
        ca.display()
    );
    let settings = base_settings(&url, &sandbox.base_url());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // Migrations run through the pool, so the build itself proves the connection works.
    let app = profile_gateway::startup::Application::build(&settings, listener)
        .await
        .expect("migrations over verify-full TLS");
    let ssl: (bool, String) =
        sqlx::query_as("select ssl, version from pg_stat_ssl where pid = pg_backend_pid()")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(ssl.0, "the pool's connection is TLS");
    assert!(ssl.1.starts_with("TLSv1."), "{}", ssl.1);

    // A certificate from another CA is refused under verify-full.
    let other = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        cluster.port,
        cluster.certs.join("other-ca.pem").display()
    );
    let s = base_settings(&other, &sandbox.base_url());
    let opts = profile_gateway::db::connect_options(&s).unwrap();
    assert!(sqlx::PgPool::connect_with(opts).await.is_err());
    // And plaintext, which this server rejects: sslmode=disable really means no TLS.
    let plain = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=disable",
        cluster.port
    );
    let s = base_settings(&plain, &sandbox.base_url());
    let opts = profile_gateway::db::connect_options(&s).unwrap();
    let err = sqlx::PgPool::connect_with(opts).await.unwrap_err();
    assert!(
        err.to_string().contains("no encryption") || err.to_string().contains("pg_hba"),
        "{err}"
    );
}
