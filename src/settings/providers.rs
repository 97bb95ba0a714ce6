//! `[providers.<name>]`: each provider's traffic policy (timeouts, attempts, retry budget,
//! breaker), `all` holding the defaults, in the style of Apollo Router's `traffic_shaping`. Which
//! names exist is the application's provider registry's business, not this module's: the names
//! are checked when the settings are resolved.

use super::SettingError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The section holding the defaults of every provider.
pub const ALL: &str = "all";

/// One `[providers.<name>]` table. Every key is optional; a provider's unset key takes `all`'s.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    pub timeout_ms: Option<u64>,
    pub max_response_bytes: Option<usize>,
    pub max_attempts: Option<u32>,
    pub in_request_attempts: Option<u32>,
    pub retry_base_ms: Option<u64>,
    pub retry_cap_ms: Option<u64>,
    pub retry_budget_ratio: Option<f64>,
    pub retry_budget_min_per_sec: Option<f64>,
    pub breaker_failure_threshold: Option<u32>,
    pub breaker_open_ms: Option<u64>,
    /// Account settings of a provider that keeps them here rather than in a section of its own
    /// (one registered by the application): the provider parses them itself.
    pub account: Option<Account>,
}

/// A provider's `account` table. Its values are credentials as often as not, so Debug (and with
/// it `check-config`) shows its keys only.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct Account(serde_json::Value);

impl Account {
    pub fn json(&self) -> &serde_json::Value {
        &self.0
    }
}

impl From<serde_json::Value> for Account {
    fn from(value: serde_json::Value) -> Self {
        Self(value)
    }
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Keys<'a>(&'a serde_json::Value);
        impl std::fmt::Debug for Keys<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self.0 {
                    serde_json::Value::Object(map) => f
                        .debug_map()
                        .entries(map.iter().map(|(k, v)| (k, Keys(v))))
                        .finish(),
                    _ => f.write_str("****"),
                }
            }
        }
        f.debug_tuple("Account").field(&Keys(&self.0)).finish()
    }
}

/// The providers whose accounts have sections of their own, `[juspay]` and `[razorpay]`.
const BUILT_IN: &[&str] = &["juspay_customer", "juspay_wallet", "razorpay_upi"];

/// Every `[providers.*]` table by name, `all` included.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct ProvidersSettings(pub BTreeMap<String, ProviderSection>);

/// What the gateway does with one provider's traffic, every value settled.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficPolicy {
    pub timeout: Duration,
    pub max_response_bytes: usize,
    pub max_attempts: u32,
    pub in_request_attempts: u32,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub retry_budget_ratio: f64,
    pub retry_budget_min_per_sec: f64,
    pub breaker_failure_threshold: u32,
    pub breaker_open: Duration,
}

impl ProvidersSettings {
    /// The `all` section, for changing every provider's policy at once (tests do).
    pub fn all_mut(&mut self) -> &mut ProviderSection {
        self.section_mut(ALL)
    }

    /// One provider's section, created empty (everything from `all`) when it was not set.
    pub fn section_mut(&mut self, name: &str) -> &mut ProviderSection {
        self.0.entry(name.to_string()).or_default()
    }

    pub fn section(&self, name: &str) -> Option<&ProviderSection> {
        self.0.get(name)
    }

    /// `all`, then `provider`'s own keys over it. A key `all` lacks (only a hand-built
    /// `Settings` can lack one: the compiled-in defaults set them all) falls back to the
    /// compiled-in default, so this never fails.
    pub fn traffic(&self, provider: &str) -> TrafficPolicy {
        let fallback = ProviderSection::default();
        let all = self.section(ALL).unwrap_or(&fallback);
        let own = self.section(provider).unwrap_or(&fallback);
        let d = built_in();
        let ms = Duration::from_millis;
        macro_rules! pick {
            ($k:ident) => {
                own.$k.or(all.$k)
            };
        }
        TrafficPolicy {
            timeout: pick!(timeout_ms).map_or(d.timeout, ms),
            max_response_bytes: pick!(max_response_bytes).unwrap_or(d.max_response_bytes),
            max_attempts: pick!(max_attempts).unwrap_or(d.max_attempts),
            in_request_attempts: pick!(in_request_attempts).unwrap_or(d.in_request_attempts),
            retry_base: pick!(retry_base_ms).map_or(d.retry_base, ms),
            retry_cap: pick!(retry_cap_ms).map_or(d.retry_cap, ms),
            retry_budget_ratio: pick!(retry_budget_ratio).unwrap_or(d.retry_budget_ratio),
            retry_budget_min_per_sec: pick!(retry_budget_min_per_sec)
                .unwrap_or(d.retry_budget_min_per_sec),
            breaker_failure_threshold: pick!(breaker_failure_threshold)
                .unwrap_or(d.breaker_failure_threshold),
            breaker_open: pick!(breaker_open_ms).map_or(d.breaker_open, ms),
        }
    }

