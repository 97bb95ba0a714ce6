//! The lifecycle's decisions, free of I/O and clocks so each rule can be tested by itself: what an
//! attempt's result makes of a step, when a step is final, whether the next round goes now, later
//! in this request, or to a completer, how long to wait, and how `PATCH` answers a change.
//! Orchestration (`submit`, `drive`, `attempt`, `resume`) asks; it decides nothing itself.
//! (Over half of the file is the tables that test every rule.)

use crate::domain::{ChangeStatus, StepStatus, StepView};
use crate::providers::{StepError, StepErrorCode};
use std::time::Duration;

/// How many attempts a step gets: in all, and in the drive of the request that recorded it (or
/// of one completer claim) before the change is parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptLimits {
    pub max_attempts: u32,
    pub in_request_attempts: u32,
}

/// The recorded status after an attempt: a failure that may be retried stays open (pending, or
/// unknown when the write may have happened) until the attempts run out.
pub fn next_status(result: &Result<(), StepError>, attempts: u32, max_attempts: u32) -> StepStatus {
    let more = attempts < max_attempts;
    match result {
        Ok(()) => StepStatus::Applied,
        Err(e) if e.outcome_unknown && more => StepStatus::Unknown,
        Err(e) if e.retryable && more => StepStatus::Pending,
        Err(e) if e.outcome_unknown => StepStatus::Unknown,
        Err(_) => StepStatus::Failed,
    }
}

/// A step is final once applied or failed, or once an unknown outcome has no attempt left to
/// resolve it (it then stays `unknown` for an operator).
pub fn is_final(status: StepStatus, attempts: u32, max_attempts: u32) -> bool {
    match status {
        StepStatus::Applied | StepStatus::Failed => true,
        StepStatus::Unknown => attempts >= max_attempts,
        StepStatus::Pending => false,
    }
}

/// Whether the next attempt of a step first reads the upstream's state: when its last outcome is
/// unknown, or when another replica held the change and may have sent a pending step without
/// recording it.
pub fn read_back_first(status: StepStatus, taken_over: bool) -> bool {
    status == StepStatus::Unknown || (taken_over && status == StepStatus::Pending)
}

/// A `Retry-After` beyond this is taken as this: the change is parked at most that long, so an
/// upstream cannot push it out of sight. While parked it still holds the user's turn and counts
/// toward `changes.max_pending_per_user`: the user's later changes wait (or get 429) meanwhile,
/// which is what an upstream asking for an hour's quiet means for that user.
pub const LONGEST_WAIT: Duration = Duration::from_secs(3600);

/// Where a drive stands before its next round of attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundState {
    /// Rounds this drive has made (0 before the first).
    pub round: u32,
    /// The most attempts any due step has had (its backoff when parked).
    pub tried: u32,
    /// The in-request rounds the due steps allow.
    pub in_request_attempts: u32,
    /// Until the caller's deadline; `None` for a completer's drive (one round per claim).
    pub time_left: Option<Duration>,
    pub lease: Duration,
    /// The longest wait an upstream asked for (429 `Retry-After`) among the due steps.
    pub retry_after: Option<Duration>,
}

/// What a drive does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Attempt the due steps now.
    Now,
    /// Sleep, renew the lease, then attempt.
    After(Duration),
    /// Hand the change to the completers, claimable again after this long.
    Park(Duration),
}

/// The round decision. `backoff(n)` is the (jittered) wait before the n-th retry.
///
/// The first round goes at once. Later rounds stay in this drive while in-request rounds remain
/// and the caller still waits; otherwise the change is parked. A wait is never shorter than an
/// upstream's `Retry-After`; a `Retry-After` longer than the caller has left, or than half the
/// lease (which is renewed only between rounds), is served parked, so the lease cannot run out
/// mid-sleep and let a completer send sooner than asked.
pub fn next_round(state: &RoundState, backoff: impl Fn(u32) -> Duration) -> Round {
    if state.round == 0 {
        return Round::Now;
    }
    let asked = state.retry_after.map(|d| d.min(LONGEST_WAIT));
    let waits = |pause: Duration| asked.map_or(pause, |a| a.max(pause));
    let within_request = state.time_left.is_some_and(|t| !t.is_zero());
    if state.round >= state.in_request_attempts || !within_request {
        return Round::Park(waits(backoff(state.tried)));
    }
    let pause = backoff(state.round);
    match asked {
        Some(a) if a > pause => {
            let time_left = state.time_left.unwrap_or_default();
            if a > time_left || a >= state.lease / 2 {
                Round::Park(a)
            } else {
                Round::After(a)
            }
        }
        _ => Round::After(pause),
    }
}

