//! A change and its steps: their statuses (stored as text; an unknown value in a row is a decode
//! error, never a default), the change as it is read back (what `GET /changes/{id}` and webhook
//! bodies show), and the records the change service hands the store to write.

use crate::domain::{Origin, PlannedStep, Target, UserId};
use crate::domain::{StepError, StepErrorCode};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// A status value read from the database or elsewhere that names no status.
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} status {value:?}")]
pub struct UnknownStatus {
    kind: &'static str,
    value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum ChangeStatus {
    Pending,
    Applied,
    PartiallyApplied,
    Failed,
}

impl ChangeStatus {
    pub const ALL: [Self; 4] = [
        Self::Pending,
        Self::Applied,
        Self::PartiallyApplied,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Applied => "applied",
            Self::PartiallyApplied => "partially_applied",
            Self::Failed => "failed",
        }
    }

    /// The final status of a change whose steps all ended as given.
    pub fn from_steps(steps: &[StepStatus]) -> Self {
        let applied = steps.iter().filter(|s| **s == StepStatus::Applied).count();
        if steps.contains(&StepStatus::Pending) {
            Self::Pending
        } else if applied == steps.len() {
            Self::Applied
        } else if applied > 0 {
            Self::PartiallyApplied
        } else {
            Self::Failed
        }
    }
}

impl std::str::FromStr for ChangeStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, UnknownStatus> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownStatus {
                kind: "change",
                value: s.to_string(),
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Applied,
    Failed,
    /// The upstream may or may not have applied it (timeout after sending).
    Unknown,
}

impl StepStatus {
    pub const ALL: [Self; 4] = [Self::Pending, Self::Applied, Self::Failed, Self::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Applied => "applied",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }
}

impl std::str::FromStr for StepStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, UnknownStatus> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownStatus {
                kind: "step",
                value: s.to_string(),
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepErrorView {
    pub code: StepErrorCode,
    pub retryable: bool,
    pub upstream_status: Option<u16>,
    pub upstream_code: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    pub step_no: i32,
    pub target: Target,
    #[serde(rename = "ref")]
    pub upstream_ref: String,
    pub fields: Vec<String>,
    pub status: StepStatus,
    pub attempts: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<StepErrorView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChangeView {
    pub change_id: Uuid,
    pub user: UserId,
    /// Position of this change in the user's history (gap-free, in acceptance order).
    pub seq: i64,
    pub caller: String,
    pub status: ChangeStatus,
    pub fields: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub steps: Vec<StepView>,
}

impl ChangeView {
    /// The change as `GET /changes/{id}` answers it, byte for byte; webhook bodies are this too.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a change view always serializes")
    }

    pub fn location(&self) -> String {
        format!("/changes/{}", self.change_id)
    }
}

#[derive(Debug, Clone)]
pub struct NewChange {
    pub id: Uuid,
    pub user_id: UserId,
    pub origin: Origin,
    pub fields: Vec<String>,
    pub steps: Vec<PlannedStep>,
    pub payload_key_id: String,
    pub payload_enc: Vec<u8>,
    pub idem_key: String,
    pub fingerprint: Vec<u8>,
    pub links_version: DateTime<Utc>,
    pub audit_values: Value,
    pub hmac_key_id: String,
}

/// One step attempt's outcome, as a settle records it. Its audit record names the step and the
/// attempt, not the values: those are the change's, in its `change_requested` event.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    pub step_no: i32,
    /// Which attempt of the step this is (1 for the first).
    pub attempt: u32,
    pub status: StepStatus,
    pub error: Option<StepError>,
    pub confirmed_by_read_back: bool,
    pub target: String,
    pub upstream_ref: String,
    pub fields: Vec<String>,
}

/// What one change's round of attempts came to: the outcomes of the steps it attempted and, when
/// every step is final, the change's final state.
#[derive(Debug, Clone)]
pub struct Settle {
    pub change_id: Uuid,
    pub fence: i64,
    pub user_id: UserId,
    pub origin: Origin,
    pub outcomes: Vec<StepOutcome>,
    pub finish: Option<Finish>,
    /// Outcome webhook events, written only if this settle is (same statement, same commit).
    pub webhooks: Vec<OutboxEvent>,
}

#[derive(Debug, Clone)]
pub struct Finish {
    pub status: ChangeStatus,
    pub fields: Vec<String>,
    /// Recorded as the change's `finished_at`, so the answer, `GET /changes/{id}` and the
    /// webhook body all show the same time.
    pub finished_at: DateTime<Utc>,
}

/// One webhook event for the outbox (`webhooks`): its body is the change as `GET /changes/{id}`
/// shows it once this settle commits.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub id: Uuid,
    /// The change's caller (the webhook's owner), not an operator who retried it.
    pub caller: String,
    pub event_type: &'static str,
    pub body: String,
}

/// A failed attempt as callers see it: the public fields of the step error.
impl From<&StepError> for StepErrorView {
    fn from(e: &StepError) -> Self {
        Self {
            code: e.code,
            retryable: e.retryable,
            upstream_status: e.upstream_status,
            upstream_code: e.upstream_code.clone(),
            message: e.message.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_back_what_they_write_and_refuse_anything_else() {
        for s in ChangeStatus::ALL {
            assert_eq!(s.as_str().parse::<ChangeStatus>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in StepStatus::ALL {
            assert_eq!(s.as_str().parse::<StepStatus>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!("bogus".parse::<ChangeStatus>().is_err());
        assert!("".parse::<StepStatus>().is_err());
        assert!("Pending".parse::<StepStatus>().is_err());
    }

    #[test]
    fn a_change_is_final_once_no_step_is_pending() {
        use StepStatus as S;
        assert_eq!(
            ChangeStatus::from_steps(&[S::Applied, S::Pending]),
            ChangeStatus::Pending
        );
        assert_eq!(
            ChangeStatus::from_steps(&[S::Applied, S::Applied]),
            ChangeStatus::Applied
        );
        assert_eq!(
            ChangeStatus::from_steps(&[S::Applied, S::Unknown]),
            ChangeStatus::PartiallyApplied
        );
        assert_eq!(
            ChangeStatus::from_steps(&[S::Failed, S::Unknown]),
            ChangeStatus::Failed
        );
    }
}