    /// Sections for names no registered provider has, values out of range, and accounts where
    /// none is read, each named by the dotted key the operator wrote: `aliased` gives the old
    /// name of a key that took an old key's value. Only what the keys' old homes checked is
    /// checked, so that a configuration that used to start still does.
    pub(super) fn check(
        &self,
        registered: &[&str],
        aliased: &BTreeMap<String, String>,
        errors: &mut Vec<SettingError>,
    ) {
        let mut bad = |key: String, problem: &str| {
            let key = aliased.get(&key).cloned().unwrap_or(key);
            let e = SettingError {
                key,
                problem: problem.to_string(),
            };
            // An old key feeding two providers is one problem, said once.
            if !errors.contains(&e) {
                errors.push(e);
            }
        };
        for (name, s) in &self.0 {
            let key = |k: &str| format!("providers.{name}.{k}");
            if name != ALL && !registered.contains(&name.as_str()) {
                bad(
                    format!("providers.{name}"),
                    &format!(
                        "no provider is named `{name}` (known: {})",
                        registered.join(", ")
                    ),
                );
                continue;
            }
            if s.account.is_some() && (name == ALL || BUILT_IN.contains(&name.as_str())) {
                bad(
                    key("account"),
                    "is not read here: only a provider registered by the application keeps its account in its own section; the accounts of the built-in providers are [juspay] and [razorpay]",
                );
            }
            for (k, v) in [
                ("timeout_ms", s.timeout_ms),
                ("max_response_bytes", s.max_response_bytes.map(|n| n as u64)),
            ] {
                if v == Some(0) {
                    bad(key(k), "must be greater than 0");
                }
            }
            for (k, v) in [
                ("max_attempts", s.max_attempts),
                ("in_request_attempts", s.in_request_attempts),
            ] {
                if v == Some(0) {
                    bad(key(k), "attempt limits must be at least 1");
                }
            }
            if s.retry_budget_ratio
                .is_some_and(|r| !(0.0..=1.0).contains(&r))
            {
                bad(key("retry_budget_ratio"), "must be between 0 and 1");
            }
        }
    }
}

/// What `config/default.toml` says under `[providers.all]`.
fn built_in() -> TrafficPolicy {
    static BUILT_IN: std::sync::OnceLock<TrafficPolicy> = std::sync::OnceLock::new();
    BUILT_IN
        .get_or_init(|| {
            let defaults = super::load::defaults().expect("config/default.toml loads");
            let all = defaults
                .providers
                .section(ALL)
                .expect("config/default.toml has [providers.all]");
            let complete = all.timeout_ms.is_some()
                && all.max_response_bytes.is_some()
                && all.max_attempts.is_some()
                && all.in_request_attempts.is_some()
                && all.retry_base_ms.is_some()
                && all.retry_cap_ms.is_some()
                && all.retry_budget_ratio.is_some()
                && all.retry_budget_min_per_sec.is_some()
                && all.breaker_failure_threshold.is_some()
                && all.breaker_open_ms.is_some();
            assert!(
                complete,
                "config/default.toml sets every [providers.all] key"
            );
            let ms = Duration::from_millis;
            TrafficPolicy {
                timeout: ms(all.timeout_ms.unwrap_or_default()),
                max_response_bytes: all.max_response_bytes.unwrap_or_default(),
                max_attempts: all.max_attempts.unwrap_or_default(),
                in_request_attempts: all.in_request_attempts.unwrap_or_default(),
                retry_base: ms(all.retry_base_ms.unwrap_or_default()),
                retry_cap: ms(all.retry_cap_ms.unwrap_or_default()),
                retry_budget_ratio: all.retry_budget_ratio.unwrap_or_default(),
                retry_budget_min_per_sec: all.retry_budget_min_per_sec.unwrap_or_default(),
                breaker_failure_threshold: all.breaker_failure_threshold.unwrap_or_default(),
                breaker_open: ms(all.breaker_open_ms.unwrap_or_default()),
            }
        })
        .clone()
}

/// Keys that moved into `[providers.*]`, and where to. Each still works, with a warning at start;
/// a new key set explicitly wins over its alias.
pub(super) const ALIASES: &[(&str, &[&str])] = &[
    ("changes.max_attempts", &["providers.all.max_attempts"]),
    (
        "changes.in_request_attempts",
        &["providers.all.in_request_attempts"],
    ),
    ("changes.retry_base_ms", &["providers.all.retry_base_ms"]),
    ("changes.retry_cap_ms", &["providers.all.retry_cap_ms"]),
    (
        "changes.retry_budget_ratio",
        &["providers.all.retry_budget_ratio"],
    ),
    (
        "changes.retry_budget_min_per_sec",
        &["providers.all.retry_budget_min_per_sec"],
    ),
    (
        "changes.breaker_failure_threshold",
        &["providers.all.breaker_failure_threshold"],
    ),
    (
        "changes.breaker_open_ms",
        &["providers.all.breaker_open_ms"],
    ),
    (
        "upstream.max_response_bytes",
        &["providers.all.max_response_bytes"],
    ),
    (
        "juspay.timeout_ms",
        &[
            "providers.juspay_customer.timeout_ms",
            "providers.juspay_wallet.timeout_ms",
        ],
    ),
    (
        "razorpay.timeout_ms",
        &["providers.razorpay_upi.timeout_ms"],
    ),
];
