//! Picking a recorded change up again: a completer's claim of a change whose lease ran out, and an
//! operator's retry of a change that failed finally. Both rebuild the change from its record.

use super::policy;
use super::running::{Running, StepState};
use super::{ChangeService, RetryOutcome, Submitted};
use crate::audit::AuditEvent;
use crate::domain::ChangeStatus;
use crate::domain::{Origin, PlannedStep, ProfilePatch, UserId};
use crate::store;
use std::sync::Arc;
use tokio::sync::oneshot;
use uuid::Uuid;

impl ChangeService {
    /// Re-drives a change that failed finally (operator action), as the latest change of its user.
    pub async fn retry(
        self: &Arc<Self>,
        change_id: Uuid,
        origin: Origin,
    ) -> Result<RetryOutcome, sqlx::Error> {
        let user = match store::changes::load(&self.pool, change_id).await? {
            Some(v) => v.user,
            None => return Ok(RetryOutcome::NotFound),
        };
        let mut event = AuditEvent::new(&origin, &user, "change_retried", "accepted");
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
        match self.resume(claimed, Some(origin)).await? {
            Some(running) => Ok(RetryOutcome::Driven(self.drive_resumed(running).await)),
            // Opened a moment ago under the same keys: only a corrupt record gets here. The change
            // stays pending and the completer reports it.
            None => Ok(RetryOutcome::CannotOpen),
        }
    }

    /// Drives a resumed change in a task of its own and waits for its answer by the deadline.
    async fn drive_resumed(self: &Arc<Self>, running: Running) -> Submitted {
        let id = running.id;
        let fallback = running.view(ChangeStatus::Pending, None);
        let (reply, answer) = oneshot::channel();
        let service = Arc::clone(self);
        self.tracker
            .spawn(tracing::Instrument::in_current_span(async move {
                service
                    .drive_answering(running, false, |answer| {
                        let _ = reply.send(answer);
                    })
                    .await
            }));
        match answer.await {
            Ok(answer) => answer,
            // The task ended without answering (it panicked): the change as recorded.
            Err(_) => match store::changes::load(&self.pool, id).await {
                Ok(Some(view)) => Submitted::InProgress(view),
                Ok(None) | Err(_) => Submitted::InProgress(fallback),
            },
        }
    }

    /// Rebuilds a claimed change from its record: opens the sealed payload and loads the steps.
    /// Steps that a previous owner may have sent without recording are read back first.
    pub(super) async fn resume(
        &self,
        c: store::changes::Claimed,
        origin: Option<Origin>,
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
                read_back_first: policy::read_back_first(v.status, taken_over),
                planned: PlannedStep {
                    step_no: v.step_no,
                    target: v.target,
                    upstream_ref: v.upstream_ref.clone(),
                    fields,
                },
                status: v.status,
                attempts: v.attempts.max(0) as u32,
                error: v.error,
                retry_after: None,
            });
        }
        // A resumed change's events carry who acted in the request or retry whose drive it
        // resumes (store::changes::Claimed): caller, request ids, address and actor alike.
        let caller = c.origin.caller.clone();
        let origin = origin.unwrap_or(c.origin);
        let Some(user) = UserId::parse(&c.user_id) else {
            return Ok(None);
        };
        Ok(Some(Running {
            id: c.id,
            user,
            caller,
            seq: c.user_seq,
            fence: c.fence,
            turn_known: false,
            fields: c.fields,
            created_at: c.created_at,
            patch,
            steps,
            origin,
        }))
    }
}
