//! Builds the application from settings on a given listener; `main` and the tests both use it.

use crate::auth::Callers;
use crate::changes::resilience::{Resilience, ResilienceConfig};
use crate::changes::turns::Turns;
use crate::changes::{ChangeService, Limits, Writes, completer};
use crate::crypto::{PayloadCipher, PiiHasher, decode_key};
use crate::providers::{self, JuspayConfig, RazorpayConfig};
use crate::routes::{self, AppState};
use crate::settings::Settings;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database.url: {0}")]
    DatabaseUrl(String),
    #[error("cannot prepare the database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Config(String),
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    pub pool: PgPool,
    pub changes: Arc<ChangeService>,
    grace: Duration,
    listener_limits: crate::listener::ListenerLimits,
    listen_options: PgConnectOptions,
    completer_interval: Duration,
    checkpoints: Option<CheckpointTask>,
}

/// The interval checkpoints (audit.signing_key_file set).
struct CheckpointTask {
    signer: Arc<crate::audit::checkpoint::CheckpointSigner>,
    interval: Duration,
    witness_dir: Option<std::path::PathBuf>,
    witness: crate::audit::checkpoint::WitnessStatus,
}

pub fn connect_options(settings: &Settings) -> Result<PgConnectOptions, StartupError> {
    PgConnectOptions::from_str(settings.database.url.expose())
        .map(|o| {
            o.application_name("profile-gateway")
                // The hot-path statements take arrays of any length; one generic plan per
                // statement spares re-planning the CTEs on every small batch.
                .options([("plan_cache_mode", "force_generic_plan")])
        })
        .map_err(|e| StartupError::DatabaseUrl(e.to_string()))
}

/// Creates the database named in the URL when it does not exist (sandbox and tests).
pub async fn ensure_database(settings: &Settings) -> Result<(), StartupError> {
    use sqlx::migrate::MigrateDatabase;
    let url = settings.database.url.expose();
    if !sqlx::Postgres::database_exists(url).await? {
        sqlx::Postgres::create_database(url).await?;
    }
    Ok(())
}

pub async fn migrate(pool: &PgPool) -> Result<(), StartupError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

fn key_or_sandbox(
    value: &Option<crate::secret::Secret>,
    key: &str,
) -> Result<[u8; 32], StartupError> {
    match value {
        Some(v) => decode_key(v)
            .map_err(|_| StartupError::Config(format!("{key}: must be 32 bytes, base64"))),
        // Only reachable in sandbox mode: `validate(false)` requires the keys elsewhere. A fixed key
        // lets a restarted sandbox gateway finish its own pending changes.
        None => Ok(*b"profile-gateway-sandbox-only-key"),
    }
}

