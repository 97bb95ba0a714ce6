//! The completer: in every replica, a loop that claims unfinished changes whose lease ran out
//! (a replica crashed, a deadline passed, a retry came due) and drives them to a final state. Also
//! the janitor for idempotency keys and expired payloads.

use super::ChangeService;
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// At most this many changes are claimed per tick, so one replica does not hoard a backlog.
const CLAIMS_PER_TICK: usize = 16;
const JANITOR_EVERY: Duration = Duration::from_secs(60);

pub async fn run(service: Arc<ChangeService>, interval: Duration, stop: CancellationToken) {
    let mut last_janitor: Option<Instant> = None;
    loop {
        // Jitter keeps replicas that started together from polling in lockstep.
        let jitter = rand::thread_rng().gen_range(0..=interval.as_millis() as u64 / 2);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval + Duration::from_millis(jitter)) => {}
        }
        if let Err(e) = tick(&service).await {
            tracing::debug!(error = %e, "completer tick failed; retrying next tick");
        }
        if last_janitor.is_none_or(|t| t.elapsed() >= JANITOR_EVERY) {
            last_janitor = Some(Instant::now());
            let reaped = crate::store::idempotency::reap(&service.pool).await;
            let erased = crate::store::changes::erase_expired_payloads(&service.pool).await;
            if let Err(e) = crate::store::assertions::reap(&service.pool).await {
                tracing::debug!(error = %e, "could not reap expired user-assertion jtis");
            }
            if let (Ok(k), Ok(p)) = (&reaped, &erased)
                && (*k > 0 || *p > 0)
            {
                tracing::info!(keys_reaped = k, payloads_erased = p, "janitor");
            }
        }
    }
}

/// Claims and resumes up to `CLAIMS_PER_TICK` changes; returns how many were resumed.
pub async fn tick(service: &Arc<ChangeService>) -> Result<usize, sqlx::Error> {
    let mut resumed = 0;
    for _ in 0..CLAIMS_PER_TICK {
        let Some(claimed) = crate::store::changes::claim_expired(
            &service.pool,
            &service.instance_id,
            service.limits.lease,
        )
        .await?
        else {
            break;
        };
        let (change_id, fence) = (claimed.id, claimed.fence);
        if claimed
            .previous_owner
            .as_deref()
            .is_some_and(|o| o != service.instance_id)
        {
            service.metrics.lease_takeovers.inc();
        }
        match service.resume(claimed, None).await? {
            Some(running) => {
                tracing::info!(%change_id, "completer resumes a change");
                let s = Arc::clone(service);
                // Its own trace: the request that recorded it has long been answered.
                let span = tracing::info_span!(
                    parent: None,
                    "completer.resume",
                    otel.name = "resume change",
                    change_id = %change_id,
                );
                service.tracker.spawn(tracing::Instrument::instrument(
                    async move { s.drive(running, None).await },
                    span,
                ));
                resumed += 1;
            }
            None => {
                // Cannot be resumed here (payload key missing): look again much later.
                let _ = crate::store::changes::park(
                    &service.pool,
                    change_id,
                    fence,
                    Duration::from_secs(3600),
                )
                .await;
            }
        }
    }
    Ok(resumed)
}
