//! Shared sandbox state: the upstream data, installed faults, the journal and counters.
//! One mutex guards all of it: handlers are short and synchronous, and one lock keeps "state
//! changed" and "journal says so" consistent for concurrent callers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::faults::{FaultBook, FaultView};
use crate::inbox::Inbox;
use crate::journal::Journal;
use crate::route::Route;
use crate::seed::SeedData;
use crate::signature::WebhookSecret;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteCounters {
    /// Calls received, including rejected and faulted ones.
    pub calls: u64,
    /// Calls that changed state (always 0 for reads).
    pub applied: u64,
    /// Calls on which a fault fired.
    pub faults: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    pub juspay_api_key: String,
    pub juspay_merchant_id: Option<String>,
    pub razorpay_key_id: String,
    pub razorpay_key_secret: String,
    /// Checks the signatures of webhooks the receiver gets.
    pub webhook_secret: Option<Vec<WebhookSecret>>,
}

pub(crate) struct Inner {
    /// Upstream objects; its `faults` member stays empty (faults live in `faults`).
    pub data: SeedData,
    pub faults: FaultBook,
    pub journal: Journal,
    pub counters: BTreeMap<Route, RouteCounters>,
    pub webhooks: Inbox,
}

pub(crate) struct Shared {
    pub creds: Credentials,
    /// What `reset` returns to.
    initial: SeedData,
    inner: Mutex<Inner>,
    /// Flips to true when the sandbox stops, to release hung calls.
    pub shutdown: watch::Receiver<bool>,
}

#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// `seed` must have passed `SeedData::validate`.
    pub(crate) fn new(creds: Credentials, seed: SeedData, shutdown: watch::Receiver<bool>) -> Self {
        let state = AppState(Arc::new(Shared {
            creds,
            initial: seed.clone(),
            inner: Mutex::new(Inner {
                data: SeedData::default(),
                faults: FaultBook::default(),
                journal: Journal::default(),
                counters: BTreeMap::new(),
                webhooks: Default::default(),
            }),
            shutdown,
        }));
        state.lock().load(seed);
        state
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the data half-updated in a way that
        // matters for a simulator, so keep serving rather than poisoning every later call.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Back to the starting seed, no faults, empty journal, zero counters.
    pub(crate) fn reset(&self) {
        let mut inner = self.lock();
        inner.load(self.initial.clone());
        inner.journal.clear();
        inner.counters.clear();
        inner.webhooks.clear();
    }
}

impl Inner {
    /// Replaces the data and the installed faults with the seed's (already validated).
    pub(crate) fn load(&mut self, mut seed: SeedData) {
        self.faults.clear();
        for spec in std::mem::take(&mut seed.faults) {
            // Validated with the seed, so this cannot fail; ignoring keeps load infallible.
            let _ = self.faults.add(spec);
        }
        self.data = seed;
    }

    pub(crate) fn snapshot(&self) -> SeedData {
        let mut seed = self.data.clone();
        seed.faults = self.faults.list().into_iter().map(|v| v.spec).collect();
        seed
    }

    pub(crate) fn counters_by_name(&self) -> BTreeMap<String, RouteCounters> {
        Route::ALL
            .into_iter()
            .map(|r| {
                let c = self.counters.get(&r).copied().unwrap_or_default();
                (r.name().to_owned(), c)
            })
            .collect()
    }

    pub(crate) fn counter(&mut self, route: Route) -> &mut RouteCounters {
        self.counters.entry(route).or_default()
    }

    pub(crate) fn fault_list(&self) -> Vec<FaultView> {
        self.faults.list()
    }
}
