//! Wakes a change waiting for its turn when the user's previous change becomes final, on any
//! replica (Postgres LISTEN/NOTIFY). Waiters also poll, so a lost notification only delays.

use crate::store::changes::FINAL_CHANNEL;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
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
    pub async fn listen(self, pool: PgPool, stop: CancellationToken) {
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
