//! Dry runs (`PATCH /profile/{user}?dryRun=All`): the steps a change would send, planned from the
//! user's links by the same planner as a real change and, with `read=live`, compared field by
//! field with each target's current values, read by the adapters' own read (the one the completer
//! reads back with before a resend). Nothing is recorded (no change, step, key, jti or audit row),
//! nothing is written upstream, and neither this replica's links cache nor a provider's circuit
//! breaker is moved.

use super::idempotency::IdempotencyKey;
use super::resilience::{self, Admission};
use super::{ChangeService, SubmitError};
use crate::domain::StepErrorView;
use crate::domain::{PlannedStep, ProfilePatch, Target, UserId, plan};
use crate::providers::{ProviderAdapter, Reading, StepError};
use serde::Serialize;
use std::collections::BTreeMap;

/// What a dry run reads besides the links: nothing, or every target's current values (`read=live`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Read {
    None,
    Live,
}

impl Read {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Live => "live",
        }
    }
}

/// Whether the change would alter a field at its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// The target already holds what the step sets: sending it changes nothing.
    Unchanged,
    Changes,
    /// The read failed, or its answer did not identify the object.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldView {
    pub comparison: Comparison,
    /// The target's value, masked as the audit trail masks values; `null` when unknown or absent.
    pub current: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DryRunStep {
    pub step_no: i32,
    pub target: Target,
    #[serde(rename = "ref")]
    pub upstream_ref: String,
    pub fields: Vec<String>,
    /// With `read=live`: each of `fields` against the target's current state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<BTreeMap<String, FieldView>>,
    /// With `read=live`, when the read failed: why (the step error a real attempt would show).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_error: Option<StepErrorView>,
}

/// The answer to a dry run: what a real PATCH with the same body would send now.
#[derive(Debug, Clone, Serialize)]
pub struct DryRunView {
    /// Always `true`: tells this body from a recorded change's.
    pub dry_run: bool,
    pub user: String,
    pub caller: String,
    pub fields: Vec<String>,
    pub read: Read,
    /// The change recorded under the Idempotency-Key sent with the same request: the real PATCH
    /// would answer it (a replay) and send none of `steps`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replays: Option<uuid::Uuid>,
    pub steps: Vec<DryRunStep>,
}

impl DryRunStep {
    fn planned(step: &PlannedStep) -> Self {
        Self {
            step_no: step.step_no,
            target: step.target,
            upstream_ref: step.upstream_ref.clone(),
            fields: step.fields.iter().map(|f| f.to_string()).collect(),
            values: None,
            read_error: None,
        }
    }

    /// The step with each field compared against what the read showed.
    fn compared(step: &PlannedStep, read: Result<Reading, StepError>) -> Self {
        let unknown = FieldView {
            comparison: Comparison::Unknown,
            current: None,
        };
        let (values, read_error) = match read {
            Ok(reading) => {
                let values = step
                    .fields
                    .iter()
                    .map(|&name| {
                        let seen = reading
                            .fields
                            .iter()
                            .find(|f| f.field == name)
                            .filter(|_| reading.identified);
                        let view = match seen {
                            Some(f) => FieldView {
                                comparison: if f.holds {
                                    Comparison::Unchanged
                                } else {
                                    Comparison::Changes
                                },
                                current: f.current.clone(),
                            },
                            None => unknown.clone(),
                        };
                        (name.to_string(), view)
                    })
                    .collect();
                (values, None)
            }
            Err(e) => (
                step.fields
                    .iter()
                    .map(|f| (f.to_string(), unknown.clone()))
                    .collect(),
                Some(StepErrorView::from(&e)),
            ),
        };
        Self {
            values: Some(values),
            read_error,
            ..Self::planned(step)
        }
    }
}

