//! The change lifecycle: record the change before any upstream call, wait for the user's turn,
//! fan out, record each round's outcomes (with the final state when they make it final), retry what
//! may be retried. Driving runs in its own task so a client that hangs up does not stop a recorded
//! change; a replica that dies leaves a lease that runs out, and any replica's completer resumes the
//! change from its record.

pub mod batcher;
pub mod completer;
pub mod dry_run;
pub mod idempotency;
pub mod links_cache;
pub mod model;
pub mod resilience;
pub mod turns;

use crate::audit::{self, AuditContext, AuditEvent};
use crate::crypto::{PayloadCipher, PiiHasher};
use crate::domain::{FieldError, PlannedStep, ProfilePatch, UserId, plan};
use crate::providers::{Providers, StepError};
use crate::store;
use crate::store::batch;
use idempotency::IdempotencyKey;
use model::{ChangeStatus, ChangeView, StepErrorView, StepStatus, StepView};
use resilience::{Admission, Resilience};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::task::TaskTracker;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Limits {
    /// How long a caller waits before getting 202.
    pub deadline: Duration,
    pub lease: Duration,
    pub max_attempts: u32,
    pub in_request_attempts: u32,
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

/// The group-commit writers of the hot path (see `batcher`).
pub struct Writes {
    pub links: batcher::Batcher<String, Option<batch::LinksRow>>,
    pub links_cache: links_cache::LinksCache,
    pub record: batcher::Batcher<batch::NewChange, batch::Recorded>,
    pub settle: batcher::Batcher<batch::Settle, bool>,
}

impl Writes {
    pub fn spawn(
        pool: &PgPool,
        limits: &Limits,
        owner: &str,
        max_batch: usize,
        linger: Duration,
        metrics: &Arc<crate::telemetry::metrics::Metrics>,
        members: &[crate::domain::LinkMember],
    ) -> Self {
        let observe = |statement| batcher::Observe {
            statement,
            metrics: Some(Arc::clone(metrics)),
        };
        let p = pool.clone();
        let members: Arc<[crate::domain::LinkMember]> = members.into();
        let links = batcher::Batcher::spawn_observed(
            observe("links"),
            max_batch,
            linger,
            move |users: Arc<[String]>| {
                let (p, members) = (p.clone(), Arc::clone(&members));
                async move {
                    let found = batch::read_links(&p, &users, &members).await?;
                    Ok(users.iter().map(|u| found.get(u).cloned()).collect())
                }
            },
        );
        let p = pool.clone();
        let (owner, lease, in_flight, retention, max_pending) = (
            owner.to_string(),
            limits.lease,
            limits.deadline + Duration::from_secs(5),
            limits.idempotency_retention,
            limits.max_pending_per_user,
        );
        let record = batcher::Batcher::spawn_observed(
            observe("record"),
            max_batch,
            linger,
            move |items: Arc<[batch::NewChange]>| {
                let (p, owner) = (p.clone(), owner.clone());
                async move {
                    let params = batch::RecordParams {
                        lease_owner: &owner,
                        lease,
                        key_in_flight: in_flight,
                        key_retention: retention,
                        max_pending,
                    };
                    // Two requests with one key in one batch: one statement cannot insert a key twice,
                    // so the later copies are answered as duplicates of the first.
                    let mut seen = std::collections::HashSet::new();
                    let mut unique = Vec::with_capacity(items.len());
                    let mut slot = Vec::with_capacity(items.len());
                    for item in items.iter() {
                        let key = (
                            item.origin.caller.as_str(),
                            item.user_id.as_str(),
                            item.idem_key.as_str(),
                        );
                        if seen.insert(key) {
                            slot.push(Some(unique.len()));
                            unique.push(item);
                        } else {
                            slot.push(None);
                        }
                    }
                    let recorded = batch::record_changes(&p, &unique, &params).await?;
                    Ok(slot
                        .into_iter()
                        .map(|s| match s {
                            Some(i) => recorded[i].clone(),
                            None => batch::Recorded::DuplicateKey,
                        })
                        .collect())
                }
            },
        );
        let p = pool.clone();
        let keep = limits.failed_payload_retention;
        let settle = batcher::Batcher::spawn_observed(
            observe("settle"),
            max_batch,
            linger,
            move |items: Arc<[batch::Settle]>| {
                let p = p.clone();
                async move { batch::settle_changes(&p, &items, keep).await }
            },
        );
        Self {
            links,
            links_cache: links_cache::LinksCache::default(),
            record,
            settle,
        }
    }
}

fn origin(ctx: &AuditContext) -> batch::Origin {
    batch::Origin {
        caller: ctx.caller.clone(),
        request_id: ctx.request_id.clone(),
        trace_id: ctx.trace_id.clone(),
        caller_addr: ctx.caller_addr.clone(),
        actor: ctx.actor.as_ref().map(audit::Actor::to_json),
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

#[derive(Debug, Clone)]
struct StepState {
    planned: PlannedStep,
    status: StepStatus,
    attempts: u32,
    error: Option<StepErrorView>,
    /// Before sending again, read the upstream state: an earlier send may have taken effect.
    read_back_first: bool,
}

/// A recorded change being driven to a final state.
struct Running {
    id: Uuid,
    user: UserId,
    /// The caller that made the change (it owns the webhook), whoever drives it now.
    caller: String,
    seq: i64,
    fence: i64,
    /// The record said every earlier change of the user was final: no need to ask again.
    turn_known: bool,
    fields: Vec<String>,
    created_at: chrono::DateTime<chrono::Utc>,
    patch: ProfilePatch,
    steps: Vec<StepState>,
    ctx: AuditContext,
}

/// Why driving stopped before the change was final.
enum Halt {
    /// Another replica took the change over.
    LostLease,
    /// The database did not take a write; the lease runs out and a completer resumes.
    DbDown,
    /// Retries are due later; the change is parked for the completers.
    Parked,
}

impl ChangeService {
    /// Validates the change against the user's links, records it with its steps, the audit event
    /// and the idempotency key in one transaction, then drives it until done or the deadline.
    /// Runs as its own task: a client hanging up mid-way cancels nothing.
    pub async fn submit(
        self: &Arc<Self>,
        user: UserId,
        patch: ProfilePatch,
        ctx: AuditContext,
        key: IdempotencyKey,
    ) -> Result<Submitted, SubmitError> {
        let service = Arc::clone(self);
        // The task keeps the request's span, so its upstream and database spans join the trace.
        let task = self
            .tracker
            .spawn(tracing::Instrument::in_current_span(async move {
                service.submit_here(user, patch, ctx, key).await
            }));
        task.await
            .unwrap_or_else(|e| Err(SubmitError::Internal(format!("submit task failed: {e}"))))
    }

    async fn submit_here(
        self: &Arc<Self>,
        user: UserId,
        patch: ProfilePatch,
        ctx: AuditContext,
        key: IdempotencyKey,
    ) -> Result<Submitted, SubmitError> {
        let id = Uuid::new_v4();
        let fields: Vec<String> = patch.field_names().iter().map(|s| s.to_string()).collect();
        let sealed = self.seal(id, &patch);
        let audit_values = audit::masked_values(&patch, &self.hasher, None);
        // Links are read (or taken from this replica's cache), the change planned against them,
        // and the record refused if the links changed in between (then read again): planning
        // never holds a lock.
        let mut tries = 0;
        let mut cached = self.writes.links_cache.get(user.as_str());
        let (steps, seq, turn, created_at) = loop {
            tries += 1;
            let (links, from_cache) = match cached.take() {
                Some(links) => (links, true),
                None => (self.read_links(&user).await?, false),
            };
            let steps = match plan(&patch, &links.links, self.providers.specs()) {
                Ok(steps) => steps,
                // A link added through another replica since this one cached them. A guess from
                // the cache does not count as one of the tries.
                Err(_) if from_cache => {
                    self.writes.links_cache.forget(user.as_str());
                    tries -= 1;
                    continue;
                }
                Err(missing) => return Err(SubmitError::MissingLink(missing)),
            };
            let recorded = self
                .writes
                .record
                .submit(batch::NewChange {
                    id,
                    user_id: user.as_str().to_string(),
                    origin: origin(&ctx),
                    fields: fields.clone(),
                    steps: steps.clone(),
                    payload_key_id: self.cipher.key_id().to_string(),
                    payload_enc: sealed.clone(),
                    idem_key: key.key.clone(),
                    fingerprint: key.fingerprint.clone(),
                    links_version: links.version,
                    audit_values: audit_values.clone(),
                    hmac_key_id: self.hasher.key_id().to_string(),
                })
                .await?;
            match recorded {
                batch::Recorded::Accepted {
                    seq,
                    turn,
                    created_at,
                } => break (steps, seq, turn, created_at),
                batch::Recorded::DuplicateKey => return self.existing_key(&user, &ctx, &key).await,
                batch::Recorded::TooManyPending => return Err(SubmitError::TooManyPending),
                batch::Recorded::StaleLinks if from_cache || tries < 3 => {
                    self.writes.links_cache.forget(user.as_str());
                    if from_cache {
                        tries -= 1;
                    }
                    continue;
                }
                batch::Recorded::StaleLinks => {
                    return Err(SubmitError::Unavailable(
                        "the user's links keep changing; retry".into(),
                    ));
                }
            }
        };

        let running = Running {
            id,
            user,
            caller: ctx.caller.clone(),
            seq,
            fence: 1,
            turn_known: turn,
            fields,
            created_at,
            steps: steps
                .into_iter()
                .map(|planned| StepState {
                    planned,
                    status: StepStatus::Pending,
                    attempts: 0,
                    error: None,
                    read_back_first: false,
                })
                .collect(),
            patch,
            ctx,
        };
        let outcome = self.drive_with_deadline(running).await;
        if matches!(outcome, Submitted::InProgress(_))
            && let Err(e) = store::idempotency::answered(&self.pool, id).await
        {
            // The key then stays "in flight" until its bound runs out: duplicates get 409 a little
            // longer, nothing worse.
            tracing::warn!(change_id = %id, error = %e, "could not mark the idempotency key answered");
        }
        Ok(outcome)
    }

    /// The user's links as the database holds them now, or `None` for a user without links. The
    /// cache is neither read nor written (a dry run leaves this replica as it found it).
    async fn fresh_links(&self, user: &UserId) -> Result<Option<batch::LinksRow>, SubmitError> {
        Ok(self.writes.links.submit(user.as_str().to_string()).await?)
    }

    /// The user's links as the database holds them now (remembered in this replica's cache for
    /// the next change).
    async fn read_links(&self, user: &UserId) -> Result<batch::LinksRow, SubmitError> {
        let Some(links) = self.fresh_links(user).await? else {
            self.writes.links_cache.forget(user.as_str());
            return Err(SubmitError::UserNotFound);
        };
        self.writes.links_cache.put(user.as_str(), links.clone());
        Ok(links)
    }

    /// A request whose key is known: the same request replays the change, another is refused.
    async fn existing_key(
        &self,
        user: &UserId,
        ctx: &AuditContext,
        key: &IdempotencyKey,
    ) -> Result<Submitted, SubmitError> {
        // The record found the key taken; not finding it now means its first request's record
        // is not yet visible: still in flight.
        let existing = store::idempotency::find(&self.pool, &ctx.caller, user.as_str(), &key.key)
            .await?
            .ok_or(SubmitError::KeyInFlight)?;
        let change_id = known_key(key, &existing)?;
        let view = store::changes::load(&self.pool, change_id).await?;
        view.map(Submitted::Replay).ok_or(SubmitError::KeyInFlight)
    }

    /// What recording a change with `key` would answer now, read without writing (a dry run):
    /// the change it would replay, or the refusal the record would give ([`known_key`]'s for a
    /// recorded key, else `TooManyPending`), in the record's order: a recorded key is never
    /// refused for the bound.
    async fn would_record(
        &self,
        user: &UserId,
        caller: &str,
        key: Option<&IdempotencyKey>,
    ) -> Result<Option<Uuid>, SubmitError> {
        if let Some(key) = key
            && let Some(existing) =
                store::idempotency::find(&self.pool, caller, user.as_str(), &key.key).await?
        {
            return known_key(key, &existing).map(Some);
        }
        let max = self.limits.max_pending_per_user;
        if batch::would_exceed_pending(&self.pool, user.as_str(), max).await? {
            return Err(SubmitError::TooManyPending);
        }
        Ok(None)
    }

    /// Re-drives a change that failed finally (operator action), as the latest change of its user.
    pub async fn retry(
        self: &Arc<Self>,
        change_id: Uuid,
        ctx: AuditContext,
    ) -> Result<RetryOutcome, sqlx::Error> {
        let user = match store::changes::load(&self.pool, change_id).await? {
            Some(v) => v.user,
            None => return Ok(RetryOutcome::NotFound),
        };
        let mut event = AuditEvent::new(&ctx, &user, "change_retried", "accepted");
        event.change_id = Some(change_id);
        // Its actor is the operator who retried, not the caller who first asked (whose actor the
        // change's earlier events keep); so are the actors of the attempts the retry drives.
        let can_open = |key_id: &str, sealed: &[u8]| {
            self.cipher
                .open(key_id, sealed, change_id.as_bytes())
                .is_ok()
        };
        let reopened = store::changes::reopen(
            &self.pool,
            change_id,
            &self.instance_id,
            self.limits.lease,
            &event,
            can_open,
        )
        .await?;
        let claimed = match reopened {
            store::changes::Reopen::Reopened(c) => *c,
            store::changes::Reopen::NotLatest => return Ok(RetryOutcome::NotLatest),
            store::changes::Reopen::NotRetryable => return Ok(RetryOutcome::NotRetryable),
            store::changes::Reopen::CannotOpen => return Ok(RetryOutcome::CannotOpen),
        };
        match self.resume(claimed, Some(ctx)).await? {
            Some(running) => Ok(RetryOutcome::Driven(
                self.drive_with_deadline(running).await,
            )),
            // Opened a moment ago under the same keys: only a corrupt record gets here. The change
            // stays pending and the completer reports it.
            None => Ok(RetryOutcome::CannotOpen),
        }
    }

    /// Spawns the drive and waits for it up to the deadline.
    async fn drive_with_deadline(self: &Arc<Self>, running: Running) -> Submitted {
        let id = running.id;
        let fallback = view(&running, ChangeStatus::Pending, None);
        let service = Arc::clone(self);
        let answer_by = Some(Instant::now() + self.limits.deadline);
        let task = self
            .tracker
            .spawn(tracing::Instrument::in_current_span(async move {
                service.drive(running, answer_by).await
            }));
        match tokio::time::timeout(self.limits.deadline, task).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) | Err(_) => match store::changes::load(&self.pool, id).await {
                Ok(Some(view)) => Submitted::InProgress(view),
                // Recorded, but unreadable now: what this replica knows of it.
                Ok(None) | Err(_) => Submitted::InProgress(fallback),
            },
        }
    }

    /// Rebuilds a claimed change from its record: opens the sealed payload and loads the steps.
    /// Steps that a previous owner may have sent without recording are read back first.
    async fn resume(
        &self,
        c: store::changes::Claimed,
        ctx: Option<AuditContext>,
    ) -> Result<Option<Running>, sqlx::Error> {
        let (Some(key_id), Some(sealed)) = (&c.payload_key_id, &c.payload_enc) else {
            tracing::error!(change_id = %c.id, "unfinished change has no payload; it cannot be resumed");
            return Ok(None);
        };
        let patch = match self
            .cipher
            .open(key_id, sealed, c.id.as_bytes())
            .map_err(|e| e.to_string())
            .and_then(|p| serde_json::from_slice::<ProfilePatch>(&p).map_err(|e| e.to_string()))
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(change_id = %c.id, error = %e, "cannot open the change payload; configure changes.previous_encryption_keys");
                return Ok(None);
            }
        };
        let taken_over = c.previous_owner.is_some();
        let mut steps_by_change = store::changes::load_steps(&self.pool, &[c.id]).await?;
        let mut steps = Vec::new();
        for v in steps_by_change.remove(&c.id).unwrap_or_default() {
            let fields = match crate::domain::Field::parse_all(&v.fields) {
                Ok(fields) => fields,
                Err(unknown) => {
                    tracing::error!(change_id = %c.id, field = %unknown,
                        "a step of this change sets a field this build does not know; it is not resumed");
                    return Ok(None);
                }
            };
            steps.push(StepState {
                read_back_first: v.status == StepStatus::Unknown
                    || (taken_over && v.status == StepStatus::Pending),
                planned: PlannedStep {
                    step_no: v.step_no,
                    target: v.target,
                    upstream_ref: v.upstream_ref.clone(),
                    fields,
                },
                status: v.status,
                attempts: v.attempts.max(0) as u32,
                error: v.error,
            });
        }
        // A resumed change's events carry who acted in the request or retry whose drive it
        // resumes (store::changes::Claimed): caller, request ids, address and actor alike.
        let ctx = ctx.unwrap_or_else(|| AuditContext {
            caller: c.caller.clone(),
            request_id: c.request_id.clone(),
            trace_id: c.trace_id.clone(),
            caller_addr: c.caller_addr.clone(),
            actor: c.actor.as_ref().and_then(|v| {
                audit::Actor::from_json(v)
                    .map_err(|e| {
                        tracing::warn!(change_id = %c.id, error = %e,
                            "the actor recorded for this change is unreadable; the events of its resumption carry none");
                    })
                    .ok()
            }),
        });
        let Some(user) = UserId::parse(&c.user_id) else {
            return Ok(None);
        };
        Ok(Some(Running {
            id: c.id,
            user,
            caller: c.caller.clone(),
            seq: c.user_seq,
            fence: c.fence,
            turn_known: false,
            fields: c.fields,
            created_at: c.created_at,
            patch,
            steps,
            ctx,
        }))
    }

    fn seal(&self, id: Uuid, patch: &ProfilePatch) -> Vec<u8> {
        let plain = serde_json::to_vec(patch).expect("a parsed patch always serializes");
        self.cipher.seal(&plain, id.as_bytes())
    }

    fn is_final(&self, s: &StepState) -> bool {
        match s.status {
            StepStatus::Applied | StepStatus::Failed => true,
            StepStatus::Unknown => s.attempts >= self.limits.max_attempts,
            StepStatus::Pending => false,
        }
    }

    /// Waits for the user's turn, then runs rounds of attempts until every step is final, the
    /// in-request attempts are spent (then parks), or the lease is lost. `answer_by` is the
    /// caller's deadline; a completer's drive has none and makes one round per claim.
    ///
    /// A round's outcomes are recorded together once all its attempts have answered, and with the
    /// final state when they make the change final: one write per round. A crash before that
    /// write leaves the steps as they were recorded; the completer that takes the change over reads
    /// them back before sending anything again.
    async fn drive(self: Arc<Self>, mut ch: Running, answer_by: Option<Instant>) -> Submitted {
        if let Err(halt) = self.wait_turn(&ch).await {
            return self.halted(&ch, halt).await;
        }
        let mut round = 0u32;
        loop {
            let due: Vec<usize> = (0..ch.steps.len())
                .filter(|i| !self.is_final(&ch.steps[*i]))
                .collect();
            if due.is_empty() {
                return self.settle(ch, Vec::new()).await;
            }
            if round > 0 {
                let within_request = answer_by.is_some_and(|t| Instant::now() < t);
                if round >= self.limits.in_request_attempts || !within_request {
                    let tried = due.iter().map(|i| ch.steps[*i].attempts).max().unwrap_or(1);
                    let after = resilience::backoff(self.resilience.config(), tried);
                    return match store::changes::park(&self.pool, ch.id, ch.fence, after).await {
                        Ok(true) => self.halted(&ch, Halt::Parked).await,
                        Ok(false) => self.halted(&ch, Halt::LostLease).await,
                        Err(_) => self.halted(&ch, Halt::DbDown).await,
                    };
                }
                tokio::time::sleep(resilience::backoff(self.resilience.config(), round)).await;
                if let Err(halt) = self.renew(&ch).await {
                    return self.halted(&ch, halt).await;
                }
            }
            let attempts = due.iter().map(|i| self.attempt(&ch, *i));
            let results = futures_util::future::join_all(attempts).await;
            let mut outcomes = Vec::with_capacity(results.len());
            for (i, (state, outcome)) in due.into_iter().zip(results) {
                ch.steps[i] = state;
                outcomes.push(outcome);
            }
            if ch.steps.iter().all(|s| self.is_final(s)) {
                return self.settle(ch, outcomes).await;
            }
            let settlement = self.settlement(&ch, outcomes, None);
            let wake = !settlement.webhooks.is_empty();
            let recorded = self.writes.settle.submit(settlement).await;
            match recorded {
                Ok(true) if wake => self.webhooks.wake(),
                Ok(true) => {}
                Ok(false) => return self.halted(&ch, Halt::LostLease).await,
                Err(e) => {
                    tracing::warn!(change_id = %ch.id, error = %e, "could not record step outcomes; a completer will resolve them");
                    return self.halted(&ch, Halt::DbDown).await;
                }
            }
            round += 1;
        }
    }

    fn settlement(
        &self,
        ch: &Running,
        outcomes: Vec<batch::StepOutcome>,
        finish: Option<batch::Finish>,
    ) -> batch::Settle {
        batch::Settle {
            change_id: ch.id,
            fence: ch.fence,
            user_id: ch.user.as_str().to_string(),
            origin: origin(&ch.ctx),
            webhooks: self.outbox_events(ch, &outcomes, finish.as_ref()),
            outcomes,
            finish,
        }
    }

    /// The webhook events this settle makes, for a caller with a webhook that wants them: the
    /// change's final outcome, and a step that stays `unknown` with no attempt left. Each body is
    /// the change as `GET /changes/{id}` will show it once the settle commits.
    fn outbox_events(
        &self,
        ch: &Running,
        outcomes: &[batch::StepOutcome],
        finish: Option<&batch::Finish>,
    ) -> Vec<batch::OutboxEvent> {
        use crate::webhooks::EventType;
        let Some(sub) = self.webhooks.get(&ch.caller) else {
            return Vec::new();
        };
        let stays_unknown = outcomes.iter().any(|o| {
            o.status == StepStatus::Unknown
                && ch
                    .steps
                    .iter()
                    .any(|s| s.planned.step_no == o.step_no && self.is_final(s))
        });
        let mut events: Vec<EventType> = Vec::new();
        if stays_unknown {
            events.push(EventType::StepUnknown);
        }
        events.extend(finish.and_then(|f| EventType::of_final(f.status)));
        events.retain(|e| sub.wants(*e));
        if events.is_empty() {
            return Vec::new();
        }
        let status = finish.map_or(ChangeStatus::Pending, |f| f.status);
        let body = view(ch, status, finish.map(|f| f.finished_at)).to_json();
        events
            .into_iter()
            .map(|e| batch::OutboxEvent {
                id: Uuid::new_v4(),
                caller: ch.caller.clone(),
                event_type: e.as_str(),
                body: body.clone(),
            })
            .collect()
    }

    /// Records the last round's outcomes and the final state in one write.
    async fn settle(&self, ch: Running, outcomes: Vec<batch::StepOutcome>) -> Submitted {
        crate::failpoint::hit("before_finish");
        let statuses: Vec<StepStatus> = ch.steps.iter().map(|s| s.status).collect();
        let status = ChangeStatus::from_steps(&statuses);
        // This replica's clock at the settle, in microseconds as Postgres keeps it (so a replay
        // shows the same value), and never before the change was accepted: created_at came from
        // whichever replica recorded it, whose clock may be ahead of this one.
        let finished_at =
            chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6).max(ch.created_at);
        let finish = batch::Finish {
            status,
            fields: ch.fields.clone(),
            finished_at,
        };
        let settlement = self.settlement(&ch, outcomes, Some(finish));
        let wake = !settlement.webhooks.is_empty();
        let finished = self.writes.settle.submit(settlement).await;
        match finished {
            Ok(true) => {
                if wake {
                    crate::failpoint::hit("after_webhook_outbox_commit");
                    self.webhooks.wake();
                }
                let steps: Vec<_> = ch
                    .steps
                    .iter()
                    .map(|s| (s.planned.target, s.status))
                    .collect();
                self.metrics.change_finished(status, &steps);
                Submitted::Final(view(&ch, status, Some(finished_at)))
            }
            Ok(false) => self.halted(&ch, Halt::LostLease).await,
            Err(e) => {
                tracing::warn!(change_id = %ch.id, error = %e, "could not record the final state; a completer will");
                self.halted(&ch, Halt::DbDown).await
            }
        }
    }

    async fn halted(&self, ch: &Running, halt: Halt) -> Submitted {
        match halt {
            Halt::LostLease => {
                tracing::info!(change_id = %ch.id, "another replica took this change over");
            }
            Halt::DbDown => {
                tracing::warn!(change_id = %ch.id, "database unavailable mid-change; it stays pending and a completer resumes it");
            }
            Halt::Parked => {}
        }
        // What is recorded is the truth; when it cannot be read, what this replica saw.
        match store::changes::load(&self.pool, ch.id).await {
            Ok(Some(v)) if v.status != ChangeStatus::Pending => Submitted::Final(v),
            Ok(Some(v)) => Submitted::InProgress(v),
            _ => Submitted::InProgress(view(ch, ChangeStatus::Pending, None)),
        }
    }

    /// Extends this replica's lease on the change, or says why it cannot go on.
    async fn renew(&self, ch: &Running) -> Result<(), Halt> {
        match store::changes::renew_lease(
            &self.pool,
            ch.id,
            ch.fence,
            &self.instance_id,
            self.limits.lease,
        )
        .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(Halt::LostLease),
            Err(_) => Err(Halt::DbDown),
        }
    }

    /// Waits until every earlier change of the user is final, renewing the lease meanwhile.
    async fn wait_turn(&self, ch: &Running) -> Result<(), Halt> {
        if ch.turn_known {
            return Ok(());
        }
        let mut notifications = self.turns.subscribe();
        // A notification wakes the change at once; the poll is only a fallback for a lost one
        // (and keeps the lease), so it can be slow: one statement per waiter per interval.
        let poll = self.limits.turn_poll.min(self.limits.lease / 3);
        loop {
            match store::changes::renew_and_check_turn(
                &self.pool,
                ch.id,
                ch.fence,
                &self.instance_id,
                self.limits.lease,
            )
            .await
            {
                Ok(Some(true)) => return Ok(()),
                Ok(Some(false)) => {}
                Ok(None) => return Err(Halt::LostLease),
                Err(_) => return Err(Halt::DbDown),
            }
            // Only the immediate predecessor's end can make this change's turn come.
            let wait = async {
                loop {
                    match notifications.recv().await {
                        Ok((seq, user)) if seq == ch.seq - 1 && user == ch.user.as_str() => return,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(poll, wait).await;
        }
    }

    /// One attempt of one step (read back first when an earlier send may have taken effect).
    /// Returns the step's new state and the outcome to record.
    async fn attempt(&self, ch: &Running, i: usize) -> (StepState, batch::StepOutcome) {
        let step = &ch.steps[i];
        let target = step.planned.target;
        let attempts = step.attempts + 1;
        let mut confirmed = false;
        let result = match self.request_for(&step.planned, &ch.patch) {
            Ok((adapter, request)) => {
                self.call(adapter.as_ref(), &request, step, &mut confirmed)
                    .await
            }
            Err(e) => Err(e),
        };
        if !confirmed {
            crate::failpoint::hit("after_upstream_write");
        }
        let status = self.next_status(&result, attempts);
        let new_state = StepState {
            planned: step.planned.clone(),
            status,
            attempts,
            error: result.as_ref().err().map(StepErrorView::from),
            read_back_first: status == StepStatus::Unknown,
        };
        let step_fields = crate::domain::field::names(&step.planned.fields);
        let outcome = batch::StepOutcome {
            step_no: step.planned.step_no,
            status,
            error: result.err(),
            confirmed_by_read_back: confirmed,
            target: target.as_str().to_string(),
            upstream_ref: step.planned.upstream_ref.clone(),
            audit_values: audit::masked_values(&ch.patch, &self.hasher, Some(&step.planned.fields)),
            fields: step_fields,
            hmac_key_id: self.hasher.key_id().to_string(),
        };
        (new_state, outcome)
    }

    /// The adapter of a step's target and the request it sends (or reads back), built from the
    /// patch. Neither is missing for a planned step; if one were, that is a step failure, not a
    /// panic inside a fan-out task.
    fn request_for<'a>(
        &self,
        step: &'a PlannedStep,
        patch: &'a ProfilePatch,
    ) -> Result<
        (
            &Arc<dyn crate::providers::ProviderAdapter>,
            crate::domain::StepRequest<'a>,
        ),
        StepError,
    > {
        match self.providers.get(step.target) {
            Some(adapter) => Ok((adapter, crate::domain::StepRequest { step, patch })),
            None => Err(crate::providers::cannot_build(step.target)),
        }
    }

    /// One attempt's upstream work: the retry budget, then the breaker, then (when an earlier send
    /// may have taken effect) a read-back, then the write. The budget is asked first so a breaker
    /// that just went half-open always gets its probe's outcome.
    async fn call(
        &self,
        adapter: &dyn crate::providers::ProviderAdapter,
        request: &crate::domain::StepRequest<'_>,
        step: &StepState,
        confirmed: &mut bool,
    ) -> Result<(), StepError> {
        let target = step.planned.target;
        let not_sent = |mut e: StepError| {
            // Nothing reached the upstream: what was unknown stays unknown (and is read back
            // next time) rather than becoming "not applied".
            e.outcome_unknown = step.read_back_first;
            Err(e)
        };
        if step.attempts == 0 {
            self.resilience.first_attempt(target);
        } else if !self.resilience.try_retry(target) {
            self.metrics
                .retry_budget_denied
                .with_label_values(&[target.as_str()])
                .inc();
            let mut e = resilience::breaker_open(target);
            e.message = format!("{} retry budget exhausted; retrying later", target.as_str());
            return not_sent(e);
        }
        if self.resilience.admit(target) == Admission::FailFast {
            return not_sent(resilience::breaker_open(target));
        }
        if step.attempts > 0 {
            // Counted once it really goes out, not when the breaker stops it.
            self.metrics
                .retries
                .with_label_values(&[target.as_str()])
                .inc();
        }
        let attempt = crate::telemetry::otel::Attempt {
            resend_count: step.attempts,
            propagate: self.propagate_trace_context,
        };
        let started = Instant::now();
        let result = crate::telemetry::otel::with_attempt(
            attempt,
            self.send(adapter, request, step, confirmed),
        )
        .await;
        let outcome = match &result {
            Ok(()) => "applied",
            Err(e) => e.code.as_str(),
        };
        self.metrics
            .upstream_attempt(target, outcome, started.elapsed());
        result
    }

    /// What reaches the upstream in one attempt: a read-back when an earlier send may have taken
    /// effect, then the write unless the read-back confirmed it.
    async fn send(
        &self,
        adapter: &dyn crate::providers::ProviderAdapter,
        request: &crate::domain::StepRequest<'_>,
        step: &StepState,
        confirmed: &mut bool,
    ) -> Result<(), StepError> {
        let target = step.planned.target;
        if step.read_back_first {
            let read = crate::providers::read_back(adapter, request).await;
            self.resilience
                .record(target, &read.as_ref().map(|_| ()).map_err(Clone::clone));
            match read {
                Ok(true) => {
                    *confirmed = true;
                    return Ok(());
                }
                Err(mut e) => {
                    // Still not known whether the earlier send took effect.
                    e.outcome_unknown = true;
                    return Err(e);
                }
                Ok(false) => {}
            }
        }
        let result = adapter.apply(request).await;
        self.resilience.record(target, &result);
        result
    }

    /// The recorded status after an attempt: a failure that may be retried stays open (pending,
    /// or unknown when the write may have happened) until the attempts run out.
    fn next_status(&self, result: &Result<(), StepError>, attempts: u32) -> StepStatus {
        let more = attempts < self.limits.max_attempts;
        match result {
            Ok(()) => StepStatus::Applied,
            Err(e) if e.outcome_unknown && more => StepStatus::Unknown,
            Err(e) if e.retryable && more => StepStatus::Pending,
            Err(e) if e.outcome_unknown => StepStatus::Unknown,
            Err(_) => StepStatus::Failed,
        }
    }
}

/// The rule for a key already recorded: another request under it is refused (`KeyReused`); the
/// same one waits while the key's first request is still being answered (`KeyInFlight`), then
/// replays the key's change.
fn known_key(
    key: &IdempotencyKey,
    existing: &store::idempotency::Existing,
) -> Result<Uuid, SubmitError> {
    if !key.matches(&existing.fingerprint) {
        return Err(SubmitError::KeyReused);
    }
    if existing.in_flight {
        return Err(SubmitError::KeyInFlight);
    }
    Ok(existing.change_id)
}

fn view(
    ch: &Running,
    status: ChangeStatus,
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
) -> ChangeView {
    ChangeView {
        change_id: ch.id,
        user: ch.user.as_str().to_string(),
        seq: ch.seq,
        caller: ch.caller.clone(),
        status,
        fields: ch.fields.clone(),
        created_at: ch.created_at,
        finished_at,
        steps: ch
            .steps
            .iter()
            .map(|s| StepView {
                step_no: s.planned.step_no,
                target: s.planned.target,
                upstream_ref: s.planned.upstream_ref.clone(),
                fields: crate::domain::field::names(&s.planned.fields),
                status: s.status,
                attempts: s.attempts as i32,
                error: s.error.clone(),
            })
            .collect(),
    }
}
