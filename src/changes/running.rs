//! A recorded change while a replica drives it: its steps' states, and the view answered from them
//! when the answer does not come from the record.

use crate::domain::{ChangeStatus, ChangeView, StepErrorView, StepStatus, StepView};
use crate::domain::{Origin, PlannedStep, ProfilePatch, UserId};
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub(super) struct StepState {
    pub(super) planned: PlannedStep,
    pub(super) status: StepStatus,
    pub(super) attempts: u32,
    pub(super) error: Option<StepErrorView>,
    /// How long the upstream asked to wait before the next attempt (a 429's `Retry-After`). Only
    /// this drive knows it: a parked change was parked at least that long.
    pub(super) retry_after: Option<Duration>,
    /// Before sending again, read the upstream state: an earlier send may have taken effect.
    pub(super) read_back_first: bool,
}

impl StepState {
    pub(super) fn new(planned: PlannedStep) -> Self {
        Self {
            planned,
            status: StepStatus::Pending,
            attempts: 0,
            error: None,
            retry_after: None,
            read_back_first: false,
        }
    }
}

/// A recorded change being driven to a final state.
pub(super) struct Running {
    pub(super) id: Uuid,
    pub(super) user: UserId,
    /// The caller that made the change (it owns the webhook), whoever drives it now.
    pub(super) caller: String,
    pub(super) seq: i64,
    pub(super) fence: i64,
    /// The record said every earlier change of the user was final: no need to ask again.
    pub(super) turn_known: bool,
    pub(super) fields: Vec<String>,
    pub(super) created_at: chrono::DateTime<chrono::Utc>,
    pub(super) patch: ProfilePatch,
    pub(super) steps: Vec<StepState>,
    pub(super) origin: Origin,
}

/// Why driving stopped before the change was final.
pub(super) enum Halt {
    /// Another replica took the change over.
    LostLease,
    /// The database did not take a write; the lease runs out and a completer resumes.
    DbDown,
    /// Retries are due later; the change is parked for the completers.
    Parked,
}

impl Running {
    /// The change as this replica knows it, in the shape the record is read back in.
    pub(super) fn view(
        &self,
        status: ChangeStatus,
        finished_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> ChangeView {
        ChangeView {
            change_id: self.id,
            user: self.user.clone(),
            seq: self.seq,
            caller: self.caller.clone(),
            status,
            fields: self.fields.clone(),
            created_at: self.created_at,
            finished_at,
            steps: self
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
}
