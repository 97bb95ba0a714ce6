//! One attempt of one step: the retry budget, the breaker, a read-back when an earlier send may
//! have taken effect, then the write; and the outcome the settle records.

use super::ChangeService;
use super::policy;
use super::resilience::{self, Admission};
use super::running::{Running, StepState};
use crate::domain::StepErrorView;
use crate::domain::change;
use crate::domain::{PlannedStep, ProfilePatch};
use crate::providers::StepError;
use std::sync::Arc;
use std::time::Instant;

impl ChangeService {
    /// One attempt of one step (read back first when an earlier send may have taken effect).
    /// Returns the step's new state and the outcome to record.
    pub(super) async fn attempt(&self, ch: &Running, i: usize) -> (StepState, change::StepOutcome) {
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
        let max = self.attempt_limits(target).max_attempts;
        let status = policy::next_status(&result, attempts, max);
        let new_state = StepState {
            planned: step.planned.clone(),
            status,
            attempts,
            error: result.as_ref().err().map(StepErrorView::from),
            retry_after: result.as_ref().err().and_then(|e| e.retry_after),
            read_back_first: policy::read_back_first(status, false),
        };
        let step_fields = crate::domain::field::names(&step.planned.fields);
        let outcome = change::StepOutcome {
            step_no: step.planned.step_no,
            attempt: attempts,
            status,
            error: result.err(),
            confirmed_by_read_back: confirmed,
            target: target.as_str().to_string(),
            upstream_ref: step.planned.upstream_ref.clone(),
            fields: step_fields,
        };
        (new_state, outcome)
    }

    /// The adapter of a step's target and the request it sends (or reads back), built from the
    /// patch. Neither is missing for a planned step; if one were, that is a step failure, not a
    /// panic inside a fan-out task.
    pub(super) fn request_for<'a>(
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
}
