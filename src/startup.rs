//! Builds the application from settings on a given listener; `main` and the tests both use it.

use crate::auth::Callers;
use crate::changes::resilience::Resilience;
use crate::changes::turns::Turns;
use crate::changes::{ChangeService, Limits, Writes};
use crate::crypto::{PayloadCipher, PiiHasher};
use crate::db::{DbError, connect_options};
use crate::lifecycle::Lifecycle;
use crate::providers::{self, Registry};
use crate::routes::{self, AppState};
use crate::settings::{Mode, Runtime, Settings};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot prepare the database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Config(String),
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

mod checks;
mod serve;

pub use checks::{provider_names, validate};
pub use serve::shutdown_signal;

pub struct Application {
    listener: TcpListener,
    /// The admin listener for `/metrics` (`telemetry.metrics_listen`), when configured.
    metrics_listener: Option<TcpListener>,
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    router: axum::Router,
    pub pool: PgPool,
    pub changes: Arc<ChangeService>,
    lifecycle: Arc<Lifecycle>,
    shutdown_delay: Duration,
    grace: Duration,
    listener_limits: crate::listener::ListenerLimits,
    listen_options: PgConnectOptions,
    completer_interval: Duration,
    checkpoints: Option<CheckpointTask>,
    dispatcher: Arc<crate::webhooks::dispatcher::Dispatcher>,
}

/// The interval checkpoints (audit.signing_key_file set).
struct CheckpointTask {
    signer: Arc<crate::audit::checkpoint::CheckpointSigner>,
    interval: Duration,
    witness_dir: Option<std::path::PathBuf>,
    witness: crate::audit::checkpoint::WitnessStatus,
}

impl Application {
    /// Resolves `settings` (as `serve` does: every check, in sandbox mode when
    /// `settings.sandbox`), then builds with the standard providers.
    pub async fn build(settings: &Settings, listener: TcpListener) -> Result<Self, StartupError> {
        Self::build_with(settings, listener, Registry::standard()).await
    }

    /// As [`Application::build`], with the providers of `registry` instead of the standard ones:
    /// their names are the `[providers.<name>]` sections the settings may hold.
    pub async fn build_with(
        settings: &Settings,
        listener: TcpListener,
        registry: Registry,
    ) -> Result<Self, StartupError> {
        let specs = registry.specs();
        let names: Vec<&str> = specs.iter().map(|s| s.target.as_str()).collect();
        let mode = Mode::sandbox(settings.sandbox);
        let runtime = checks::with_module_checks(settings, mode, settings.resolve(mode, &names))
            .map_err(|e| StartupError::Config(e.to_string()))?;
        Self::from_runtime(&runtime, listener, registry).await
    }

