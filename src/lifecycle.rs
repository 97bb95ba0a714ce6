//! What the kubelet asks: is this replica ready for traffic, and is it draining. Readiness is
//! answered from state a background check keeps, on its own connection, so a probe never waits
//! for (or takes) a connection of the request pool, and a saturated pool never flaps readiness.
//! Upstream health is deliberately not part of it: every replica shares the upstreams, and
//! pulling them all would turn clean 502/202 answers into connection errors.

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Why readiness says 503; the text goes into the problem's `detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    Draining,
    /// The background check has not yet reached the database since start.
    Starting,
    /// Migrations this binary needs are not applied (none at all: `missing == total`).
    SchemaBehind {
        expected: i64,
        missing: usize,
        total: usize,
    },
    DatabaseUnreachable {
        since: Duration,
    },
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Draining => f.write_str("draining: the process is shutting down"),
            NotReady::Starting => f.write_str("starting: the database has not been reached yet"),
            NotReady::SchemaBehind {
                expected,
                missing,
                total,
            } if missing == total => write!(
                f,
                "schema not migrated: this binary expects migration {expected}; run `profile-gateway migrate`"
            ),
            NotReady::SchemaBehind {
                expected, missing, ..
            } => write!(
                f,
                "schema behind: {missing} migration(s) not applied, this binary expects migration {expected}; run `profile-gateway migrate`"
            ),
            NotReady::DatabaseUnreachable { since } => {
                write!(f, "database unreachable for {}s", since.as_secs())
            }
        }
    }
}

/// The result of one look at the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schema {
    /// Every migration of this binary is applied (more, from a newer binary, is fine).
    Current,
    Behind {
        missing: usize,
    },
}

struct Observed {
    schema: Option<Schema>,
    last_ok: Option<Instant>,
    failing_since: Option<Instant>,
}

pub struct Lifecycle {
    draining: AtomicBool,
    observed: Mutex<Observed>,
    unreachable_after: Duration,
    expected: i64,
    total: usize,
}

impl Lifecycle {
    pub fn new(unreachable_after: Duration) -> Self {
        let versions = binary_versions();
        Lifecycle {
            draining: AtomicBool::new(false),
            observed: Mutex::new(Observed {
                schema: None,
                last_ok: None,
                failing_since: None,
            }),
            unreachable_after,
            expected: versions.last().copied().unwrap_or(0),
            total: versions.len(),
        }
    }

    pub fn readiness(&self) -> Result<(), NotReady> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(NotReady::Draining);
        }
        let o = self.observed.lock().expect("lifecycle lock");
        let Some(last_ok) = o.last_ok else {
            return Err(match o.failing_since {
                Some(since) if since.elapsed() > self.unreachable_after => {
                    NotReady::DatabaseUnreachable {
                        since: since.elapsed(),
                    }
                }
                _ => NotReady::Starting,
            });
        };
        if let Some(since) = o.failing_since
            && last_ok.elapsed() > self.unreachable_after
        {
            return Err(NotReady::DatabaseUnreachable {
                since: since.elapsed(),
            });
        }
        match o.schema {
            Some(Schema::Current) => Ok(()),
            Some(Schema::Behind { missing }) => Err(NotReady::SchemaBehind {
                expected: self.expected,
                missing,
                total: self.total,
            }),
            None => Err(NotReady::Starting),
        }
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Resolves `delay` after `signal`: readiness is 503 from the signal on while the listener
    /// still accepts, then the caller's graceful shutdown drains what is in flight.
    pub async fn drain_after(self: Arc<Self>, signal: impl Future<Output = ()>, delay: Duration) {
        signal.await;
        self.start_draining();
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "draining: readiness is 503; still accepting during the shutdown delay"
        );
        tokio::time::sleep(delay).await;
        tracing::info!("shutdown delay over; no new connections, finishing in-flight requests");
    }

    fn record(&self, result: Result<Schema, sqlx::Error>) {
        let mut o = self.observed.lock().expect("lifecycle lock");
        match result {
            Ok(schema) => {
                if o.failing_since.is_some() || o.last_ok.is_none() {
                    tracing::info!("database reachable");
                }
                // Once per change between current and behind, not per migration applied.
                let kind = std::mem::discriminant(&schema);
                if o.schema.as_ref().map(std::mem::discriminant) != Some(kind) {
                    match &schema {
                        Schema::Current => {
                            tracing::info!(expected = self.expected, "database schema is current")
                        }
                        Schema::Behind { missing } => tracing::warn!(
                            expected = self.expected,
                            missing,
                            "database schema is behind this binary; not ready until `profile-gateway migrate` has run"
                        ),
                    }
                }
                o.schema = Some(schema);
                o.last_ok = Some(Instant::now());
                o.failing_since = None;
            }
            Err(e) => {
                if o.failing_since.is_none() {
                    tracing::warn!(error = %e, "readiness check cannot reach the database");
                    o.failing_since = Some(Instant::now());
                }
            }
        }
    }

    /// Checks the database every `interval` on a pool of one connection of its own, until the
    /// last other holder of `self` is gone (the application stopped).
    pub fn spawn_checker(self: &Arc<Self>, options: PgConnectOptions, interval: Duration) {
        let timeout = interval.max(Duration::from_millis(500));
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(timeout)
            .connect_lazy_with(
                options.options([("statement_timeout", timeout.as_millis().to_string())]),
            );
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let result = match tokio::time::timeout(timeout, schema_status(&pool)).await {
                    Ok(r) => r,
                    Err(_) => Err(sqlx::Error::PoolTimedOut),
                };
                let Some(lifecycle) = weak.upgrade() else {
                    break;
                };
                lifecycle.record(result);
            }
            pool.close().await;
        });
    }
}