impl ChangeService {
    /// Plans `patch` for `user` as [`ChangeService::submit`] would, without recording it, and with
    /// `Read::Live` reads every step's target. The same refusals as a real change, in its order:
    /// an unknown user, a missing link, then what its record would answer (a known `key`'s
    /// conflict, too many pending changes), all read without writing.
    pub async fn dry_run(
        &self,
        user: &UserId,
        patch: &ProfilePatch,
        caller: &str,
        key: Option<&IdempotencyKey>,
        read: Read,
    ) -> Result<DryRunView, SubmitError> {
        // Never from the cache, and not into it: a real change catches a stale cached plan when
        // it records it, and a dry run records nothing that would.
        let links = self
            .fresh_links(user)
            .await?
            .ok_or(SubmitError::UserNotFound)?;
        let planned =
            plan(patch, &links.links, self.providers.specs()).map_err(SubmitError::MissingLink)?;
        let replays = self.would_record(user, caller, key).await?;
        let steps: Vec<DryRunStep> = match read {
            Read::None => planned.iter().map(DryRunStep::planned).collect(),
            Read::Live => {
                futures_util::future::join_all(planned.iter().map(|s| self.read_step(s, patch)))
                    .await
            }
        };
        self.metrics
            .dry_runs
            .with_label_values(&[read.as_str()])
            .inc();
        tracing::info!(
            user = user.as_str(),
            caller,
            read = read.as_str(),
            steps = steps.len(),
            "dry run answered; nothing recorded, nothing written upstream"
        );
        Ok(DryRunView {
            dry_run: true,
            user: user.as_str().to_string(),
            caller: caller.to_string(),
            fields: patch.field_names().iter().map(|f| f.to_string()).collect(),
            read,
            replays,
            steps,
        })
    }

    async fn read_step(&self, step: &PlannedStep, patch: &ProfilePatch) -> DryRunStep {
        let read = match self.request_for(step, patch) {
            Ok((adapter, request)) => self.read_target(adapter.as_ref(), &request).await,
            Err(e) => Err(e),
        };
        let outcome = match &read {
            Ok(_) => "read",
            Err(e) => e.code.as_str(),
        };
        self.metrics
            .dry_run_reads
            .with_label_values(&[step.target.as_str(), outcome])
            .inc();
        DryRunStep::compared(step, read)
    }

    /// One read, only while the provider's circuit breaker is closed: dry runs add no load to a
    /// provider that is failing. They never steer the breaker that protects the real writes:
    /// they only peek (never taking an expired Open's half-open probe, which a client hanging
    /// up mid-read would leave stuck) and do not record their outcome (a dry run's success must
    /// not close or reset it, and a burst of dry runs must not open it for the writes).
    async fn read_target(
        &self,
        adapter: &dyn ProviderAdapter,
        request: &crate::domain::StepRequest<'_>,
    ) -> Result<Reading, StepError> {
        let target = adapter.target();
        if self.resilience.peek(target) == Admission::FailFast {
            return Err(resilience::breaker_open(target));
        }
        adapter.read(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Field;
    use crate::providers::FieldReading;

    fn step() -> PlannedStep {
        PlannedStep {
            step_no: 0,
            target: Target::JUSPAY_CUSTOMER,
            upstream_ref: "cst_1".into(),
            fields: vec![Field::MobileNumber, Field::EmailAddress],
        }
    }

    fn comparisons(s: &DryRunStep) -> Vec<(String, Comparison, Option<String>)> {
        s.values
            .as_ref()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.comparison, v.current.clone()))
            .collect()
    }

    #[test]
    fn each_field_is_compared_and_an_unidentified_answer_proves_nothing() {
        let mut reading = Reading {
            identified: true,
            fields: vec![
                FieldReading::new(Field::MobileNumber, Some("9876543210"), true),
                FieldReading::new(Field::EmailAddress, Some("old@example.com"), false),
            ],
        };
        let s = DryRunStep::compared(&step(), Ok(reading.clone()));
        assert_eq!(
            comparisons(&s),
            [
                (
                    "email_address".into(),
                    Comparison::Changes,
                    Some("o***@example.com".into())
                ),
                (
                    "mobile_number".into(),
                    Comparison::Unchanged,
                    Some("******3210".into())
                ),
            ]
        );
        assert!(s.read_error.is_none());
        reading.identified = false;
        let s = DryRunStep::compared(&step(), Ok(reading));
        assert!(
            comparisons(&s)
                .iter()
                .all(|(_, c, v)| *c == Comparison::Unknown && v.is_none())
        );
    }

    #[test]
    fn a_failed_read_makes_every_field_unknown_and_says_why() {
        let s = DryRunStep::compared(
            &step(),
            Err(resilience::breaker_open(Target::JUSPAY_CUSTOMER)),
        );
        assert!(
            comparisons(&s)
                .iter()
                .all(|(_, c, v)| *c == Comparison::Unknown && v.is_none())
        );
        assert_eq!(
            s.read_error.map(|e| e.code),
            Some(crate::providers::StepErrorCode::UpstreamUnavailable)
        );
    }
}
