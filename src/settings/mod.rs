//! Settings: what the operator wrote (`Settings`, loaded in `load`), and what the gateway runs
//! with (`Runtime`, from [`Settings::resolve`]): the settings' own checks done once, there, so
//! that nothing after it looks at an `Option` a check already looked at. The checks of the
//! modules that own a section's meaning (callers' scopes, webhook URLs) are added by
//! `startup::validate` and `Application::build_with`, the only ways to start.

mod auth;
mod load;
mod providers;
#[cfg(test)]
mod providers_tests;
mod resolve;
mod sections;
#[cfg(test)]
mod tests;
mod validate;

pub use auth::{AuthSettings, CallerSettings, IssuerSettings};
pub use providers::{
    ALL as ALL_PROVIDERS, Account, ProviderSection, ProvidersSettings, TrafficPolicy,
};
pub use resolve::{JuspayAccount, Key, Keys, Mode, RazorpayAccount, Runtime};
pub use sections::{
    AuditSettings, ChangesSettings, DatabaseSettings, JuspaySettings, LimitsSettings,
    RazorpaySettings, ServerSettings, TelemetrySettings, UpstreamSettings, WebhooksSettings,
};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub upstream: UpstreamSettings,
    pub juspay: JuspaySettings,
    #[serde(default)]
    pub razorpay: RazorpaySettings,
    /// Traffic policy per provider: `[providers.all]`, then `[providers.<name>]`.
    #[serde(default)]
    pub providers: ProvidersSettings,
    pub auth: AuthSettings,
    pub changes: ChangesSettings,
    pub audit: AuditSettings,
    pub telemetry: TelemetrySettings,
    pub limits: LimitsSettings,
    pub webhooks: WebhooksSettings,
    /// Set by `serve --sandbox` (never by configuration): the database guard of
    /// `store::mode` then refuses a database a production gateway has used.
    #[serde(skip)]
    pub sandbox: bool,
    /// One line per old key the configuration still uses (said at start, like `warnings`).
    #[serde(skip)]
    pub deprecations: Vec<String>,
    /// Each new key that took an old key's value, with the old key: problems name what the
    /// operator wrote.
    #[serde(skip)]
    pub(super) aliased: std::collections::BTreeMap<String, String>,
}

/// A setting that is wrong, named by its dotted key so the operator knows what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    pub key: String,
    pub problem: String,
}

impl std::fmt::Display for SettingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot load settings: {0}")]
    Load(String),
    #[error("invalid settings:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<SettingError>),
}

impl Settings {
    pub fn request_deadline(&self) -> Duration {
        Duration::from_millis(self.upstream.request_deadline_ms)
    }

    /// `provider`'s traffic policy: `[providers.all]`, then its own section over it.
    pub fn traffic(&self, provider: &str) -> TrafficPolicy {
        self.providers.traffic(provider)
    }
}
