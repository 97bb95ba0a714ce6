//! The dispatcher: in every replica, a loop that claims due outbox events (never two replicas the
//! same one), signs and sends each, and records the attempt. A failed attempt (no answer in time,
//! no connection, a redirect, any non-2xx) is retried with exponential backoff and jitter until
//! `webhooks.max_age_hours`, then the event is marked failed and counted. A receiver that fails
//! `pause_after_failures` times in a row is paused; after the pause one probe decides whether it
//! resumes. Nothing here runs on a request's path: the settle only writes the outbox row and
//! wakes this loop.

use super::{Webhooks, signature};
use crate::settings::WebhooksSettings;
use crate::store::webhooks::{self as store, Attempt, Claimed};
use rand::Rng;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A claim outlives the attempt's own timeout by as much again (at most this), so a slow record
/// does not hand the event to another replica while this one still holds a valid answer.
const CLAIM_MARGIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Config {
    pub poll_interval: Duration,
    pub batch_size: i64,
    pub per_receiver: i64,
    pub attempt_timeout: Duration,
    pub max_response_bytes: usize,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub max_age: Duration,
    pub pause_after: i32,
    pub pause: Duration,
}

impl Config {
    pub fn from_settings(w: &WebhooksSettings) -> Self {
        let ms = Duration::from_millis;
        Self {
            poll_interval: ms(w.poll_interval_ms),
            batch_size: w.batch_size,
            per_receiver: w.max_in_flight_per_receiver,
            attempt_timeout: ms(w.attempt_timeout_ms),
            max_response_bytes: w.max_response_bytes,
            retry_base: ms(w.retry_base_ms),
            retry_cap: ms(w.retry_cap_ms),
            max_age: Duration::from_secs(w.max_age_hours * 3600),
            pause_after: w.pause_after_failures,
            pause: ms(w.pause_ms),
        }
    }
}

pub struct Dispatcher {
    /// Its own pool (`webhooks.max_connections`), never the request pool.
    pub pool: PgPool,
    /// Redirects are never followed (see `providers::http::client`).
    pub client: reqwest::Client,
    pub hooks: Arc<Webhooks>,
    pub config: Config,
    /// Names this replica in claims and attempt rows.
    pub replica: String,
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// Attempts in flight, at most `batch_size`. Each runs as its own task, so a receiver that
    /// hangs until the attempt timeout holds one slot and delays no other event.
    slots: Arc<Semaphore>,
    attempts: TaskTracker,
    /// A pass left due events behind for want of a slot: the next attempt to end wakes the loop.
    saturated: AtomicBool,
    last_expiry: Mutex<Option<Instant>>,
    /// When a failed pass was last logged, and how many failed since.
    pass_failures: Mutex<(Option<Instant>, u64)>,
}

/// A dispatcher whose passes keep failing logs a warning at most this often.
const PASS_FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// The wait after failed attempt `attempt` (1 for the first): min(cap, base * 2^(attempt-1)),
/// times a jitter in [1, 1.5) so receivers that failed together are not retried together. The
/// jitter stays below the doubling, so the waits grow strictly until the cap.
pub fn backoff(base: Duration, cap: Duration, attempt: i32) -> Duration {
    let doublings = attempt.saturating_sub(1).clamp(0, 30) as u32;
    let exp = base.saturating_mul(1u32 << doublings).min(cap);
    exp.mul_f64(rand::thread_rng().gen_range(1.0..1.5))
}

/// Runs until `stop`: a pass at every poll interval (with jitter, so replicas do not poll in
/// lockstep), and at once when this replica committed an event or an attempt freed the slot a
/// due event was waiting for. On `stop` it claims nothing more and lets the attempts in flight
/// end (each is bounded by `webhooks.attempt_timeout_ms`).
pub async fn run(d: Arc<Dispatcher>, stop: CancellationToken) {
    if d.hooks.is_empty() {
        return;
    }
    loop {
        let poll = d.config.poll_interval;
        let jitter = rand::thread_rng().gen_range(0..=poll.as_millis() as u64 / 4);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(poll + Duration::from_millis(jitter)) => {}
            _ = d.hooks.woken() => {}
        }
        if let Err(e) = d.pass().await {
            d.pass_failed(&e);
        }
    }
    d.attempts.close();
    d.attempts.wait().await;
}

