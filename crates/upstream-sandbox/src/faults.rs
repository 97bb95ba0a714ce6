//! Fault specifications and the book that decides, call by call, which fault fires.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::route::Route;

/// What a fault does to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Wait `latency_ms`, then answer normally.
    Latency,
    /// Answer `status` with `body` verbatim (and `content_type`, if given) instead of the real answer.
    Status,
    /// Reset the TCP connection without answering (the client sees a connection error).
    Reset,
    /// Never answer; the connection stays open until the client gives up or the sandbox stops.
    Hang,
    /// Send headers announcing more body than is sent, then close.
    Truncate,
}

/// One fault rule. Serialized flat, e.g.
/// `{"route":"juspay_wallet_update","kind":"status","status":503,"body":"<html>","content_type":"text/html","times":1}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// A route name (see [`Route`]) or `*` for every upstream route.
    pub route: String,
    pub kind: FaultKind,
    /// Fire on the next N matching calls only; `None` means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
    /// Fire on this fraction (0.0..=1.0) of matching calls; `None` means every call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    /// Let the call take effect first, then fail it: the update happened but the client sees a
    /// failure, which is what an "unknown outcome" looks like from the caller's side.
    #[serde(default)]
    pub after_apply: bool,
    /// Delay before the fault acts; required for `latency`, allowed for every kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// `status`: the status to answer (required). `truncate`: the status to announce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `status` / `truncate`: the body. For `truncate` without a body, the real answer is cut
    /// when `after_apply`, otherwise a made-up JSON prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Content-Type header of `body`; absent means no Content-Type header at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

impl FaultSpec {
    fn new(route: &str, kind: FaultKind) -> Self {
        FaultSpec {
            route: route.to_owned(),
            kind,
            times: None,
            probability: None,
            after_apply: false,
            latency_ms: None,
            status: None,
            body: None,
            content_type: None,
        }
    }

    pub fn latency(route: &str, ms: u64) -> Self {
        FaultSpec {
            latency_ms: Some(ms),
            ..Self::new(route, FaultKind::Latency)
        }
    }

    pub fn status(route: &str, status: u16, body: &str, content_type: Option<&str>) -> Self {
        FaultSpec {
            status: Some(status),
            body: Some(body.to_owned()),
            content_type: content_type.map(str::to_owned),
            ..Self::new(route, FaultKind::Status)
        }
    }

    pub fn reset(route: &str) -> Self {
        Self::new(route, FaultKind::Reset)
    }

    pub fn hang(route: &str) -> Self {
        Self::new(route, FaultKind::Hang)
    }

    pub fn truncate(route: &str) -> Self {
        Self::new(route, FaultKind::Truncate)
    }

    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    pub fn probability(mut self, p: f64) -> Self {
        self.probability = Some(p);
        self
    }

    pub fn after_apply(mut self) -> Self {
        self.after_apply = true;
        self
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.route != "*" && Route::from_name(&self.route).is_none() {
            return Err(format!(
                "unknown route {:?}; expected one of {} or *",
                self.route,
                Route::ALL.map(Route::name).join(", ")
            ));
        }
        if let Some(p) = self.probability
            && !(0.0..=1.0).contains(&p)
        {
            return Err("probability must be within 0.0..=1.0".into());
        }
        if let Some(s) = self.status
            && !(100..=599).contains(&s)
        {
            return Err("status must be within 100..=599".into());
        }
        match self.kind {
            FaultKind::Latency if self.latency_ms.is_none() => {
                Err("a latency fault needs latency_ms".into())
            }
            FaultKind::Status if self.status.is_none() => Err("a status fault needs status".into()),
            _ => Ok(()),
        }
    }

    fn matches(&self, route: Route) -> bool {
        self.route == "*" || self.route == route.name()
    }
}

/// The fault that fired on a call, as recorded in the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FiredFault {
    pub id: u64,
    pub kind: FaultKind,
    pub after_apply: bool,
}

/// An installed fault as `GET /__sandbox/faults` lists it; `times` is what remains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultView {
    pub id: u64,
    /// How often it has fired so far.
    pub fired: u64,
    #[serde(flatten)]
    pub spec: FaultSpec,
}

#[derive(Debug, Default)]
pub(crate) struct FaultBook {
    next_id: u64,
    active: Vec<FaultView>,
}

impl FaultBook {
    pub(crate) fn add(&mut self, spec: FaultSpec) -> Result<u64, String> {
        spec.validate()?;
        self.next_id += 1;
        self.active.push(FaultView {
            id: self.next_id,
            fired: 0,
            spec,
        });
        Ok(self.next_id)
    }

    pub(crate) fn clear(&mut self) {
        self.active.clear();
    }

    pub(crate) fn list(&self) -> Vec<FaultView> {
        self.active.clone()
    }

    /// Picks the first installed fault (in order of addition) that matches and wins its dice
    /// roll, and uses up one of its `times`. Exhausted faults are dropped so listings show what
    /// can still fire.
    pub(crate) fn take(&mut self, route: Route) -> Option<FaultSpecFired> {
        let mut rng = rand::thread_rng();
        let index = self.active.iter().position(|f| {
            f.spec.matches(route)
                && f.spec.times != Some(0)
                && f.spec.probability.is_none_or(|p| rng.gen_bool(p))
        })?;
        let fault = &mut self.active[index];
        fault.fired += 1;
        if let Some(n) = fault.spec.times.as_mut() {
            *n -= 1;
        }
        let fired = FaultSpecFired {
            id: fault.id,
            spec: fault.spec.clone(),
        };
        if fault.spec.times == Some(0) {
            self.active.remove(index);
        }
        Some(fired)
    }
}

/// A fault chosen for one call, with its spec as it was when it fired.
#[derive(Debug, Clone)]
pub(crate) struct FaultSpecFired {
    pub id: u64,
    pub spec: FaultSpec,
}

impl FaultSpecFired {
    pub(crate) fn summary(&self) -> FiredFault {
        FiredFault {
            id: self.id,
            kind: self.spec.kind,
            after_apply: self.spec.after_apply,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_counts_down_and_then_stops() {
        let mut book = FaultBook::default();
        book.add(FaultSpec::reset("juspay_wallet_get").times(2))
            .ok();
        assert!(book.take(Route::JuspayCustomerGet).is_none());
        assert!(book.take(Route::JuspayWalletGet).is_some());
        assert!(book.take(Route::JuspayWalletGet).is_some());
        assert!(book.take(Route::JuspayWalletGet).is_none());
        assert!(book.list().is_empty());
    }

    #[test]
    fn probability_zero_never_fires_and_bad_specs_are_refused() {
        let mut book = FaultBook::default();
        book.add(FaultSpec::hang("*").probability(0.0)).ok();
        assert!(book.take(Route::RazorpayUpiGet).is_none());
        assert!(book.add(FaultSpec::hang("nope")).is_err());
        assert!(book.add(FaultSpec::hang("*").probability(1.5)).is_err());
        assert!(book.add(FaultSpec::new("*", FaultKind::Status)).is_err());
    }

    #[test]
    fn fault_views_round_trip_through_json() {
        let mut book = FaultBook::default();
        book.add(
            FaultSpec::status("*", 503, "busy", None)
                .times(3)
                .after_apply(),
        )
        .ok();
        let json = serde_json::to_string(&book.list()).unwrap_or_default();
        let back: Vec<FaultView> = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, book.list());
    }
}
