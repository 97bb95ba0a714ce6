//! The change lifecycle: record the change before any upstream call, fan out, record each outcome
//! as it arrives, finish. Driving runs in its own task so a client that hangs up does not stop a
//! recorded change.

pub mod model;

use crate::audit::{self, AuditContext, AuditEvent};
use crate::crypto::{PayloadCipher, PiiHasher};
use crate::domain::{FieldError, PlannedStep, ProfilePatch, UserId, plan};
use crate::providers::{Providers, StepError, StepResult};
use crate::store;
use model::{ChangeStatus, ChangeView, StepErrorView, StepStatus, StepView};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub struct ChangeService {
    pub pool: PgPool,
    pub providers: Providers,
    pub cipher: PayloadCipher,
    pub hasher: PiiHasher,
    /// Names this replica in leases.
    pub instance_id: String,
    pub deadline: Duration,
    pub lease: Duration,
    pub tracker: TaskTracker,
}

#[derive(Debug)]
pub enum SubmitError {
    UserNotFound,
    MissingLink(Vec<FieldError>),
    Db(sqlx::Error),
}

impl From<sqlx::Error> for SubmitError {
    fn from(e: sqlx::Error) -> Self {
        SubmitError::Db(e)
    }
}

/// How a submitted change stands when the request has to answer.
pub enum Submitted {
    /// Every step reached a final state and every outcome is recorded.
    Final(ChangeView),
    /// Steps are still running (deadline) or an outcome could not be recorded yet: the change goes
    /// on in the background and `GET /changes/{id}` tells the rest.
    InProgress(ChangeView),
}

/// A recorded change being driven to a final state.
struct Running {
    id: Uuid,
    user: UserId,
    seq: i64,
    fence: i64,
    fields: Vec<String>,
    created_at: chrono::DateTime<chrono::Utc>,
    patch: ProfilePatch,
    steps: Vec<PlannedStep>,
    ctx: AuditContext,
}

impl ChangeService {
    /// Validates the change against the user's links, records it with its steps and the
    /// "requested" audit event in one transaction, then drives it until done or the deadline.
    pub async fn submit(
        self: &Arc<Self>,
        user: UserId,
        patch: ProfilePatch,
        ctx: AuditContext,
    ) -> Result<Submitted, SubmitError> {
        let id = Uuid::new_v4();
        let fields: Vec<String> = patch.field_names().iter().map(|s| s.to_string()).collect();
        let mut tx = self.pool.begin().await?;
        let Some(locked) = store::changes::lock_user(&mut tx, &user).await? else {
            return Err(SubmitError::UserNotFound);
        };
        let steps = plan(&patch, &locked.links).map_err(SubmitError::MissingLink)?;
        let sealed = self.seal(id, &patch);
        let mut event = AuditEvent::new(&ctx, user.as_str(), "change_requested", "accepted");
        event.change_id = Some(id);
        event.fields = fields.clone();
        event.values = audit::masked_values(&patch, &self.hasher, None);
        event.hmac_key_id = Some(self.hasher.key_id());
        store::changes::insert(
            &mut tx,
            &store::changes::NewChange {
                id,
                user: &user,
                seq: locked.seq,
                fields: fields.clone(),
                steps: &steps,
                payload_key_id: self.cipher.key_id(),
                payload_enc: sealed,
                lease_owner: &self.instance_id,
                lease_secs: self.lease.as_secs_f64(),
            },
            &event,
        )
        .await?;
        tx.commit().await?;

        let running = Running {
            id,
            user,
            seq: locked.seq,
            fence: 1,
            fields,
            created_at: chrono::Utc::now(),
            patch,
            steps,
            ctx,
        };
        let service = Arc::clone(self);
        let task = self
            .tracker
            .spawn(async move { service.drive(running).await });
        match tokio::time::timeout(self.deadline, task).await {
            Ok(Ok(outcome)) => Ok(outcome),
            // The deadline passed (or the task died): answer with what is recorded so far.
            Ok(Err(_)) | Err(_) => match store::changes::load(&self.pool, id).await {
                Ok(Some(view)) => Ok(Submitted::InProgress(view)),
                Ok(None) | Err(_) => Ok(Submitted::InProgress(pending_view(id))),
            },
        }
    }

