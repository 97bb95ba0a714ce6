//! The change lifecycle: record the change before any upstream call, wait for the user's turn,
//! fan out, record each round's outcomes (with the final state when they make it final), retry what
//! may be retried. One task per change records and drives it, so a client that hangs up does not
//! stop a recorded change; a replica that dies leaves a lease that runs out, and any replica's
//! completer resumes the change from its record.
//!
//! Orchestration is split by phase (`submit`, `drive`, `attempt`, `settle`, `resume`); every
//! decision they take (step status, finality, retry timing, the PATCH answer) is `policy`'s.

mod attempt;
pub mod batcher;
pub mod completer;
mod drive;
pub mod dry_run;
pub mod idempotency;
pub mod links_cache;
pub mod policy;
pub mod resilience;
mod resume;
mod running;
mod settle;
mod submit;
pub mod turns;
mod writes;

pub use writes::Writes;

use crate::crypto::{PayloadCipher, PiiHasher};
use crate::domain::ChangeView;
use crate::domain::{FieldError, Target};
use crate::providers::Providers;
use resilience::Resilience;
use running::StepState;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone)]
pub struct Limits {
    /// How long a caller waits before getting 202.
    pub deadline: Duration,
    pub lease: Duration,
    pub idempotency_retention: Duration,
    pub failed_payload_retention: Duration,
    /// Unfinished changes one user may have; a change beyond it is refused unrecorded.
    pub max_pending_per_user: i64,
    /// How often a change waiting for its turn re-checks when no notification came.
    pub turn_poll: Duration,
}

pub struct ChangeService {
    pub pool: PgPool,
    pub providers: Providers,
    pub cipher: PayloadCipher,
    pub hasher: PiiHasher,
    pub fingerprints: idempotency::Fingerprints,
    /// Names this replica in leases.
    pub instance_id: String,
    pub limits: Limits,
    pub resilience: Resilience,
    pub turns: turns::Turns,
    pub writes: Writes,
    pub tracker: TaskTracker,
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// `telemetry.propagate_trace_context`: send `traceparent` upstream.
    pub propagate_trace_context: bool,
    /// Callers' outcome webhooks: their events are written by the settle that records the outcome.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
}

impl ChangeService {
    /// How many attempts a step of `target` gets, from its provider's traffic policy
    /// (`[providers.all]` then `[providers.<name>]`). The one place the lifecycle reads them.
    fn attempt_limits(&self, target: Target) -> policy::AttemptLimits {
        let traffic = self.resilience.policy(target);
        policy::AttemptLimits {
            max_attempts: traffic.max_attempts,
            in_request_attempts: traffic.in_request_attempts,
        }
    }

    fn is_final(&self, s: &StepState) -> bool {
        let max = self.attempt_limits(s.planned.target).max_attempts;
        policy::is_final(s.status, s.attempts, max)
    }
}

#[derive(Debug)]
pub enum SubmitError {
    UserNotFound,
    MissingLink(Vec<FieldError>),
    /// The key was used with another request.
    KeyReused,
    /// The key's first request is still being answered.
    KeyInFlight,
    /// The user has `max_pending_per_user` unfinished changes; nothing was recorded.
    TooManyPending,
    Db(sqlx::Error),
    /// The database could not take the record (nothing was sent anywhere).
    Unavailable(String),
    Internal(String),
}

impl From<batcher::BatchError> for SubmitError {
    fn from(e: batcher::BatchError) -> Self {
        if e.unavailable {
            SubmitError::Unavailable(e.message)
        } else {
            SubmitError::Internal(e.message)
        }
    }
}

impl From<sqlx::Error> for SubmitError {
    fn from(e: sqlx::Error) -> Self {
        SubmitError::Db(e)
    }
}

/// What an operator retry did.
pub enum RetryOutcome {
    Driven(Submitted),
    NotFound,
    NotLatest,
    NotRetryable,
    CannotOpen,
}

/// How a change stands when the request has to answer.
pub enum Submitted {
    /// Every step reached a final state and every outcome is recorded.
    Final(ChangeView),
    /// Steps are still running or waiting (deadline, retry scheduled, waiting for the user's
    /// earlier change): the change goes on in the background.
    InProgress(ChangeView),
    /// A retry with a known key: the change as recorded now.
    Replay(ChangeView),
}
