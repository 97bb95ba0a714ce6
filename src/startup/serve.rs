//! Serving: the listeners and background tasks of a built application, and its drain.

use super::Application;
use crate::changes::completer;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

impl Application {
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
        if let Some(listener) = self.metrics_listener {
            let admin =
                crate::telemetry::metrics::router(Arc::clone(&self.metrics), self.pool.clone());
            let stop = background.clone();
            tokio::spawn(async move {
                let served = axum::serve(listener, admin)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the metrics listener failed");
                }
            });
        }
        tokio::spawn(completer::run(
            Arc::clone(&self.changes),
            self.completer_interval,
            background.clone(),
        ));
        // Tracked with the changes, so shutdown lets an attempt in flight finish within the grace.
        self.changes.tracker.spawn(crate::webhooks::dispatcher::run(
            Arc::clone(&self.dispatcher),
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