    fn seal(&self, id: Uuid, patch: &ProfilePatch) -> Vec<u8> {
        let plain = serde_json::to_vec(patch).expect("a parsed patch always serializes");
        self.cipher.seal(&plain, id.as_bytes())
    }

    /// Runs every step once, concurrently, recording each outcome as it arrives; then finishes the
    /// change. Returns the change as recorded (or as observed, when recording failed).
    async fn drive(self: Arc<Self>, change: Running) -> Submitted {
        let attempts = change.steps.iter().map(|step| self.attempt(&change, step));
        let results = futures_util::future::join_all(attempts).await;
        let mut all_recorded = true;
        let mut views = Vec::with_capacity(results.len());
        for (step, (result, recorded)) in change.steps.iter().zip(results) {
            all_recorded &= recorded;
            views.push(StepView {
                step_no: step.step_no,
                target: step.target,
                upstream_ref: step.upstream_ref.clone(),
                fields: step.fields.iter().map(|f| f.to_string()).collect(),
                status: StepStatus::of(&result),
                attempts: 1,
                error: result.as_ref().err().map(StepErrorView::from),
            });
        }
        let statuses: Vec<StepStatus> = views.iter().map(|v| v.status).collect();
        let status = ChangeStatus::from_steps(&statuses);
        let mut finished = false;
        if all_recorded {
            let mut event = AuditEvent::new(
                &change.ctx,
                change.user.as_str(),
                "change_completed",
                status.as_str(),
            );
            event.change_id = Some(change.id);
            event.fields = change.fields.clone();
            finished = store::changes::finish(&self.pool, change.id, change.fence, status, &event)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(change_id = %change.id, error = %e, "could not record the final state; the completer will");
                    false
                });
        }
        let view = ChangeView {
            change_id: change.id,
            user: change.user.as_str().to_string(),
            seq: change.seq,
            caller: change.ctx.caller.clone(),
            status: if finished {
                status
            } else {
                ChangeStatus::Pending
            },
            fields: change.fields.clone(),
            created_at: change.created_at,
            finished_at: finished.then(chrono::Utc::now),
            steps: views,
        };
        if finished {
            Submitted::Final(view)
        } else {
            Submitted::InProgress(view)
        }
    }

    /// One attempt of one step, and its record. Returns the result and whether it was recorded.
    async fn attempt(&self, change: &Running, step: &PlannedStep) -> (StepResult, bool) {
        let result = match (self.providers.get(step.target), step.request(&change.patch)) {
            (Some(adapter), Some(request)) => adapter.apply(&request).await,
            _ => Err(crate::providers::misrouted(step.target)),
        };
        let step_fields: Vec<String> = step.fields.iter().map(|f| f.to_string()).collect();
        let status = StepStatus::of(&result);
        let mut event = AuditEvent::new(
            &change.ctx,
            change.user.as_str(),
            "step_attempted",
            status.as_str(),
        );
        event.change_id = Some(change.id);
        event.step_no = Some(step.step_no);
        event.target = Some(step.target.as_str());
        event.upstream_ref = Some(&step.upstream_ref);
        event.values = audit::masked_values(&change.patch, &self.hasher, Some(&step_fields));
        event.hmac_key_id = Some(self.hasher.key_id());
        event.fields = step_fields.clone();
        event.error_code = result.as_ref().err().map(|e: &StepError| e.code.as_str());
        let recorded = match store::changes::record_attempt(
            &self.pool,
            change.id,
            change.fence,
            step.step_no,
            &result,
            &event,
        )
        .await
        {
            Ok(recorded) => recorded,
            Err(e) => {
                tracing::warn!(change_id = %change.id, step_no = step.step_no, error = %e, "could not record a step outcome; the completer will resolve it");
                false
            }
        };
        (result, recorded)
    }
}

fn pending_view(id: Uuid) -> ChangeView {
    ChangeView {
        change_id: id,
        user: String::new(),
        seq: 0,
        caller: String::new(),
        status: ChangeStatus::Pending,
        fields: Vec::new(),
        created_at: chrono::Utc::now(),
        finished_at: None,
        steps: Vec::new(),
    }
}