/// A failed change's answer: its HTTP status and problem code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 422: an upstream refused the data, or does not know the linked object; the caller must fix
    /// the input or the links.
    Refused(StepErrorCode),
    /// 504: every failed step timed out.
    TimedOut,
    /// 502: an upstream failed.
    Upstream(StepErrorCode),
}

impl Failure {
    pub fn status(self) -> u16 {
        match self {
            Self::Refused(_) => 422,
            Self::TimedOut => 504,
            Self::Upstream(_) => 502,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::Refused(c) | Self::Upstream(c) => c.as_str(),
            Self::TimedOut => StepErrorCode::UpstreamTimeout.as_str(),
        }
    }
}

/// How `PATCH /profile/{user}` answers a change (a replay too, from the change as recorded now).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchAnswer {
    /// 200: every step applied.
    Applied,
    /// 202: steps are still pending; the change goes on in the background.
    InProgress,
    /// 422 / 502 / 504 with the change in the problem.
    Failed(Failure),
}

/// The README's status table for `PATCH /profile/{user}`, in one place. When several steps
/// failed, the failure that needs the caller's action wins: `upstream_rejected`, then
/// `upstream_not_found`, then 504 if every failure is a timeout, then 502, whose code is the one
/// that most changes what the caller or an operator does: auth, then a bad response, then rate
/// limiting when every failure is one, else unavailable.
pub fn patch_answer(status: ChangeStatus, steps: &[StepView]) -> PatchAnswer {
    use StepErrorCode as C;
    match status {
        ChangeStatus::Applied => return PatchAnswer::Applied,
        ChangeStatus::Pending => return PatchAnswer::InProgress,
        ChangeStatus::Failed | ChangeStatus::PartiallyApplied => {}
    }
    let errors: Vec<C> = steps
        .iter()
        .filter_map(|s| s.error.as_ref().map(|e| e.code))
        .collect();
    let all = |code: C| !errors.is_empty() && errors.iter().all(|c| *c == code);
    let failure = if let Some(c) = [C::UpstreamRejected, C::UpstreamNotFound]
        .into_iter()
        .find(|c| errors.contains(c))
    {
        Failure::Refused(c)
    } else if all(C::UpstreamTimeout) {
        Failure::TimedOut
    } else if errors.contains(&C::UpstreamAuthFailed) {
        Failure::Upstream(C::UpstreamAuthFailed)
    } else if errors.contains(&C::UpstreamBadResponse) {
        Failure::Upstream(C::UpstreamBadResponse)
    } else if all(C::UpstreamRateLimited) {
        Failure::Upstream(C::UpstreamRateLimited)
    } else {
        Failure::Upstream(C::UpstreamUnavailable)
    };
    PatchAnswer::Failed(failure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::StepErrorView;
    use crate::domain::Target;
    use StepErrorCode as C;

    fn err(code: C, retryable: bool, unknown: bool) -> Result<(), StepError> {
        Err(StepError {
            code,
            retryable,
            outcome_unknown: unknown,
            upstream_status: None,
            upstream_code: None,
            message: String::new(),
            retry_after: None,
        })
    }

    #[test]
    fn next_status_keeps_a_retryable_failure_open_until_the_attempts_run_out() {
        use StepStatus::*;
        let cases = [
            // (result, attempts, max) -> status
            (Ok(()), 1, 3, Applied),
            (Ok(()), 3, 3, Applied),
            (err(C::UpstreamTimeout, true, true), 1, 3, Unknown),
            (err(C::UpstreamTimeout, true, true), 3, 3, Unknown),
            (err(C::UpstreamBadResponse, false, true), 3, 3, Unknown),
            (err(C::UpstreamUnavailable, true, false), 1, 3, Pending),
            (err(C::UpstreamUnavailable, true, false), 3, 3, Failed),
            (err(C::UpstreamRejected, false, false), 1, 3, Failed),
        ];
        for (i, (result, attempts, max, want)) in cases.into_iter().enumerate() {
            assert_eq!(next_status(&result, attempts, max), want, "case {i}");
        }
    }

    #[test]
    fn is_final_for_each_status() {
        use StepStatus::*;
        let cases = [
            (Applied, 1, true),
            (Failed, 1, true),
            (Pending, 1, false),
            (Pending, 5, false),
            (Unknown, 4, false),
            (Unknown, 5, true),
            (Unknown, 6, true),
        ];
        for (status, attempts, want) in cases {
            assert_eq!(is_final(status, attempts, 5), want, "{status:?} {attempts}");
        }
    }

    #[test]
    fn read_back_first_when_unknown_or_possibly_sent_by_another_replica() {
        use StepStatus::*;
        let cases = [
            (Unknown, false, true),
            (Unknown, true, true),
            (Pending, true, true),
            (Pending, false, false),
            (Applied, true, false),
            (Failed, true, false),
        ];
        for (status, taken_over, want) in cases {
            assert_eq!(
                read_back_first(status, taken_over),
                want,
                "{status:?} {taken_over}"
            );
        }
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn state(round: u32, time_left: Option<u64>, retry_after: Option<u64>) -> RoundState {
        RoundState {
            round,
            tried: 2,
            in_request_attempts: 3,
            time_left: time_left.map(MS),
            lease: MS(30_000),
            retry_after: retry_after.map(MS),
        }
    }

    /// A deterministic backoff: 100 ms per retry number.
    fn backoff(n: u32) -> Duration {
        MS(100 * u64::from(n))
    }

    #[test]
    fn next_round_rules() {
        let cases = [
            (
                "first round goes at once",
                state(0, Some(1000), None),
                Round::Now,
            ),
            (
                "first round even for a completer",
                state(0, None, None),
                Round::Now,
            ),
            (
                "in-request retry after the backoff",
                state(1, Some(5000), None),
                Round::After(MS(100)),
            ),
            (
                "in-request rounds spent: parked for the backoff of the attempts made",
                state(3, Some(5000), None),
                Round::Park(MS(200)),
            ),
            (
                "caller's deadline passed: parked",
                state(1, Some(0), None),
                Round::Park(MS(200)),
            ),
            (
                "a completer's drive makes one round per claim",
                state(1, None, None),
                Round::Park(MS(200)),
            ),
            (
                "Retry-After longer than the backoff is waited in the request",
                state(1, Some(5000), Some(1000)),
                Round::After(MS(1000)),
            ),
            (
                "Retry-After shorter than the backoff: the backoff",
                state(2, Some(5000), Some(50)),
                Round::After(MS(200)),
            ),
            (
                "Retry-After past the caller's deadline: parked that long",
                state(1, Some(500), Some(1000)),
                Round::Park(MS(1000)),
            ),
            (
                "Retry-After of half the lease or more: parked that long",
                state(1, Some(60_000), Some(15_000)),
                Round::Park(MS(15_000)),
            ),
            (
                "a park is never sooner than Retry-After",
                state(3, Some(5000), Some(1000)),
                Round::Park(MS(1000)),
            ),
            (
                "a park honours the backoff when it is longer",
                state(3, Some(5000), Some(150)),
                Round::Park(MS(200)),
            ),
            (
                "an enormous Retry-After is capped",
                state(1, None, Some(10_000_000)),
                Round::Park(LONGEST_WAIT),
            ),
        ];
        for (name, s, want) in cases {
            assert_eq!(next_round(&s, backoff), want, "{name}");
        }
    }

    fn step(status: StepStatus, code: Option<C>) -> StepView {
        StepView {
            step_no: 1,
            target: Target::JUSPAY_CUSTOMER,
            upstream_ref: "r".into(),
            fields: vec![],
            status,
            attempts: 1,
            error: code.map(|code| StepErrorView {
                code,
                retryable: false,
                upstream_status: None,
                upstream_code: None,
                message: String::new(),
            }),
        }
    }

    #[test]
    fn patch_answer_is_the_readme_table() {
        use ChangeStatus as S;
        use Failure::*;
        use StepStatus::{Applied as Ok_, Failed as F, Unknown as U};
        let failed = |c| step(F, Some(c));
        let cases: Vec<(&str, S, Vec<StepView>, PatchAnswer)> = vec![
            (
                "applied",
                S::Applied,
                vec![step(Ok_, None)],
                PatchAnswer::Applied,
            ),
            (
                "pending",
                S::Pending,
                vec![step(StepStatus::Pending, Some(C::UpstreamUnavailable))],
                PatchAnswer::InProgress,
            ),
            (
                "rejected beats everything",
                S::PartiallyApplied,
                vec![
                    step(Ok_, None),
                    failed(C::UpstreamNotFound),
                    failed(C::UpstreamRejected),
                    failed(C::UpstreamTimeout),
                ],
                PatchAnswer::Failed(Refused(C::UpstreamRejected)),
            ),
            (
                "not found beats upstream trouble",
                S::Failed,
                vec![failed(C::UpstreamNotFound), failed(C::UpstreamAuthFailed)],
                PatchAnswer::Failed(Refused(C::UpstreamNotFound)),
            ),
            (
                "only timeouts: 504",
                S::Failed,
                vec![
                    failed(C::UpstreamTimeout),
                    step(U, Some(C::UpstreamTimeout)),
                ],
                PatchAnswer::Failed(TimedOut),
            ),
            (
                "a timeout among other failures: 502",
                S::Failed,
                vec![failed(C::UpstreamTimeout), failed(C::UpstreamUnavailable)],
                PatchAnswer::Failed(Upstream(C::UpstreamUnavailable)),
            ),
            (
                "auth failure first among 502s",
                S::Failed,
                vec![
                    failed(C::UpstreamBadResponse),
                    failed(C::UpstreamAuthFailed),
                    failed(C::UpstreamRateLimited),
                ],
                PatchAnswer::Failed(Upstream(C::UpstreamAuthFailed)),
            ),
            (
                "then a bad response",
                S::Failed,
                vec![
                    failed(C::UpstreamRateLimited),
                    failed(C::UpstreamBadResponse),
                ],
                PatchAnswer::Failed(Upstream(C::UpstreamBadResponse)),
            ),
            (
                "rate limited when every failure is",
                S::PartiallyApplied,
                vec![step(Ok_, None), failed(C::UpstreamRateLimited)],
                PatchAnswer::Failed(Upstream(C::UpstreamRateLimited)),
            ),
            (
                "rate limited and unavailable: unavailable",
                S::Failed,
                vec![
                    failed(C::UpstreamRateLimited),
                    failed(C::UpstreamUnavailable),
                ],
                PatchAnswer::Failed(Upstream(C::UpstreamUnavailable)),
            ),
            (
                "a failure without step errors: unavailable",
                S::Failed,
                vec![step(F, None)],
                PatchAnswer::Failed(Upstream(C::UpstreamUnavailable)),
            ),
        ];
        for (name, status, steps, want) in cases {
            assert_eq!(patch_answer(status, &steps), want, "{name}");
        }
    }

    #[test]
    fn failure_status_and_code() {
        let cases = [
            (
                Failure::Refused(C::UpstreamRejected),
                422,
                "upstream_rejected",
            ),
            (
                Failure::Refused(C::UpstreamNotFound),
                422,
                "upstream_not_found",
            ),
            (Failure::TimedOut, 504, "upstream_timeout"),
            (
                Failure::Upstream(C::UpstreamAuthFailed),
                502,
                "upstream_auth_failed",
            ),
            (
                Failure::Upstream(C::UpstreamUnavailable),
                502,
                "upstream_unavailable",
            ),
        ];
        for (f, status, code) in cases {
            assert_eq!((f.status(), f.code()), (status, code), "{f:?}");
        }
    }
}
