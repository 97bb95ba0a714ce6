//! Per-provider protection, held in each replica's memory (like Envoy's): a retry budget so retries
//! cannot multiply an outage, and a circuit breaker that fails fast while a provider is down. Each
//! provider has its own traffic policy (`[providers.<name>]` over `[providers.all]`).

use crate::domain::Target;
use crate::providers::{StepError, StepErrorCode};
use crate::settings::TrafficPolicy;
use rand::Rng;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Exponential backoff with full jitter (AWS architecture blog): spreads retries of many clients
/// instead of synchronizing them.
pub fn backoff(config: &TrafficPolicy, attempt: u32) -> Duration {
    let exp = config
        .retry_base
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
    let ceiling = exp.min(config.retry_cap);
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(rand::thread_rng().gen_range(0..=ms.max(1)))
}

#[derive(Debug)]
struct Budget {
    tokens: f64,
    refilled: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; everyone else fails fast until it answers.
    HalfOpen,
}

#[derive(Debug)]
struct Provider {
    budget: Budget,
    breaker: BreakerState,
}

pub struct Resilience {
    /// The policy of a provider that has none of its own.
    default: TrafficPolicy,
    policies: HashMap<Target, TrafficPolicy>,
    providers: Mutex<HashMap<Target, Provider>>,
    metrics: Option<std::sync::Arc<crate::telemetry::metrics::Metrics>>,
}

impl BreakerState {
    /// The state's name in `breaker_transitions_total{to}`.
    fn name(self) -> &'static str {
        match self {
            BreakerState::Closed { .. } => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What the breaker says about sending now.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Send,
    FailFast,
}

const BUDGET_CAP: f64 = 20.0;

impl Resilience {
    pub fn new(default: TrafficPolicy) -> Self {
        Self {
            default,
            policies: HashMap::new(),
            providers: Mutex::new(HashMap::new()),
            metrics: None,
        }
    }

    /// Reports breaker states and transitions to `metrics`.
    pub fn with_metrics(
        mut self,
        metrics: std::sync::Arc<crate::telemetry::metrics::Metrics>,
    ) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn transition(&self, target: Target, from: BreakerState, to: BreakerState) {
        if from.name() != to.name()
            && let Some(m) = &self.metrics
        {
            m.breaker_state(target, to.name());
        }
    }

    /// Gives `target` its own policy.
    pub fn with_policy(mut self, target: Target, policy: TrafficPolicy) -> Self {
        self.policies.insert(target, policy);
        self
    }

    /// `target`'s traffic policy: attempts, backoff, budget and breaker.
    pub fn policy(&self, target: Target) -> &TrafficPolicy {
        self.policies.get(&target).unwrap_or(&self.default)
    }

    fn with<R>(&self, target: Target, f: impl FnOnce(&mut Provider, &TrafficPolicy) -> R) -> R {
        let mut map = self.providers.lock().unwrap_or_else(|p| p.into_inner());
        let p = map.entry(target).or_insert_with(|| Provider {
            budget: Budget {
                tokens: BUDGET_CAP / 2.0,
                refilled: Instant::now(),
            },
            breaker: BreakerState::Closed { failures: 0 },
        });
        f(p, self.policy(target))
    }

    /// Called before every send.
    pub fn admit(&self, target: Target) -> Admission {
        let (admission, from, to) = self.with(target, |p, _| {
            let from = p.breaker;
            let admission = match p.breaker {
                BreakerState::Closed { .. } => Admission::Send,
                BreakerState::Open { until } if Instant::now() >= until => {
                    p.breaker = BreakerState::HalfOpen;
                    Admission::Send
                }
                BreakerState::Open { .. } | BreakerState::HalfOpen => Admission::FailFast,
            };
            (admission, from, p.breaker)
        });
        self.transition(target, from, to);
        admission
    }

    /// What the breaker says without being moved: `Send` only while it is closed. For calls that
    /// must never steer the breaker protecting the writes (a dry run's reads): they neither take
    /// an expired Open's half-open probe (only [`Resilience::record`] leaves HalfOpen, and a
    /// caller hanging up mid-probe would leave it there) nor record their outcome.
    pub fn peek(&self, target: Target) -> Admission {
        self.with(target, |p, _| match p.breaker {
            BreakerState::Closed { .. } => Admission::Send,
            BreakerState::Open { .. } | BreakerState::HalfOpen => Admission::FailFast,
        })
    }

    /// A first attempt earns the budget a fraction of a retry.
    pub fn first_attempt(&self, target: Target) {
        self.with(target, |p, c| {
            refill(&mut p.budget, c);
            p.budget.tokens = (p.budget.tokens + c.retry_budget_ratio).min(BUDGET_CAP);
        })
    }

    /// Whether a retry may go now; spends budget if so.
    pub fn try_retry(&self, target: Target) -> bool {
        self.with(target, |p, c| {
            refill(&mut p.budget, c);
            if p.budget.tokens >= 1.0 {
                p.budget.tokens -= 1.0;
                true
            } else {
                false
            }
        })
    }

