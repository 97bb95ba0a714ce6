//! Prometheus metrics: one registry per application (so tests that build several apps in one
//! process see only their own series), served on a separate admin listener
//! (`telemetry.metrics_listen`) at `/metrics` in the classic text format.
//!
//! The metric names and labels are a contract with the alerts in deploy/: rename nothing. No
//! label ever holds a user, change or request id.
//!
//! Over 400 lines on purpose: it is the one table of metric names, labels and help texts the alerts
//! depend on; split, a rename would hide in another file.

use crate::domain::Target;
use crate::domain::{ChangeStatus, StepStatus};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use sqlx::PgPool;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// Acquire timeouts are counted where a `sqlx::Error` becomes a gateway error, which knows no
/// application; there is one pool per process, so the count is process-wide and every registry
/// shows the same counter.
static POOL_ACQUIRE_TIMEOUTS: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "profile_gateway_db_pool_acquire_timeouts_total",
        "Database pool acquires that timed out (database.acquire_timeout_ms)",
    )
    .expect("a valid metric name")
});

/// Counts an error that is a pool acquire timeout; any other error is ignored.
pub fn note_db_error(e: &sqlx::Error) {
    if matches!(e, sqlx::Error::PoolTimedOut) {
        POOL_ACQUIRE_TIMEOUTS.inc();
    }
}

pub struct Metrics {
    registry: Registry,
    pub http_duration: HistogramVec,
    pub http_active: IntGaugeVec,
    pub upstream_attempt: HistogramVec,
    pub retries: IntCounterVec,
    pub retry_budget_denied: IntCounterVec,
    pub breaker_open: IntGaugeVec,
    pub breaker_transitions: IntCounterVec,
    pub changes_finished: IntCounterVec,
    pub steps: IntCounterVec,
    pub problems: IntCounterVec,
    pub idempotent_replays: IntCounter,
    pub idempotency_conflicts: IntCounter,
    pub dry_runs: IntCounterVec,
    pub dry_run_reads: IntCounterVec,
    pub completer_backlog: IntGauge,
    pub completer_oldest_age: Gauge,
    pub lease_takeovers: IntCounter,
    pub db_batch_size: HistogramVec,
    pub db_commit: HistogramVec,
    pub pool_connections: IntGaugeVec,
    pub pool_max: IntGauge,
    pub audit_maintenance_last_success: Gauge,
    pub webhook_attempt: HistogramVec,
    pub webhook_events_failed: IntCounter,
    pub webhook_backlog: IntGauge,
    pub webhook_oldest_age: Gauge,
    pub webhook_oldest_overdue: Gauge,
    pub webhook_receivers_paused: IntGauge,
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("a valid histogram")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid gauge")
}

/// Latency buckets from 5 ms to 20 s: the request deadline is 15 s by default.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
    ]
}

