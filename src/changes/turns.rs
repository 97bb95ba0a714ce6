//! Wakes a change waiting for its turn when the user's previous change becomes final, on any
//! replica (Postgres LISTEN/NOTIFY). Waiters also poll, slowly, so a lost notification only
//! delays. The LISTEN connection is this replica's own, outside the request pool, so
//! `database.max_connections` is what requests get.

use crate::store::changes::FINAL_CHANNEL;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Turns {
    tx: broadcast::Sender<(i64, String)>,
}

impl Default for Turns {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(1024).0,
        }
    }
}

impl Turns {
    pub fn subscribe(&self) -> broadcast::Receiver<(i64, String)> {
        self.tx.subscribe()
    }

    /// Runs until cancelled, reconnecting when the listening connection drops.
    pub async fn listen(self, options: PgConnectOptions, stop: CancellationToken) {
        // A pool of one only to reconnect; it never lends to anyone else.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options);
        loop {
            let session = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(FINAL_CHANNEL).await?;
                loop {
                    let n = listener.recv().await?;
                    if let Some((seq, user)) = n.payload().split_once(' ')
                        && let Ok(seq) = seq.parse::<i64>()
                    {
                        let _ = self.tx.send((seq, user.to_string()));
                    }
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                r = session => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "change notifications interrupted; reconnecting");
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
