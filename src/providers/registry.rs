//! The one list of providers. A [`Registry`] names each provider with what planning needs of it
//! (its fields, its links member) and how to build its adapter; the application builder takes
//! one, so an embedding application or a test can add a provider without editing the gateway.

use super::ProviderAdapter;
use crate::domain::{LinkMember, ProviderSpec, Target};
use crate::settings::{Runtime, TrafficPolicy};
use std::sync::Arc;

/// What a provider's adapter is built from.
pub struct BuildContext<'a> {
    /// The shared upstream client (connect timeout, proxy, TLS).
    pub client: &'a reqwest::Client,
    /// The resolved settings: the built-in providers read their accounts (`[juspay]`,
    /// `[razorpay]`) here.
    pub runtime: &'a Runtime,
    /// This provider's traffic policy (`[providers.all]`, then `[providers.<name>]`).
    pub traffic: TrafficPolicy,
    /// The provider's own account settings (`[providers.<name>.account]`), for a provider whose
    /// account is not one of the gateway's built-in sections. `None` when there is none.
    pub section: Option<&'a serde_json::Value>,
}

impl BuildContext<'_> {
    /// How this provider's answers are read: its timeout and body cap.
    pub fn read_limits(&self) -> super::http::ReadLimits {
        super::http::ReadLimits {
            timeout: self.traffic.timeout,
            max_bytes: self.traffic.max_response_bytes,
        }
    }
}

type Factory =
    Arc<dyn Fn(&BuildContext<'_>) -> Result<Arc<dyn ProviderAdapter>, String> + Send + Sync>;

#[derive(Clone)]
pub struct Registry {
    entries: Vec<(ProviderSpec, Factory)>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::standard()
    }
}

impl Registry {
    /// No providers at all.
    pub fn empty() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// The gateway's providers. Steps are planned in this order.
    pub fn standard() -> Self {
        Self::empty()
            .with(super::juspay_customer::SPEC, super::juspay_customer::build)
            .with(super::juspay_wallet::SPEC, super::juspay_wallet::build)
            .with(super::razorpay_upi::SPEC, super::razorpay_upi::build)
    }

    /// Adds a provider after the others, or replaces the one of the same name in its place.
    pub fn with(
        mut self,
        spec: ProviderSpec,
        build: impl Fn(&BuildContext<'_>) -> Result<Arc<dyn ProviderAdapter>, String>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        let entry: (ProviderSpec, Factory) = (spec, Arc::new(build));
        match self
            .entries
            .iter_mut()
            .find(|(s, _)| s.target == spec.target)
        {
            Some(e) => *e = entry,
            None => self.entries.push(entry),
        }
        self
    }

    pub fn specs(&self) -> Vec<ProviderSpec> {
        self.entries.iter().map(|(s, _)| *s).collect()
    }

    pub fn link_members(&self) -> Vec<LinkMember> {
        self.entries.iter().map(|(s, _)| s.link).collect()
    }

    /// Builds every adapter from its traffic policy and account settings. An adapter answering
    /// to another name than its entry is refused: steps would go astray.
    pub fn build(&self, client: &reqwest::Client, runtime: &Runtime) -> Result<Providers, String> {
        let mut providers = Providers::default();
        for (spec, build) in &self.entries {
            let name = spec.target.as_str();
            let ctx = BuildContext {
                client,
                runtime,
                traffic: runtime.traffic(name),
                section: runtime
                    .settings
                    .providers
                    .section(name)
                    .and_then(|s| s.account.as_ref())
                    .map(crate::settings::Account::json),
            };
            let adapter = build(&ctx).map_err(|e| format!("provider {}: {e}", spec.target))?;
            if adapter.target() != spec.target {
                return Err(format!(
                    "provider {}: its adapter answers to {}",
                    spec.target,
                    adapter.target()
                ));
            }
            providers = providers.with(*spec, adapter);
        }
        Ok(providers)
    }
}

/// The built adapters, in registry order.
#[derive(Clone, Default)]
pub struct Providers {
    specs: Vec<ProviderSpec>,
    members: Vec<LinkMember>,
    adapters: Vec<Arc<dyn ProviderAdapter>>,
}

impl Providers {
    /// Adds (or replaces) an adapter built elsewhere, e.g. a benchmark's.
    pub fn with(mut self, spec: ProviderSpec, adapter: Arc<dyn ProviderAdapter>) -> Self {
        spec.target.register();
        match self.specs.iter().position(|s| s.target == spec.target) {
            Some(i) => {
                self.specs[i] = spec;
                self.members[i] = spec.link;
                self.adapters[i] = adapter;
            }
            None => {
                self.specs.push(spec);
                self.members.push(spec.link);
                self.adapters.push(adapter);
            }
        }
        self
    }

    pub fn get(&self, target: Target) -> Option<&Arc<dyn ProviderAdapter>> {
        let i = self.specs.iter().position(|s| s.target == target)?;
        self.adapters.get(i)
    }

    pub fn specs(&self) -> &[ProviderSpec] {
        &self.specs
    }

    pub fn targets(&self) -> impl Iterator<Item = Target> + '_ {
        self.specs.iter().map(|s| s.target)
    }

    pub fn link_members(&self) -> &[LinkMember] {
        &self.members
    }
}