    /// Everything but serving: pool (lazy, so a database outage at boot still serves probes),
    /// migrations when asked, the shared HTTP client, the adapters and the router.
    pub(crate) async fn from_runtime(
        runtime: &Runtime,
        listener: TcpListener,
        registry: Registry,
    ) -> Result<Self, StartupError> {
        let settings = &runtime.settings;
        let pool = PgPoolOptions::new()
            .max_connections(settings.database.max_connections)
            .acquire_timeout(Duration::from_millis(settings.database.acquire_timeout_ms))
            // A ping only for a connection idle for a second or more (a round trip per write
            // under load otherwise); one that died sooner costs one retried batch
            // (changes::batcher).
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= Duration::from_secs(1) {
                        use sqlx::Connection;
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            // Generic plans (db.rs) are built on the statistics of the moment; on a young or
            // unanalyzed table they chose sequential scans of tables that then grow (seen in the
            // benchmark: the settle scanned `changes` and `change_steps`). Every lookup of the
            // hot path has its index, so the pool's sessions never choose a sequential scan.
            .connect_lazy_with(connect_options(settings)?.options([("enable_seqscan", "off")]));
        if settings.sandbox {
            crate::store::mode::check_sandbox(&pool)
                .await
                .map_err(|e| StartupError::Config(e.to_string()))?;
        }
        if settings.database.migrate_on_start {
            crate::db::migrate(&pool).await?;
        }
        if settings.sandbox {
            crate::store::mode::record_sandbox(&pool)
                .await
                .map_err(|e| StartupError::Config(e.to_string()))?;
        } else {
            crate::store::mode::spawn_record_production(pool.clone());
        }
        let issuers = crate::auth::jwks::Issuers::build(&settings.auth.issuers)
            .map_err(|e| StartupError::Config(e.to_string()))?;
        let lifecycle = Arc::new(Lifecycle::new(Duration::from_millis(
            settings.database.health_unreachable_after_ms,
        )));
        lifecycle.spawn_checker(
            connect_options(settings)?,
            Duration::from_millis(settings.database.health_check_interval_ms),
        );
        let client = providers::http::client(
            Duration::from_millis(settings.upstream.connect_timeout_ms),
            settings.upstream.proxy.as_deref(),
        )
        .map_err(|e| StartupError::Config(format!("upstream.proxy: {e}")))?;
        let providers = registry
            .build(&client, runtime)
            .map_err(StartupError::Config)?;
        let keys = &runtime.keys;
        let cipher = PayloadCipher::new(keys.encryption_key_id.clone(), keys.encryption_key.0)
            .with_previous(
                keys.previous_encryption_keys
                    .iter()
                    .map(|(id, k)| (id.clone(), k.0))
                    .collect(),
            );
        let hasher = PiiHasher::new(keys.hmac_key_id.clone(), keys.hmac_key.0);
        let fingerprints = crate::changes::idempotency::Fingerprints::new(&keys.hmac_key.0);
        let c = &settings.changes;
        let ms = Duration::from_millis;
        let limits = Limits {
            deadline: settings.request_deadline(),
            lease: ms(c.lease_ms),
            idempotency_retention: Duration::from_secs(c.idempotency_retention_hours * 3600),
            failed_payload_retention: Duration::from_secs(c.failed_payload_retention_hours * 3600),
            max_pending_per_user: c.max_pending_per_user,
            turn_poll: ms(c.turn_poll_ms),
        };
        let metrics = crate::telemetry::metrics::Metrics::new(settings.database.max_connections);
        metrics.providers_registered(providers.targets());
        let metrics_listener = match &settings.telemetry.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                StartupError::Config(format!("telemetry.metrics_listen {addr}: {e}"))
            })?),
            None => None,
        };
        let instance_id = instance_id();
        let webhooks = crate::webhooks::Webhooks::from_settings(&settings.auth.callers)
            .map_err(StartupError::Config)?;
        // Receivers are the callers' own services: no proxy (upstream.proxy is for providers).
        let webhook_client = providers::http::client(
            Duration::from_millis(settings.upstream.connect_timeout_ms),
            None,
        )
        .map_err(|e| StartupError::Config(format!("webhook client: {e}")))?;
        // Its own few connections: up to webhooks.batch_size attempts record their results at
        // once, and none of that may wait for (or hold) a request's connection. Lazy like the
        // request pool, and only ever opened when a caller has a webhook.
        let dispatcher_pool = PgPoolOptions::new()
            .max_connections(settings.webhooks.max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(connect_options(settings)?);
        let dispatcher = Arc::new(crate::webhooks::dispatcher::Dispatcher::new(
            dispatcher_pool,
            webhook_client,
            Arc::clone(&webhooks),
            crate::webhooks::dispatcher::Config::from_settings(&settings.webhooks),
            instance_id.clone(),
            Arc::clone(&metrics),
        ));
        let writes = Writes::spawn(
            &pool,
            &limits,
            &instance_id,
            settings.database.max_batch,
            Duration::from_millis(settings.database.batch_linger_ms),
            &metrics,
            providers.link_members(),
        );
        let changes = Arc::new(ChangeService {
            pool: pool.clone(),
            providers: providers.clone(),
            cipher,
            hasher,
            fingerprints,
            instance_id,
            limits,
            writes,
            resilience: providers
                .targets()
                .fold(
                    Resilience::new(settings.traffic(crate::settings::ALL_PROVIDERS)),
                    |r, t| r.with_policy(t, runtime.traffic(t.as_str())),
                )
                .with_metrics(Arc::clone(&metrics)),
            turns: Turns::default(),
            tracker: TaskTracker::new(),
            metrics: Arc::clone(&metrics),
            propagate_trace_context: settings.telemetry.propagate_trace_context,
            webhooks,
        });
        let checkpoints = checkpoint_task(settings)?;
        let state = AppState {
            pool: pool.clone(),
            callers: {
                // Keys are fetched at once and refreshed for the life of the process.
                issuers.spawn_refresh(tokio_util::sync::CancellationToken::new());
                Callers::with_issuers(&settings.auth.callers, issuers)
            },
            changes: Arc::clone(&changes),
            body_limit: settings.server.body_limit_bytes,
            limits: crate::limits::EdgeLimits::new(settings),
            lifecycle: Arc::clone(&lifecycle),
            metrics: Arc::clone(&metrics),
            audit_witness: checkpoints
                .as_ref()
                .filter(|c| c.witness_dir.is_some())
                .map(|c| c.witness.clone()),
        };
        Ok(Self {
            listener,
            metrics_listener,
            metrics,
            router: routes::router(state),
            pool,
            changes,
            lifecycle,
            shutdown_delay: Duration::from_millis(settings.server.shutdown_delay_ms),
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
            dispatcher,
        })
    }

    /// Where `/metrics` is served, when `telemetry.metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The shutdown future for [`Application::run_until`]: on `signal` readiness turns 503 at
    /// once, the listener keeps accepting for `server.shutdown_delay_ms`, then it resolves.
    pub fn drain_on(
        &self,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        Arc::clone(&self.lifecycle).drain_after(signal, self.shutdown_delay)
    }

    pub fn lifecycle(&self) -> Arc<Lifecycle> {
        Arc::clone(&self.lifecycle)
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
