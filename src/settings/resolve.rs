//! From what the operator wrote to what the gateway runs with: validation, then every value that
//! was optional only until validation settled, made non-optional.

use super::{Settings, SettingsError, TrafficPolicy};
use crate::secret::Secret;
use std::collections::BTreeMap;

/// Production requires real upstreams, credentials and keys; sandbox mode fills what it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Production,
    Sandbox,
}

impl Mode {
    pub fn sandbox(sandbox: bool) -> Self {
        if sandbox {
            Self::Sandbox
        } else {
            Self::Production
        }
    }
}

/// A 32-byte key, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub [u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(***)")
    }
}

#[derive(Debug, Clone)]
pub struct JuspayAccount {
    pub base_url: String,
    pub api_key: Secret,
    pub merchant_id: Option<String>,
    pub version: String,
}

#[derive(Debug, Clone)]
pub struct RazorpayAccount {
    pub base_url: String,
    pub key_id: String,
    pub key_secret: Secret,
}

#[derive(Debug, Clone)]
pub struct Keys {
    pub encryption_key_id: String,
    pub encryption_key: Key,
    /// Older keys still needed to open payloads sealed before a rotation.
    pub previous_encryption_keys: Vec<(String, Key)>,
    pub hmac_key_id: String,
    pub hmac_key: Key,
}

/// The configuration the gateway runs with.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// Everything that needed no settling, as loaded.
    pub settings: Settings,
    pub mode: Mode,
    pub juspay: JuspayAccount,
    pub razorpay: RazorpayAccount,
    pub keys: Keys,
    /// Each registered provider's policy.
    pub traffic: BTreeMap<String, TrafficPolicy>,
}

impl Runtime {
    /// `provider`'s policy (`all`'s for a name that was not registered at resolve time).
    pub fn traffic(&self, provider: &str) -> TrafficPolicy {
        self.traffic
            .get(provider)
            .cloned()
            .unwrap_or_else(|| self.settings.traffic(provider))
    }
}

/// A fixed key lets a restarted sandbox gateway finish its own pending changes.
const SANDBOX_KEY: Key = Key(*b"profile-gateway-sandbox-only-key");

impl Settings {
    /// Validates (see [`Settings::validate`]) and settles: `providers` are the registered
    /// providers' names. In sandbox mode the keys default to a fixed sandbox key; the upstream
    /// accounts must have been pointed at the simulator before (`serve --sandbox` does).
    pub fn resolve(&self, mode: Mode, providers: &[&str]) -> Result<Runtime, SettingsError> {
        self.validate(mode, providers)?;
        let mut missing = Vec::new();
        let mut need = |key: &str, v: Option<&str>| {
            if v.is_none_or(str::is_empty) {
                missing.push(super::SettingError {
                    key: key.to_string(),
                    problem: "is required (sandbox mode sets it when the simulator starts)".into(),
                });
            }
            v.unwrap_or_default().to_string()
        };
        let juspay = JuspayAccount {
            base_url: need("juspay.base_url", self.juspay.base_url.as_deref()),
            api_key: Secret::new(need(
                "juspay.api_key",
                self.juspay.api_key.as_ref().map(Secret::expose),
            )),
            merchant_id: self.juspay.merchant_id.clone(),
            version: self.juspay.version.clone(),
        };
        let razorpay = RazorpayAccount {
            base_url: need("razorpay.base_url", self.razorpay.base_url.as_deref()),
            key_id: need("razorpay.key_id", self.razorpay.key_id.as_deref()),
            key_secret: Secret::new(need(
                "razorpay.key_secret",
                self.razorpay.key_secret.as_ref().map(Secret::expose),
            )),
        };
        if !missing.is_empty() {
            return Err(SettingsError::Invalid(missing));
        }
        // Validation checked each key that is set; outside sandbox mode that they are set.
        let key = |k: &Option<Secret>| {
            k.as_ref()
                .and_then(|s| crate::crypto::decode_key(s).ok())
                .map_or(SANDBOX_KEY, Key)
        };
        let previous = self
            .changes
            .previous_encryption_keys
            .as_ref()
            .and_then(|k| crate::crypto::parse_key_list(k).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|(id, k)| (id, Key(k)))
            .collect();
        let keys = Keys {
            encryption_key_id: self.changes.encryption_key_id.clone(),
            encryption_key: key(&self.changes.encryption_key),
            previous_encryption_keys: previous,
            hmac_key_id: self.audit.hmac_key_id.clone(),
            hmac_key: key(&self.audit.hmac_key),
        };
        let traffic = providers
            .iter()
            .map(|p| (p.to_string(), self.traffic(p)))
            .collect();
        Ok(Runtime {
            settings: self.clone(),
            mode,
            juspay,
            razorpay,
            keys,
            traffic,
        })
    }
}