/// The migration versions compiled into this binary, oldest first.
pub fn binary_versions() -> Vec<i64> {
    crate::db::MIGRATOR.iter().map(|m| m.version).collect()
}

/// Compares the applied migrations with the binary's. `_sqlx_migrations` is sqlx's own
/// bookkeeping table, absent from the `.sqlx` preparation database (which applies the SQL files
/// directly) and from a database never migrated, hence a runtime-checked query here.
pub async fn schema_status(pool: &PgPool) -> Result<Schema, sqlx::Error> {
    let applied: Vec<i64> =
        match sqlx::query_scalar("select version from _sqlx_migrations where success")
            .fetch_all(pool)
            .await
        {
            Ok(v) => v,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
            Err(e) => return Err(e),
        };
    let missing = binary_versions()
        .into_iter()
        .filter(|v| !applied.contains(v))
        .count();
    Ok(if missing == 0 {
        Schema::Current
    } else {
        Schema::Behind { missing }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_lifecycle() -> Lifecycle {
        let l = Lifecycle::new(Duration::from_millis(50));
        l.record(Ok(Schema::Current));
        l
    }

    #[test]
    fn not_ready_until_the_first_check_then_ready_until_draining() {
        let l = Lifecycle::new(Duration::from_secs(5));
        assert_eq!(l.readiness(), Err(NotReady::Starting));
        l.record(Ok(Schema::Current));
        assert_eq!(l.readiness(), Ok(()));
        l.start_draining();
        assert_eq!(l.readiness(), Err(NotReady::Draining));
    }

    #[test]
    fn a_short_outage_is_tolerated_a_long_one_is_not() {
        let l = ready_lifecycle();
        l.record(Err(sqlx::Error::PoolTimedOut));
        assert_eq!(l.readiness(), Ok(()));
        std::thread::sleep(Duration::from_millis(80));
        assert!(matches!(
            l.readiness(),
            Err(NotReady::DatabaseUnreachable { .. })
        ));
        l.record(Ok(Schema::Current));
        assert_eq!(l.readiness(), Ok(()));
    }

    #[test]
    fn a_schema_behind_names_the_expected_migration() {
        let l = Lifecycle::new(Duration::from_secs(5));
        let versions = binary_versions();
        l.record(Ok(Schema::Behind {
            missing: versions.len(),
        }));
        let reason = l.readiness().unwrap_err().to_string();
        assert!(reason.starts_with("schema not migrated"), "{reason}");
        assert!(
            reason.contains(&versions.last().unwrap().to_string()),
            "{reason}"
        );
        l.record(Ok(Schema::Behind { missing: 1 }));
        let reason = l.readiness().unwrap_err().to_string();
        assert!(reason.starts_with("schema behind: 1 migration"), "{reason}");
    }
}