    /// Feeds the breaker with the outcome of a send. Only failures that say "the provider is in
    /// trouble" count; a rejected input is the provider working fine.
    pub fn record(&self, target: Target, result: &Result<(), StepError>) {
        let trouble = matches!(
            result,
            Err(e) if matches!(
                e.code,
                StepErrorCode::UpstreamUnavailable
                    | StepErrorCode::UpstreamTimeout
                    | StepErrorCode::UpstreamRateLimited
            )
        );
        let (from, to) = self.with(target, |p, c| {
            let from = p.breaker;
            p.breaker = match (p.breaker, trouble) {
                (_, false) => BreakerState::Closed { failures: 0 },
                (BreakerState::HalfOpen, true) => BreakerState::Open {
                    until: Instant::now() + c.breaker_open,
                },
                (BreakerState::Closed { failures }, true)
                    if failures + 1 >= c.breaker_failure_threshold =>
                {
                    tracing::warn!(target = target.as_str(), "circuit breaker opened");
                    BreakerState::Open {
                        until: Instant::now() + c.breaker_open,
                    }
                }
                (BreakerState::Closed { failures }, true) => BreakerState::Closed {
                    failures: failures + 1,
                },
                (open @ BreakerState::Open { .. }, true) => open,
            };
            (from, p.breaker)
        });
        self.transition(target, from, to);
    }
}

fn refill(b: &mut Budget, c: &TrafficPolicy) {
    let now = Instant::now();
    let secs = now.duration_since(b.refilled).as_secs_f64();
    b.tokens = (b.tokens + secs * c.retry_budget_min_per_sec).min(BUDGET_CAP);
    b.refilled = now;
}

/// The step error of a call the breaker did not let out. Nothing was sent.
pub fn breaker_open(target: Target) -> StepError {
    StepError {
        code: StepErrorCode::UpstreamUnavailable,
        retryable: true,
        outcome_unknown: false,
        upstream_status: None,
        upstream_code: None,
        message: format!(
            "{} is failing; the gateway is not sending to it for a moment",
            target.as_str()
        ),
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TrafficPolicy {
        TrafficPolicy {
            timeout: Duration::from_secs(5),
            max_response_bytes: 65536,
            max_attempts: 5,
            in_request_attempts: 3,
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_millis(1000),
            retry_budget_ratio: 0.2,
            retry_budget_min_per_sec: 0.0,
            breaker_failure_threshold: 3,
            breaker_open: Duration::from_millis(50),
        }
    }

    fn unavailable() -> Result<(), StepError> {
        Err(breaker_open(Target::JUSPAY_WALLET))
    }

    #[test]
    fn backoff_is_jittered_under_an_exponential_cap() {
        let c = config();
        for attempt in 1..10 {
            let d = backoff(&c, attempt);
            let cap = (100u64 << (attempt - 1)).min(1000);
            assert!(d.as_millis() as u64 <= cap, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn breaker_opens_fails_fast_then_probes_once() {
        let r = Resilience::new(config());
        let t = Target::JUSPAY_WALLET;
        for _ in 0..3 {
            assert_eq!(r.admit(t), Admission::Send);
            r.record(t, &unavailable());
        }
        assert_eq!(r.admit(t), Admission::FailFast);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(r.admit(t), Admission::Send, "half-open probe");
        assert_eq!(r.admit(t), Admission::FailFast, "only one probe");
        r.record(t, &Ok(()));
        assert_eq!(r.admit(t), Admission::Send);
        // A rejected input does not count against the provider.
        let mut rejected = breaker_open(t);
        rejected.code = StepErrorCode::UpstreamRejected;
        for _ in 0..5 {
            r.record(t, &Err(rejected.clone()));
        }
        assert_eq!(r.admit(t), Admission::Send);
    }

    #[test]
    fn a_peek_sends_only_while_closed_and_never_takes_the_probe() {
        let r = Resilience::new(config());
        let t = Target::JUSPAY_CUSTOMER;
        assert_eq!(r.peek(t), Admission::Send);
        for _ in 0..3 {
            r.record(t, &unavailable());
        }
        assert_eq!(r.peek(t), Admission::FailFast, "open");
        std::thread::sleep(Duration::from_millis(60));
        // Expired: a peek still fails fast and leaves the state as it was, so the next real send
        // takes the half-open probe, and after it everyone else fails fast.
        for _ in 0..3 {
            assert_eq!(r.peek(t), Admission::FailFast, "expired open");
        }
        assert_eq!(r.admit(t), Admission::Send, "the probe is still there");
        assert_eq!(r.peek(t), Admission::FailFast, "half-open");
        assert_eq!(r.admit(t), Admission::FailFast);
        r.record(t, &Ok(()));
        assert_eq!(r.peek(t), Admission::Send, "closed again");
        // Peeking counts nothing: one failure short of the threshold stays closed however often
        // it is peeked at.
        r.record(t, &unavailable());
        r.record(t, &unavailable());
        for _ in 0..10 {
            assert_eq!(r.peek(t), Admission::Send);
        }
        r.record(t, &unavailable());
        assert_eq!(r.peek(t), Admission::FailFast);
    }

    #[test]
    fn a_provider_with_its_own_policy_keeps_it_while_the_others_use_the_default() {
        let mut own = config();
        own.breaker_failure_threshold = 1;
        own.max_attempts = 1;
        let r = Resilience::new(config()).with_policy(Target::RAZORPAY_UPI, own);
        assert_eq!(r.policy(Target::RAZORPAY_UPI).max_attempts, 1);
        assert_eq!(r.policy(Target::JUSPAY_WALLET).max_attempts, 5);
        r.record(Target::RAZORPAY_UPI, &unavailable());
        r.record(Target::JUSPAY_WALLET, &unavailable());
        assert_eq!(r.admit(Target::RAZORPAY_UPI), Admission::FailFast);
        assert_eq!(r.admit(Target::JUSPAY_WALLET), Admission::Send);
    }

    #[test]
    fn retry_budget_is_a_fraction_of_first_attempts() {
        let r = Resilience::new(config());
        let t = Target::RAZORPAY_UPI;
        let mut allowed = 0;
        for _ in 0..100 {
            r.first_attempt(t);
            if r.try_retry(t) {
                allowed += 1;
            }
        }
        // The starting half-bucket plus 20% of 100 first attempts.
        assert!((25..=31).contains(&allowed), "{allowed}");
    }
}