impl Dispatcher {
    pub fn new(
        pool: PgPool,
        client: reqwest::Client,
        hooks: Arc<Webhooks>,
        config: Config,
        replica: String,
        metrics: Arc<crate::telemetry::metrics::Metrics>,
    ) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(config.batch_size.max(1) as usize)),
            pool,
            client,
            hooks,
            config,
            replica,
            metrics,
            attempts: TaskTracker::new(),
            saturated: AtomicBool::new(false),
            last_expiry: Mutex::new(None),
            pass_failures: Mutex::new((None, 0)),
        }
    }

    /// A pass that failed (the database is unreachable, say) is retried at the next poll; nothing
    /// is delivered meanwhile, so it is a warning, once a minute with the count, not per poll.
    fn pass_failed(&self, e: &sqlx::Error) {
        let mut f = self.pass_failures.lock().expect("pass failures lock");
        f.1 += 1;
        if f.0.is_none_or(|t| t.elapsed() >= PASS_FAILURE_LOG_EVERY) {
            tracing::warn!(error = %e, failed_passes = f.1,
                "webhook dispatcher cannot claim or expire events; nothing is delivered until it can");
            *f = (Some(Instant::now()), 0);
        }
    }

    /// Expires what ran out of time (once per poll interval), claims as many due events as there
    /// are free slots, and starts an attempt for each. Returns how many were started.
    pub async fn pass(self: &Arc<Self>) -> Result<usize, sqlx::Error> {
        let expiry_due = {
            let mut last = self.last_expiry.lock().expect("expiry lock");
            let due = last.is_none_or(|t| t.elapsed() >= self.config.poll_interval);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if expiry_due {
            let expired =
                store::expire(&self.pool, self.config.max_age, self.config.pause_after).await?;
            if expired > 0 {
                tracing::warn!(
                    events = expired,
                    "webhook events failed: their receiver stayed paused for webhooks.max_age_hours"
                );
                self.metrics.webhook_events_failed.inc_by(expired);
            }
        }
        let free = self.slots.available_permits();
        if free == 0 {
            self.saturated.store(true, Ordering::SeqCst);
            return Ok(0);
        }
        let claim_for = self.config.attempt_timeout + self.config.attempt_timeout.min(CLAIM_MARGIN);
        let callers = self.hooks.callers();
        let mut claimed = store::claim_probes(
            &self.pool,
            &self.replica,
            &callers,
            claim_for,
            self.config.pause_after,
            self.config.pause,
        )
        .await?;
        let room = free.saturating_sub(claimed.len());
        if room > 0 {
            claimed.extend(
                store::claim_due(
                    &self.pool,
                    &self.replica,
                    &callers,
                    room as i64,
                    claim_for,
                    self.config.pause_after,
                    self.config.per_receiver,
                )
                .await?,
            );
        }
        if claimed.len() >= free {
            // There may be more due than there was room for.
            self.saturated.store(true, Ordering::SeqCst);
        }
        let n = claimed.len();
        for event in claimed {
            // A probe may run beyond the slots: it is one per paused receiver.
            let slot = Arc::clone(&self.slots).try_acquire_owned().ok();
            let d = Arc::clone(self);
            self.attempts.spawn(async move {
                d.attempt(&event).await;
                drop(slot);
                if d.saturated.swap(false, Ordering::SeqCst) {
                    d.hooks.wake();
                }
            });
        }
        Ok(n)
    }

    async fn attempt(&self, event: &Claimed) {
        let Some(sub) = self.hooks.get(&event.caller) else {
            // Its caller no longer has a webhook: the claim lapses and the event expires.
            tracing::warn!(caller = %event.caller, "webhook event for a caller without webhook_url");
            return;
        };
        let id = event.id.to_string();
        let timestamp = chrono::Utc::now().timestamp();
        let signature = signature::header(&sub.secrets, &id, timestamp, event.body.as_bytes());
        crate::failpoint::hit("before_webhook_send");
        let request = self
            .client
            .post(&sub.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header("profile-gateway-event", &event.event_type)
            .body(event.body.clone());
        let started_at = chrono::Utc::now();
        let started = Instant::now();
        let (status_code, error) = send(
            request,
            self.config.attempt_timeout,
            self.config.max_response_bytes,
        )
        .await;
        let took = started.elapsed();
        let outcome = error.unwrap_or("delivered");
        self.metrics
            .webhook_attempt
            .with_label_values(&[outcome])
            .observe(took.as_secs_f64());
        let attempt = Attempt {
            event,
            replica: &self.replica,
            started_at,
            took,
            status_code,
            error,
            retry_in: backoff(self.config.retry_base, self.config.retry_cap, event.retry),
            max_age: self.config.max_age,
            pause_after: self.config.pause_after,
            pause: self.config.pause,
        };
        match store::record_attempt(&self.pool, &attempt).await {
            Ok(Some(status)) if status == "failed" => {
                self.metrics.webhook_events_failed.inc();
                tracing::warn!(delivery_id = %event.id, caller = %event.caller, attempts = event.attempt,
                    "webhook event failed: no successful attempt within webhooks.max_age_hours");
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::info!(delivery_id = %event.id, "webhook claim was taken over; attempt kept, event left to its new owner");
            }
            // The claim lapses and the event is sent again: receivers deduplicate by webhook-id.
            Err(e) => {
                tracing::warn!(delivery_id = %event.id, error = %e, "could not record a webhook attempt");
            }
        }
    }
}

/// Sends one attempt. The status decides: once a head arrived, the body is read (up to
/// `max_bytes`, within what is left of `timeout`) only so the connection can be reused, and a body
/// that is too long, cut short or late changes nothing: the receiver said 2xx, so it has the event.
async fn send(
    request: reqwest::RequestBuilder,
    timeout: Duration,
    max_bytes: usize,
) -> (Option<u16>, Option<&'static str>) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut response = match tokio::time::timeout_at(deadline, request.send()).await {
        Err(_) => return (None, Some("timeout")),
        Ok(Err(e)) if e.is_timeout() => return (None, Some("timeout")),
        Ok(Err(e)) if e.is_connect() => return (None, Some("connect")),
        Ok(Err(_)) => return (None, Some("broken")),
        Ok(Ok(r)) => r,
    };
    let status = response.status().as_u16();
    let mut read = 0usize;
    if response
        .content_length()
        .is_none_or(|n| n <= max_bytes as u64)
    {
        while read <= max_bytes {
            match tokio::time::timeout_at(deadline, response.chunk()).await {
                Ok(Ok(Some(chunk))) => read += chunk.len(),
                _ => break,
            }
        }
    }
    (Some(status), judge(status))
}

/// A 2xx is a delivery; a 3xx is refused (redirects are not followed); anything else fails.
fn judge(status: u16) -> Option<&'static str> {
    match status {
        200..=299 => None,
        300..=399 => Some("redirect"),
        _ => Some("status"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_strictly_until_the_cap_and_stay_jittered_below_it() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_millis(1000));
        for _ in 0..200 {
            let w: Vec<Duration> = (1..=4).map(|n| backoff(base, cap, n)).collect();
            assert!(w[0] >= base && w[0] < base * 3 / 2, "{w:?}");
            assert!(w.windows(2).all(|p| p[0] < p[1]), "{w:?}");
            let capped = backoff(base, cap, 30);
            assert!(capped >= cap && capped < cap * 3 / 2, "{capped:?}");
        }
    }

    #[test]
    fn only_2xx_is_a_delivery() {
        assert_eq!(judge(200), None);
        assert_eq!(judge(204), None);
        assert_eq!(judge(302), Some("redirect"));
        assert_eq!(judge(500), Some("status"));
        assert_eq!(judge(404), Some("status"));
    }
}
