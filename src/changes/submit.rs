//! A new change: planned against the user's links, recorded with its steps, audit event and
//! idempotency key in one write, then driven in the one task spawned for it. A known key answers
//! from its change instead.

use super::idempotency::IdempotencyKey;
use super::running::{Running, StepState};
use super::{ChangeService, SubmitError, Submitted};
use crate::audit;
use crate::domain::change;
use crate::domain::{Origin, ProfilePatch, UserId, plan};
use crate::store;
use crate::store::batch;
use std::sync::Arc;
use tokio::sync::oneshot;
use uuid::Uuid;

/// What recording a change came to.
enum Recorded {
    /// A new change, to drive.
    Drive(Box<Running>),
    /// An answer without driving (a known key's change).
    Answer(Submitted),
}

impl ChangeService {
    /// Validates the change against the user's links, records it with its steps, the audit event
    /// and the idempotency key in one transaction, then drives it until done or the deadline.
    /// Recording and driving run in one task of their own: a client hanging up mid-way cancels
    /// nothing, and at the deadline the request answers while the task goes on.
    pub async fn submit(
        self: &Arc<Self>,
        user: UserId,
        patch: ProfilePatch,
        origin: Origin,
        key: IdempotencyKey,
    ) -> Result<Submitted, SubmitError> {
        let id = Uuid::new_v4();
        let (reply, answer) = oneshot::channel();
        let service = Arc::clone(self);
        // The task keeps the request's span, so its upstream and database spans join the trace.
        self.tracker
            .spawn(tracing::Instrument::in_current_span(async move {
                match service.record(id, user, patch, origin, key).await {
                    Ok(Recorded::Drive(running)) => {
                        service
                            .drive_answering(*running, true, |answer| {
                                let _ = reply.send(Ok(answer));
                            })
                            .await
                    }
                    Ok(Recorded::Answer(answer)) => {
                        let _ = reply.send(Ok(answer));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }));
        match answer.await {
            Ok(answer) => answer,
            // The task ended without answering (it panicked). A recorded change stays pending and
            // a completer resumes it.
            Err(_) => match store::changes::load(&self.pool, id).await {
                Ok(Some(view)) => Ok(Submitted::InProgress(view)),
                _ => Err(SubmitError::Internal(
                    "the change's task ended without an answer".into(),
                )),
            },
        }
    }

    async fn record(
        &self,
        id: Uuid,
        user: UserId,
        patch: ProfilePatch,
        origin: Origin,
        key: IdempotencyKey,
    ) -> Result<Recorded, SubmitError> {
        let fields: Vec<String> = patch.field_names().iter().map(|s| s.to_string()).collect();
        let sealed = self.seal(id, &patch);
        let audit_values = audit::masked_values(&patch, &self.hasher, None);
        // Links are read (or taken from this replica's cache), the change planned against them,
        // and the record refused if the links changed in between (then read again): planning
        // never holds a lock.
        let mut tries = 0;
        let mut cached = self.writes.links_cache.get(&user);
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
                    self.writes.links_cache.forget(&user);
                    tries -= 1;
                    continue;
                }
                Err(missing) => return Err(SubmitError::MissingLink(missing)),
            };
            let recorded = self
                .writes
                .record
                .submit(change::NewChange {
                    id,
                    user_id: user.clone(),
                    origin: origin.clone(),
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
                batch::Recorded::DuplicateKey => {
                    return self
                        .existing_key(&user, &origin, &key)
                        .await
                        .map(Recorded::Answer);
                }
                batch::Recorded::TooManyPending => return Err(SubmitError::TooManyPending),
                batch::Recorded::StaleLinks if from_cache || tries < 3 => {
                    self.writes.links_cache.forget(&user);
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
        Ok(Recorded::Drive(Box::new(Running {
            id,
            user,
            caller: origin.caller.clone(),
            seq,
            fence: 1,
            turn_known: turn,
            fields,
            created_at,
            steps: steps.into_iter().map(StepState::new).collect(),
            patch,
            origin,
        })))
    }

    /// The user's links as the database holds them now, or `None` for a user without links. The
    /// cache is neither read nor written (a dry run leaves this replica as it found it).
    pub(super) async fn fresh_links(
        &self,
        user: &UserId,
    ) -> Result<Option<batch::LinksRow>, SubmitError> {
        Ok(self.writes.links.submit(user.as_str().to_string()).await?)
    }

    /// The user's links as the database holds them now (remembered in this replica's cache for
    /// the next change).
    async fn read_links(&self, user: &UserId) -> Result<batch::LinksRow, SubmitError> {
        let Some(links) = self.fresh_links(user).await? else {
            self.writes.links_cache.forget(user);
            return Err(SubmitError::UserNotFound);
        };
        self.writes.links_cache.put(user, links.clone());
        Ok(links)
    }

    /// A request whose key is known: the same request replays the change, another is refused.
    async fn existing_key(
        &self,
        user: &UserId,
        origin: &Origin,
        key: &IdempotencyKey,
    ) -> Result<Submitted, SubmitError> {
        // The record found the key taken; not finding it now means its first request's record
        // is not yet visible: still in flight.
        let existing = store::idempotency::find(&self.pool, &origin.caller, user, &key.key)
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
    pub(super) async fn would_record(
        &self,
        user: &UserId,
        caller: &str,
        key: Option<&IdempotencyKey>,
    ) -> Result<Option<Uuid>, SubmitError> {
        if let Some(key) = key
            && let Some(existing) =
                store::idempotency::find(&self.pool, caller, user, &key.key).await?
        {
            return known_key(key, &existing).map(Some);
        }
        let max = self.limits.max_pending_per_user;
        if batch::would_exceed_pending(&self.pool, user, max).await? {
            return Err(SubmitError::TooManyPending);
        }
        Ok(None)
    }

    fn seal(&self, id: Uuid, patch: &ProfilePatch) -> Vec<u8> {
        let plain = serde_json::to_vec(patch).expect("a parsed patch always serializes");
        self.cipher.seal(&plain, id.as_bytes())
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
