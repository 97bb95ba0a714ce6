//! Per-caller token buckets, per replica: `rate_per_s` tokens a second up to `burst`. A caller is
//! refused with 429 and told when a token is next available; the IETF `RateLimit-Policy` and
//! `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers) describe the bucket on every answer.

use crate::error::ApiError;
use crate::settings::{CallerSettings, LimitsSettings};
use axum::http::HeaderValue;
use axum::http::request::Parts;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_s: f64,
    pub burst: f64,
}

impl Rate {
    fn of(per_s: Option<f64>, burst: Option<u32>) -> Option<Self> {
        let per_s = per_s?;
        // Without a burst, one second's worth (at least one request) may come at once.
        let burst = burst.map_or(per_s.ceil().max(1.0), f64::from);
        Some(Self { per_s, burst })
    }

    /// The window the policy advertises: how long an empty bucket takes to fill.
    fn window_s(&self) -> u64 {
        (self.burst / self.per_s).ceil().max(1.0) as u64
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What the bucket said about one request: the headers it leaves with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub rate: Rate,
    pub remaining: u64,
    /// Seconds until the bucket is full again (admitted) or holds one token (refused).
    pub reset_s: u64,
    pub admitted: bool,
}

impl Verdict {
    pub fn headers(&self) -> [(&'static str, HeaderValue); 2] {
        let policy = format!(
            "\"caller\";q={};w={}",
            self.rate.burst as u64,
            self.rate.window_s()
        );
        let state = format!("\"caller\";r={};t={}", self.remaining, self.reset_s);
        [
            (
                "ratelimit-policy",
                HeaderValue::from_str(&policy).expect("ascii"),
            ),
            ("ratelimit", HeaderValue::from_str(&state).expect("ascii")),
        ]
    }
}

#[derive(Debug, Default)]
pub struct RateLimiter {
    per_caller: HashMap<String, Rate>,
    default: Option<Rate>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(callers: &[CallerSettings], limits: &LimitsSettings) -> Self {
        let default = Rate::of(limits.rate_per_s, limits.burst);
        let per_caller = callers
            .iter()
            .filter_map(|c| {
                let rate = Rate::of(c.rate_per_s, c.burst.or(limits.burst))?;
                Some((c.name.clone(), rate))
            })
            .collect();
        Self {
            per_caller,
            default,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn rate_of(&self, caller: &str) -> Option<Rate> {
        self.per_caller.get(caller).copied().or(self.default)
    }

    /// Takes one token for `caller` at `now`; `None` when the caller has no limit.
    pub fn take(&self, caller: &str, now: Instant) -> Option<Verdict> {
        let rate = self.rate_of(caller)?;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(caller.to_string()).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_s).min(rate.burst);
        bucket.at = now;
        let admitted = bucket.tokens >= 1.0;
        if admitted {
            bucket.tokens -= 1.0;
        }
        let reset = if admitted {
            (rate.burst - bucket.tokens) / rate.per_s
        } else {
            (1.0 - bucket.tokens) / rate.per_s
        };
        Some(Verdict {
            rate,
            remaining: bucket.tokens.floor() as u64,
            reset_s: reset.ceil() as u64,
            admitted,
        })
    }
}

/// Set by the edge layer; the caller's verdict is written here so the layer can add the headers
/// to whatever the handler answers.
#[derive(Clone)]
pub(crate) struct Slot {
    pub limiter: Arc<RateLimiter>,
    pub verdict: Arc<Mutex<Option<Verdict>>>,
}

/// Called once a request's caller is known (auth): refuses it when its bucket is empty.
pub fn admit(parts: &Parts, caller: &str) -> Result<(), ApiError> {
    let Some(slot) = parts.extensions.get::<Slot>() else {
        return Ok(());
    };
    let Some(verdict) = slot.limiter.take(caller, Instant::now()) else {
        return Ok(());
    };
    *slot.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(verdict);
    if verdict.admitted {
        Ok(())
    } else {
        Err(ApiError::RateLimited(Duration::from_secs(
            verdict.reset_s.max(1),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(name: &str, rate: Option<f64>, burst: Option<u32>) -> CallerSettings {
        CallerSettings {
            name: name.into(),
            rate_per_s: rate,
            burst,
            ..Default::default()
        }
    }

    fn limits(rate: Option<f64>, burst: Option<u32>) -> LimitsSettings {
        LimitsSettings {
            max_inflight_patches: 1,
            max_inflight_reads: 1,
            rate_per_s: rate,
            burst,
            fingerprint_max_age_ms: 1,
            fingerprint_max_future_ms: 1,
        }
    }

    #[test]
    fn a_bucket_drains_and_refills_at_its_rate() {
        let l = RateLimiter::new(&[caller("a", Some(2.0), Some(3))], &limits(None, None));
        let t0 = Instant::now();
        for left in [2, 1, 0] {
            let v = l.take("a", t0).unwrap();
            assert!(v.admitted);
            assert_eq!(v.remaining, left);
        }
        let refused = l.take("a", t0).unwrap();
        assert!(!refused.admitted);
        assert_eq!(refused.reset_s, 1);
        assert_eq!(
            refused.headers()[0].1.to_str().unwrap(),
            "\"caller\";q=3;w=2"
        );
        assert_eq!(
            refused.headers()[1].1.to_str().unwrap(),
            "\"caller\";r=0;t=1"
        );
        // Half a second at 2/s is one token.
        assert!(
            l.take("a", t0 + Duration::from_millis(500))
                .unwrap()
                .admitted
        );
        assert!(
            !l.take("a", t0 + Duration::from_millis(500))
                .unwrap()
                .admitted
        );
        // Never more than the burst, however long the caller was idle.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(l.take("a", later).unwrap().remaining, 2);
    }

    #[test]
    fn defaults_apply_to_callers_that_name_none_and_no_limit_is_no_limit() {
        let none = RateLimiter::new(&[caller("a", None, None)], &limits(None, None));
        assert_eq!(none.take("a", Instant::now()), None);
        let l = RateLimiter::new(
            &[caller("a", None, None), caller("b", Some(10.0), None)],
            &limits(Some(1.0), None),
        );
        let now = Instant::now();
        assert!(l.take("a", now).unwrap().admitted);
        assert!(!l.take("a", now).unwrap().admitted);
        assert_eq!(l.take("b", now).unwrap().rate.burst, 10.0);
        // A caller known only from a token (no entry) gets the default too.
        assert!(l.take("jwt-caller", now).unwrap().admitted);
    }
}
