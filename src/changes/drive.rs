//! Driving a recorded change: wait for the user's turn, then rounds of attempts until every step
//! is final, the rounds this drive may make are spent (then the change is parked), or the lease is
//! lost. The request that recorded (or retried) a change is answered from here by its deadline.

use super::policy::{self, Round};
use super::resilience;
use super::running::{Halt, Running};
use super::{ChangeService, Submitted};
use crate::domain::ChangeStatus;
use crate::store;
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

impl ChangeService {
    /// Drives the change in the calling task and answers by the deadline: with the final state
    /// if it comes in time, else with the change as recorded (202) while the drive goes on. With
    /// `mark_answered`, a 202 marks the change's idempotency key answered, so a duplicate replays
    /// instead of waiting.
    pub(super) async fn drive_answering(
        self: &Arc<Self>,
        running: Running,
        mark_answered: bool,
        reply: impl FnOnce(Submitted),
    ) {
        let id = running.id;
        let fallback = running.view(ChangeStatus::Pending, None);
        let answer_by = Instant::now() + self.limits.deadline;
        // A panic inside the drive must still answer (202: the change is recorded and a completer
        // resumes it once the lease runs out) and mark the key answered, as a deadline does.
        let drive =
            AssertUnwindSafe(Arc::clone(self).drive(running, Some(answer_by))).catch_unwind();
        tokio::pin!(drive);
        let in_progress = |reply| async move {
            let view = match store::changes::load(&self.pool, id).await {
                Ok(Some(view)) => view,
                // Recorded, but unreadable now: what this replica knows of it.
                Ok(None) | Err(_) => fallback,
            };
            self.answer(Submitted::InProgress(view), mark_answered, reply)
                .await
        };
        let panicked = || {
            tracing::error!(change_id = %id, "the change's drive panicked; a completer resumes it");
        };
        match tokio::time::timeout_at(answer_by.into(), &mut drive).await {
            Ok(Ok(outcome)) => self.answer(outcome, mark_answered, reply).await,
            Ok(Err(_)) => {
                panicked();
                in_progress(reply).await;
            }
            Err(_) => {
                // The drive is not paused while the answer is read.
                let driving = async {
                    if drive.await.is_err() {
                        panicked();
                    }
                };
                tokio::join!(in_progress(reply), driving);
            }
        }
    }

    async fn answer(&self, outcome: Submitted, mark_answered: bool, reply: impl FnOnce(Submitted)) {
        if let (true, Submitted::InProgress(view)) = (mark_answered, &outcome)
            && let Err(e) = store::idempotency::answered(&self.pool, view.change_id).await
        {
            // The key then stays "in flight" until its bound runs out: duplicates get 409 a little
            // longer, nothing worse.
            tracing::warn!(change_id = %view.change_id, error = %e, "could not mark the idempotency key answered");
        }
        reply(outcome);
    }

    /// Waits for the user's turn, then runs rounds of attempts as [`policy::next_round`] says.
    /// `answer_by` is the caller's deadline; a completer's drive has none and makes one round per
    /// claim.
    ///
    /// A round's outcomes are recorded together once all its attempts have answered, and with the
    /// final state when they make the change final: one write per round. A crash before that
    /// write leaves the steps as they were recorded; the completer that takes the change over reads
    /// them back before sending anything again.
    pub(super) async fn drive(
        self: Arc<Self>,
        mut ch: Running,
        answer_by: Option<Instant>,
    ) -> Submitted {
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
            let state = self.round_state(&ch, &due, round, answer_by);
            // The backoff follows the traffic policy of the most tried due step's provider.
            let most_tried = due
                .iter()
                .map(|i| &ch.steps[*i])
                .max_by_key(|s| s.attempts)
                .map_or(&ch.steps[due[0]], |s| s);
            let traffic = self.resilience.policy(most_tried.planned.target);
            let backoff = |n| resilience::backoff(traffic, n);
            match policy::next_round(&state, backoff) {
                Round::Now => {}
                Round::After(pause) => {
                    tokio::time::sleep(pause).await;
                    if let Err(halt) = self.renew(&ch).await {
                        return self.halted(&ch, halt).await;
                    }
                }
                Round::Park(after) => {
                    return match store::changes::park(&self.pool, ch.id, ch.fence, after).await {
                        Ok(true) => self.halted(&ch, Halt::Parked).await,
                        Ok(false) => self.halted(&ch, Halt::LostLease).await,
                        Err(_) => self.halted(&ch, Halt::DbDown).await,
                    };
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
            if let Err(halt) = self.record_round(&ch, outcomes).await {
                return self.halted(&ch, halt).await;
            }
            round += 1;
        }
    }

    fn round_state(
        &self,
        ch: &Running,
        due: &[usize],
        round: u32,
        answer_by: Option<Instant>,
    ) -> policy::RoundState {
        let steps = || due.iter().map(|i| &ch.steps[*i]);
        policy::RoundState {
            round,
            tried: steps().map(|s| s.attempts).max().unwrap_or(1),
            in_request_attempts: steps()
                .map(|s| self.attempt_limits(s.planned.target).in_request_attempts)
                .max()
                .unwrap_or(1),
            time_left: answer_by.map(|t| t.saturating_duration_since(Instant::now())),
            lease: self.limits.lease,
            retry_after: steps().filter_map(|s| s.retry_after).max(),
        }
    }

    pub(super) async fn halted(&self, ch: &Running, halt: Halt) -> Submitted {
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
            _ => Submitted::InProgress(ch.view(ChangeStatus::Pending, None)),
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
}