impl Metrics {
    pub fn new(pool_max: u32) -> Arc<Self> {
        let m = Metrics {
            registry: Registry::new(),
            http_duration: histogram(
                "http_server_request_duration_seconds",
                "Duration of HTTP requests served, by method, route template and status",
                &["method", "route", "status"],
                latency_buckets(),
            ),
            http_active: gauge(
                "http_server_active_requests",
                "HTTP requests being served",
                &["method", "route"],
            ),
            upstream_attempt: histogram(
                "profile_gateway_upstream_attempt_duration_seconds",
                "Duration of one step attempt at a provider, by outcome (applied or a step error code)",
                &["provider", "outcome"],
                latency_buckets(),
            ),
            retries: counter(
                "profile_gateway_upstream_retries_total",
                "Step attempts after the first that the retry budget let out",
                &["provider"],
            ),
            retry_budget_denied: counter(
                "profile_gateway_upstream_retry_budget_denied_total",
                "Retries the per-provider retry budget refused",
                &["provider"],
            ),
            breaker_open: gauge(
                "profile_gateway_upstream_breaker_open",
                "1 while the provider's circuit breaker is open or half-open (failing fast), 0 when closed",
                &["provider"],
            ),
            breaker_transitions: counter(
                "profile_gateway_upstream_breaker_transitions_total",
                "Circuit breaker state changes, by the state entered",
                &["provider", "to"],
            ),
            changes_finished: counter(
                "profile_gateway_changes_finished_total",
                "Changes that reached a final state, by that state",
                &["status"],
            ),
            steps: counter(
                "profile_gateway_steps_total",
                "Steps of finished changes, by final step status",
                &["provider", "status"],
            ),
            problems: counter(
                "profile_gateway_problems_total",
                "Problem responses sent, by problem code",
                &["code"],
            ),
            idempotent_replays: IntCounter::new(
                "profile_gateway_idempotent_replays_total",
                "Requests answered from the record of an earlier request with the same Idempotency-Key",
            )
            .expect("a valid counter"),
            idempotency_conflicts: IntCounter::new(
                "profile_gateway_idempotency_conflicts_total",
                "Requests refused with 409 because the first request with their Idempotency-Key was still in flight",
            )
            .expect("a valid counter"),
            dry_runs: counter(
                "profile_gateway_dry_runs_total",
                "Dry runs (dryRun=All) answered with a plan, by what they read (none or live)",
                &["read"],
            ),
            dry_run_reads: counter(
                "profile_gateway_dry_run_reads_total",
                "Upstream reads of dry runs with read=live, by outcome (read or a step error code)",
                &["provider", "outcome"],
            ),
            completer_backlog: IntGauge::new(
                "profile_gateway_completer_backlog",
                "Changes not yet final (in flight, waiting for a retry or for a completer)",
            )
            .expect("a valid gauge"),
            completer_oldest_age: Gauge::new(
                "profile_gateway_completer_oldest_pending_age_seconds",
                "Age of the oldest change that is not final (0 when there is none)",
            )
            .expect("a valid gauge"),
            lease_takeovers: IntCounter::new(
                "profile_gateway_lease_takeovers_total",
                "Unfinished changes this replica's completer claimed from another replica's expired lease",
            )
            .expect("a valid counter"),
            db_batch_size: histogram(
                "profile_gateway_db_batch_size",
                "Items per group-commit write, by statement",
                &["statement"],
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
            ),
            db_commit: histogram(
                "profile_gateway_db_commit_duration_seconds",
                "Duration of one group-commit write, by statement",
                &["statement"],
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            ),
            pool_connections: gauge(
                "profile_gateway_db_pool_connections",
                "Database pool connections, by state",
                &["state"],
            ),
            pool_max: IntGauge::new(
                "profile_gateway_db_pool_max",
                "Largest number of connections the pool opens (database.max_connections)",
            )
            .expect("a valid gauge"),
            audit_maintenance_last_success: Gauge::new(
                "profile_gateway_audit_maintenance_last_success_timestamp_seconds",
                "Unix time of the last successful audit partition maintenance (0: none yet)",
            )
            .expect("a valid gauge"),
            webhook_attempt: histogram(
                "profile_gateway_webhook_attempt_duration_seconds",
                "Duration of one webhook delivery attempt, by outcome (delivered, status, redirect, timeout, connect, broken)",
                &["outcome"],
                latency_buckets(),
            ),
            webhook_events_failed: IntCounter::new(
                "profile_gateway_webhook_events_failed_total",
                "Webhook events given up after webhooks.max_age_hours without a successful attempt",
            )
            .expect("a valid counter"),
            webhook_backlog: IntGauge::new(
                "profile_gateway_webhook_backlog",
                "Webhook events not yet delivered (due, waiting for a retry, or paused)",
            )
            .expect("a valid gauge"),
            webhook_oldest_age: Gauge::new(
                "profile_gateway_webhook_oldest_pending_age_seconds",
                "Age of the oldest webhook event not yet delivered (0 when there is none)",
            )
            .expect("a valid gauge"),
            webhook_oldest_overdue: Gauge::new(
                "profile_gateway_webhook_oldest_overdue_seconds",
                "How long the most overdue webhook event of a receiver that is not paused has been due without being claimed (near 0 while dispatchers run)",
            )
            .expect("a valid gauge"),
            webhook_receivers_paused: IntGauge::new(
                "profile_gateway_webhook_receivers_paused",
                "Webhook receivers paused after webhooks.pause_after_failures consecutive failures",
            )
            .expect("a valid gauge"),
        };
        m.pool_max.set(i64::from(pool_max));
        let build_info = gauge(
            "profile_gateway_build_info",
            "Always 1; the version label says which build runs",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for read in ["none", "live"] {
            m.dry_runs.with_label_values(&[read]);
        }
        for s in [
            ChangeStatus::Applied,
            ChangeStatus::PartiallyApplied,
            ChangeStatus::Failed,
        ] {
            m.changes_finished.with_label_values(&[s.as_str()]);
        }
        let r = &m.registry;
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.http_duration.clone()),
            Box::new(m.http_active.clone()),
            Box::new(m.upstream_attempt.clone()),
            Box::new(m.retries.clone()),
            Box::new(m.retry_budget_denied.clone()),
            Box::new(m.breaker_open.clone()),
            Box::new(m.breaker_transitions.clone()),
            Box::new(m.changes_finished.clone()),
            Box::new(m.steps.clone()),
            Box::new(m.problems.clone()),
            Box::new(m.idempotent_replays.clone()),
            Box::new(m.idempotency_conflicts.clone()),
            Box::new(m.dry_runs.clone()),
            Box::new(m.dry_run_reads.clone()),
            Box::new(m.completer_backlog.clone()),
            Box::new(m.completer_oldest_age.clone()),
            Box::new(m.lease_takeovers.clone()),
            Box::new(m.db_batch_size.clone()),
            Box::new(m.db_commit.clone()),
            Box::new(m.pool_connections.clone()),
            Box::new(m.pool_max.clone()),
            Box::new(POOL_ACQUIRE_TIMEOUTS.clone()),
            Box::new(m.audit_maintenance_last_success.clone()),
            Box::new(m.webhook_attempt.clone()),
            Box::new(m.webhook_events_failed.clone()),
            Box::new(m.webhook_backlog.clone()),
            Box::new(m.webhook_oldest_age.clone()),
            Box::new(m.webhook_oldest_overdue.clone()),
            Box::new(m.webhook_receivers_paused.clone()),
            Box::new(build_info),
        ];
        for c in collectors {
            r.register(c).expect("metric names are unique");
        }
        Arc::new(m)
    }

    /// One attempt at a provider: `outcome` is `applied` or the step error code.
    /// Per-provider series exist (at 0) before the first event: an alert on `breaker_open`
    /// must see a 0 rather than no series at all.
    pub fn providers_registered(&self, targets: impl IntoIterator<Item = Target>) {
        for t in targets {
            let p = t.as_str();
            self.breaker_open.with_label_values(&[p]).set(0);
            self.retries.with_label_values(&[p]);
            self.retry_budget_denied.with_label_values(&[p]);
        }
    }

    pub fn upstream_attempt(&self, target: Target, outcome: &str, took: Duration) {
        self.upstream_attempt
            .with_label_values(&[target.as_str(), outcome])
            .observe(took.as_secs_f64());
    }

    pub fn breaker_state(&self, target: Target, to: &'static str) {
        let p = target.as_str();
        self.breaker_transitions.with_label_values(&[p, to]).inc();
        self.breaker_open
            .with_label_values(&[p])
            .set(i64::from(to != "closed"));
    }

    /// A change that became final: its status and each step's final status.
    pub fn change_finished(&self, status: ChangeStatus, steps: &[(Target, StepStatus)]) {
        self.changes_finished
            .with_label_values(&[status.as_str()])
            .inc();
        for (target, s) in steps {
            let label = match s {
                StepStatus::Applied => "applied",
                StepStatus::Failed => "failed",
                StepStatus::Unknown => "unknown",
                StepStatus::Pending => continue,
            };
            self.steps
                .with_label_values(&[target.as_str(), label])
                .inc();
        }
    }

    /// One group-commit write of `size` items for `statement` (links, record, settle).
    pub fn db_write(&self, statement: &str, size: usize, took: Duration) {
        self.db_batch_size
            .with_label_values(&[statement])
            .observe(size as f64);
        self.db_commit
            .with_label_values(&[statement])
            .observe(took.as_secs_f64());
    }

    /// Reads what is sampled at scrape time: the pool's connections and the backlog of unfinished
    /// changes (one small query, bounded so a database outage does not hang the scrape; the last
    /// values stay then).
    async fn sample(&self, pool: &PgPool) {
        let size = i64::from(pool.size());
        let idle = pool.num_idle() as i64;
        self.pool_connections
            .with_label_values(&["in_use"])
            .set((size - idle).max(0));
        self.pool_connections.with_label_values(&["idle"]).set(idle);
        let backlog = sqlx::query!(
            r#"select count(*) as "pending!",
                      coalesce(extract(epoch from now() - min(created_at)), 0)::float8 as "oldest_age!"
                 from changes where status = 'pending'"#
        )
        .fetch_one(pool);
        match tokio::time::timeout(Duration::from_secs(2), backlog).await {
            Ok(Ok(row)) => {
                self.completer_backlog.set(row.pending);
                self.completer_oldest_age.set(row.oldest_age.max(0.0));
            }
            Ok(Err(e)) => {
                note_db_error(&e);
                tracing::debug!(error = %e, "cannot sample the completer backlog")
            }
            Err(_) => tracing::debug!("sampling the completer backlog timed out"),
        }
        // `audit maintain` runs as its own role (a CronJob), not in this process: its last
        // success is the newest `maintenance_ran` event.
        match tokio::time::timeout(Duration::from_secs(2), crate::audit::last_maintenance(pool))
            .await
        {
            Ok(Ok(Some(at))) => self
                .audit_maintenance_last_success
                .set(at.timestamp_millis() as f64 / 1000.0),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                note_db_error(&e);
                tracing::debug!(error = %e, "cannot sample the last audit maintenance")
            }
            Err(_) => tracing::debug!("sampling the last audit maintenance timed out"),
        }
        match tokio::time::timeout(
            Duration::from_secs(2),
            crate::store::webhooks::backlog(pool),
        )
        .await
        {
            Ok(Ok(b)) => {
                self.webhook_backlog.set(b.pending);
                self.webhook_oldest_age.set(b.oldest_age);
                self.webhook_oldest_overdue.set(b.oldest_overdue);
                self.webhook_receivers_paused.set(b.paused);
            }
            Ok(Err(e)) => {
                note_db_error(&e);
                tracing::debug!(error = %e, "cannot sample the webhook backlog")
            }
            Err(_) => tracing::debug!("sampling the webhook backlog timed out"),
        }
    }

    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// Unix time now, for the "last success" gauges.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[derive(Clone)]
struct Scrape {
    metrics: Arc<Metrics>,
    pool: PgPool,
}

async fn scrape(State(s): State<Scrape>) -> Response {
    let started = Instant::now();
    s.metrics.sample(&s.pool).await;
    let body = s.metrics.encode();
    tracing::debug!(
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "metrics scraped"
    );
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(prometheus::TEXT_FORMAT),
    );
    response
}

/// The admin router: `/metrics` only. It is served on its own listener so the API's Service
/// (and its NetworkPolicy) never exposes it.
pub fn router(metrics: Arc<Metrics>, pool: PgPool) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(Scrape { metrics, pool })
}
