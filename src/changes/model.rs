//! A change and its steps as callers see them (responses) and as the store returns them.

use crate::domain::Target;
use crate::providers::{StepError, StepErrorCode};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeStatus {
    Pending,
    Applied,
    PartiallyApplied,
    Failed,
}

impl ChangeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Applied => "applied",
            Self::PartiallyApplied => "partially_applied",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "applied" => Self::Applied,
            "partially_applied" => Self::PartiallyApplied,
            "failed" => Self::Failed,
            _ => Self::Pending,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Applied,
    Failed,
    /// The upstream may or may not have applied it (timeout after sending).
    Unknown,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Applied => "applied",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "applied" => Self::Applied,
            "failed" => Self::Failed,
            "unknown" => Self::Unknown,
            _ => Self::Pending,
        }
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
    pub user: String,
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