impl Application {
    /// Everything but serving: pool (lazy, so a database outage at boot still serves probes),
    /// migrations when asked, the shared HTTP client, the adapters and the router.
    pub async fn build(settings: &Settings, listener: TcpListener) -> Result<Self, StartupError> {
        let pool = PgPoolOptions::new()
            .max_connections(settings.database.max_connections)
            .acquire_timeout(Duration::from_millis(settings.database.acquire_timeout_ms))
            .connect_lazy_with(connect_options(settings)?);
        if settings.database.migrate_on_start {
            migrate(&pool).await?;
        }
        let client = providers::http::client(
            Duration::from_millis(settings.upstream.connect_timeout_ms),
            settings.upstream.proxy.as_deref(),
        )
        .map_err(|e| StartupError::Config(format!("upstream.proxy: {e}")))?;
        let missing = |k: &str| StartupError::Config(format!("{k} is required"));
        let juspay = JuspayConfig {
            base_url: settings
                .juspay
                .base_url
                .clone()
                .ok_or_else(|| missing("juspay.base_url"))?,
            api_key: settings
                .juspay
                .api_key
                .clone()
                .ok_or_else(|| missing("juspay.api_key"))?,
            merchant_id: settings.juspay.merchant_id.clone(),
            version: settings.juspay.version.clone(),
            read: providers::http::ReadLimits {
                timeout: Duration::from_millis(settings.juspay.timeout_ms),
                max_bytes: settings.upstream.max_response_bytes,
            },
        };
        let razorpay = RazorpayConfig {
            base_url: settings
                .razorpay
                .base_url
                .clone()
                .ok_or_else(|| missing("razorpay.base_url"))?,
            key_id: settings
                .razorpay
                .key_id
                .clone()
                .ok_or_else(|| missing("razorpay.key_id"))?,
            key_secret: settings
                .razorpay
                .key_secret
                .clone()
                .ok_or_else(|| missing("razorpay.key_secret"))?,
            read: providers::http::ReadLimits {
                timeout: Duration::from_millis(settings.razorpay.timeout_ms),
                max_bytes: settings.upstream.max_response_bytes,
            },
        };
        let previous = match &settings.changes.previous_encryption_keys {
            Some(keys) => crate::crypto::parse_key_list(keys).map_err(|_| {
                StartupError::Config("changes.previous_encryption_keys: malformed".into())
            })?,
            None => Vec::new(),
        };
        let cipher = PayloadCipher::new(
            settings.changes.encryption_key_id.clone(),
            key_or_sandbox(&settings.changes.encryption_key, "changes.encryption_key")?,
        )
        .with_previous(previous);
        let hasher = PiiHasher::new(
            settings.audit.hmac_key_id.clone(),
            key_or_sandbox(&settings.audit.hmac_key, "audit.hmac_key")?,
        );
        let c = &settings.changes;
        let ms = Duration::from_millis;
        let limits = Limits {
            deadline: settings.request_deadline(),
            lease: ms(c.lease_ms),
            max_attempts: c.max_attempts,
            in_request_attempts: c.in_request_attempts,
            idempotency_retention: Duration::from_secs(c.idempotency_retention_hours * 3600),
            failed_payload_retention: Duration::from_secs(c.failed_payload_retention_hours * 3600),
            max_pending_per_user: c.max_pending_per_user,
            turn_poll: ms(c.turn_poll_ms),
        };
        let instance_id = instance_id();
        let writes = Writes::spawn(
            &pool,
            &limits,
            &instance_id,
            settings.database.max_batch,
            Duration::from_millis(settings.database.batch_linger_ms),
        );
        let changes = Arc::new(ChangeService {
            pool: pool.clone(),
            providers: providers::build(client, juspay, razorpay),
            cipher,
            hasher,
            instance_id,
            limits,
            writes,
            resilience: Resilience::new(ResilienceConfig {
                retry_base: ms(c.retry_base_ms),
                retry_cap: ms(c.retry_cap_ms),
                budget_ratio: c.retry_budget_ratio,
                budget_min_per_sec: c.retry_budget_min_per_sec,
                breaker_threshold: c.breaker_failure_threshold,
                breaker_open: ms(c.breaker_open_ms),
            }),
            turns: Turns::default(),
            tracker: TaskTracker::new(),
        });
        let checkpoints = checkpoint_task(settings)?;
        let state = AppState {
            pool: pool.clone(),
            callers: Callers::new(&settings.auth.callers),
            changes: Arc::clone(&changes),
            body_limit: settings.server.body_limit_bytes,
            limits: crate::limits::EdgeLimits::new(settings),
            audit_witness: checkpoints
                .as_ref()
                .filter(|c| c.witness_dir.is_some())
                .map(|c| c.witness.clone()),
        };
        Ok(Self {
            listener,
            router: routes::router(state),
            pool,
            changes,
            grace: Duration::from_millis(settings.server.shutdown_grace_ms),
            listen_options: connect_options(settings)?,
            listener_limits: crate::listener::ListenerLimits {
                header_read_timeout: Duration::from_millis(settings.server.header_read_timeout_ms),
                idle_timeout: Duration::from_millis(settings.server.idle_timeout_ms),
                max_connections: settings.server.max_connections,
                drain: Duration::from_millis(settings.server.shutdown_grace_ms),
            },
            completer_interval: Duration::from_millis(settings.changes.completer_interval_ms),
            checkpoints,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then lets in-flight changes finish within the grace
    /// period. What does not finish stays recorded as pending for the completer.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let background = CancellationToken::new();
        tokio::spawn(
            self.changes
                .turns
                .clone()
                .listen(self.listen_options.clone(), background.clone()),
        );
        // Partitions and retention are not the gateway's: `audit maintain` runs as the
        // maintenance role (a CronJob), which the gateway's role cannot become.
        if let Some(c) = self.checkpoints {
            let checkpoints = crate::audit::checkpoint::run(
                self.pool.clone(),
                c.signer,
                c.interval,
                c.witness_dir,
                c.witness,
            );
            let stop = background.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = checkpoints => {}
                }
            });
        }
        tokio::spawn(completer::run(
            Arc::clone(&self.changes),
            self.completer_interval,
            background.clone(),
        ));
        let limits = crate::listener::ListenerLimits {
            drain: self.grace,
            ..self.listener_limits
        };
        crate::listener::serve(self.listener, self.router, limits, shutdown).await?;
        // No new claims from here on; what runs may finish within the grace period.
        background.cancel();
        self.changes.tracker.close();
        if tokio::time::timeout(self.grace, self.changes.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "shutdown grace period over with changes still running; they stay pending for the completer"
            );
        }
        Ok(())
    }
}

fn checkpoint_task(settings: &Settings) -> Result<Option<CheckpointTask>, StartupError> {
    let Some(path) = &settings.audit.signing_key_file else {
        tracing::warn!(
            "audit.signing_key_file is not set: no signed checkpoints of the audit trail are taken"
        );
        return Ok(None);
    };
    let signer = crate::audit::checkpoint::CheckpointSigner::from_file(std::path::Path::new(path))
        .map_err(StartupError::Config)?;
    let witness_dir = settings
        .audit
        .witness_dir
        .as_ref()
        .map(std::path::PathBuf::from);
    if let Some(dir) = &witness_dir
        && !dir.is_dir()
    {
        return Err(StartupError::Config(format!(
            "audit.witness_dir {}: not a directory",
            dir.display()
        )));
    }
    Ok(Some(CheckpointTask {
        signer: Arc::new(signer),
        interval: Duration::from_secs(settings.audit.checkpoint_interval_s),
        witness_dir,
        witness: Default::default(),
    }))
}

fn instance_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// SIGTERM (Kubernetes) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; draining");
}
