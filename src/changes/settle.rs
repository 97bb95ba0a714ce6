//! Recording what a round of attempts came to: the steps' outcomes, the webhook events they make
//! and, when the change is final, its final state, all in one settle write.

use super::running::{Halt, Running};
use super::{ChangeService, Submitted};
use crate::domain::change;
use crate::domain::{ChangeStatus, StepStatus};
use crate::store::batch::Settled;
use uuid::Uuid;

impl ChangeService {
    /// Records a round that left the change unfinished.
    pub(super) async fn record_round(
        &self,
        ch: &Running,
        outcomes: Vec<change::StepOutcome>,
    ) -> Result<(), Halt> {
        let settlement = self.settlement(ch, outcomes, None);
        let wake = !settlement.webhooks.is_empty();
        match self.writes.settle.submit(settlement).await {
            Ok(Settled::Written) => {
                if wake {
                    self.webhooks.wake();
                }
                Ok(())
            }
            Ok(Settled::Stale) => Err(Halt::LostLease),
            Ok(Settled::NotWritten) => {
                tracing::warn!(change_id = %ch.id, "step outcomes not recorded this time; a completer will resolve them");
                Err(Halt::DbDown)
            }
            Err(e) => {
                tracing::warn!(change_id = %ch.id, error = %e, "could not record step outcomes; a completer will resolve them");
                Err(Halt::DbDown)
            }
        }
    }

    pub(super) fn settlement(
        &self,
        ch: &Running,
        outcomes: Vec<change::StepOutcome>,
        finish: Option<change::Finish>,
    ) -> change::Settle {
        change::Settle {
            change_id: ch.id,
            fence: ch.fence,
            user_id: ch.user.clone(),
            origin: ch.origin.clone(),
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
        outcomes: &[change::StepOutcome],
        finish: Option<&change::Finish>,
    ) -> Vec<change::OutboxEvent> {
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
        let body = ch.view(status, finish.map(|f| f.finished_at)).to_json();
        events
            .into_iter()
            .map(|e| change::OutboxEvent {
                id: Uuid::new_v4(),
                caller: ch.caller.clone(),
                event_type: e.as_str(),
                body: body.clone(),
            })
            .collect()
    }

    /// Records the last round's outcomes and the final state in one write.
    pub(super) async fn settle(
        &self,
        ch: Running,
        outcomes: Vec<change::StepOutcome>,
    ) -> Submitted {
        crate::failpoint::hit("before_finish");
        let statuses: Vec<StepStatus> = ch.steps.iter().map(|s| s.status).collect();
        let status = ChangeStatus::from_steps(&statuses);
        // This replica's clock at the settle, in microseconds as Postgres keeps it (so a replay
        // shows the same value), and never before the change was accepted: created_at came from
        // whichever replica recorded it, whose clock may be ahead of this one.
        let finished_at =
            chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6).max(ch.created_at);
        let finish = change::Finish {
            status,
            fields: ch.fields.clone(),
            finished_at,
        };
        let settlement = self.settlement(&ch, outcomes, Some(finish));
        let wake = !settlement.webhooks.is_empty();
        let finished = self.writes.settle.submit(settlement).await;
        match finished {
            Ok(Settled::Written) => {
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
                Submitted::Final(ch.view(status, Some(finished_at)))
            }
            Ok(Settled::Stale) => self.halted(&ch, Halt::LostLease).await,
            Ok(Settled::NotWritten) => {
                tracing::warn!(change_id = %ch.id, "the final state was not recorded this time; a completer will");
                self.halted(&ch, Halt::DbDown).await
            }
            Err(e) => {
                tracing::warn!(change_id = %ch.id, error = %e, "could not record the final state; a completer will");
                self.halted(&ch, Halt::DbDown).await
            }
        }
    }
}
