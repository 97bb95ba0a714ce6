//! Upstream sandbox: a stateful simulator of the Juspay (wallets, customers) and Razorpay (TPAP
//! UPI number) APIs with fault injection, for the quick start, integration tests and benchmarks.
//!
//! It is as strict as the documented upstreams (auth, headers, body encodings, field rules,
//! error status and body shapes), so an adapter that passes against it is right about the wire
//! format. One server on one port serves both providers and the admin API.
//!
//! # Upstream routes
//! Juspay (Basic auth, API key as username, empty password; form-encoded writes):
//! `POST/GET /wallets/{id}`, `POST/GET /customers/{id}` (`{id}` may be the `cst_...` id or the
//! `object_reference_id`), `GET /customers/{id}/wallets`. Wallet updates need `version` >=
//! 2019-09-17. When a merchant id is configured, a different `x-merchantid` is a 401 and a
//! missing one on `/customers` a 400.
//!
//! Razorpay (Basic `key_id:key_secret`, scheme word exactly `Basic`; headers
//! `x-device-fingerprint`, `x-device-fingerprint-timestamp` (unix ms), `x-customer-reference`):
//! `PATCH /v1/upi/tpap/upi_number` (JSON `{upi_number, vpa, action, consent}`),
//! `GET /v1/upi/tpap/upi_number`. Actions: `change_vpa` (sets vpa, status active), `inactivate`,
//! `deregister`, `activate`; a deregistered number accepts no action. Any other path answers 404
//! with an empty body.
//!
//! # Demo data ([`SeedData::demo`]) and credentials ([`SandboxConfig::default`])
//! - Juspay API key `sandbox_juspay_api_key`, merchant id `sandbox_merchant`; Razorpay key
//!   `rzp_sandbox_key` / `rzp_sandbox_secret`.
//! - Juspay customers `cst_demo_alice` (reference `alice`, 91 9876543210, alice@example.com,
//!   Alice Liddell) and `cst_demo_bob` (reference `bob`, 91 9123456780, bob@example.com,
//!   Bob Builder).
//! - Wallets `wlt_demo_alice_paytm` (PAYTM), `wlt_demo_alice_mobikwik` (MOBIKWIK),
//!   `wlt_demo_bob_paytm` (PAYTM), each with its owner's mobile number.
//! - Razorpay customer references `cref_demo_alice` (UPI number 9876543210, mobile,
//!   alice@okaxis, active) and `cref_demo_bob` (912345678, numeric, bob@okhdfc, active).
//!
//! # Admin API (no auth: never expose it beyond the test machine)
//! - `POST /__sandbox/faults` with a [`FaultSpec`] (returns `{"id": N}`), `GET` lists the
//!   installed faults, `DELETE` removes them all.
//! - `GET`/`DELETE /__sandbox/journal`: every upstream call in order ([`JournalEntry`]), with
//!   `authorization` masked.
//! - `GET /__sandbox/counters`: per route `{calls, applied, faults}`.
//! - `GET`/`PUT /__sandbox/state`: the data (and installed faults) as [`SeedData`] JSON; `PUT`
//!   replaces both.
//! - `POST /__sandbox/reset`: the starting seed again, no faults, empty journal, zero counters.
//! - `POST /__sandbox/webhooks`: a webhook receiver that records every message (checking its
//!   Standard Webhooks signature against [`DEMO_WEBHOOK_SECRET`] by default); `GET` lists them,
//!   `DELETE` forgets them.
//!
//! Fault kinds: `latency` (delay, then answer normally), `status` (answer the given status, body
//! and content type verbatim), `reset` (TCP RST, no answer), `hang` (no answer until the client
//! gives up or the sandbox stops), `truncate` (announce more body than sent, then close).
//! Each applies to one route name or `*`, for the next `times` calls and/or a `probability`
//! share of calls. `latency_ms` delays any kind. A fault normally acts before the upstream
//! handles the call (so nothing changes); with `after_apply: true` the call takes effect first
//! and the fault then replaces the answer: an update whose outcome the client cannot know.
//! Faults fire before authentication, as a proxy in front of the real API would.

mod admin;
mod conn;
mod exchange;
mod faults;
mod inbox;
mod journal;
mod juspay;
mod provider;
mod razorpay;
mod route;
mod seed;
mod signature;
mod state;
mod validate;
mod webhooks;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use faults::{FaultKind, FaultSpec, FaultView, FiredFault};
pub use inbox::WebhookReceipt;
pub use journal::JournalEntry;
pub use route::Route;
pub use seed::{
    JuspayCustomer, JuspayWallet, RazorpayCustomer, SeedData, UpiNumber, UpiNumberType, UpiStatus,
};
pub use state::RouteCounters;

use conn::{ConnHandle, SandboxListener};
use state::{AppState, Credentials};

pub const DEMO_JUSPAY_API_KEY: &str = "sandbox_juspay_api_key";
pub const DEMO_JUSPAY_MERCHANT_ID: &str = "sandbox_merchant";
pub const DEMO_RAZORPAY_KEY_ID: &str = "rzp_sandbox_key";
pub const DEMO_RAZORPAY_KEY_SECRET: &str = "rzp_sandbox_secret";
/// The demo caller's webhook signing secret (published: sandbox mode only).
pub const DEMO_WEBHOOK_SECRET: &str = "whsec_cHJvZmlsZS1nYXRld2F5LXNhbmRib3gtd2ViaG9va3M=";

/// How long `shutdown` waits for in-flight calls before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub juspay_api_key: String,
    /// When set, `x-merchantid` is checked (see the module docs).
    pub juspay_merchant_id: Option<String>,
    pub razorpay_key_id: String,
    pub razorpay_key_secret: String,
    pub seed: SeedData,
    /// `whsec_...`: the webhook receiver checks signatures with it (`signature_valid`).
    pub webhook_secret: Option<String>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            juspay_api_key: DEMO_JUSPAY_API_KEY.to_owned(),
            juspay_merchant_id: Some(DEMO_JUSPAY_MERCHANT_ID.to_owned()),
            razorpay_key_id: DEMO_RAZORPAY_KEY_ID.to_owned(),
            razorpay_key_secret: DEMO_RAZORPAY_KEY_SECRET.to_owned(),
            seed: SeedData::demo(),
            webhook_secret: Some(DEMO_WEBHOOK_SECRET.to_owned()),
        }
    }
}

/// A running sandbox. Dropping it stops the server too (without waiting).
pub struct SandboxHandle {
    addr: SocketAddr,
    state: AppState,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

/// Serves the sandbox on `listener` in a background task.
pub async fn spawn(config: SandboxConfig, listener: TcpListener) -> io::Result<SandboxHandle> {
    config
        .seed
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("seed: {e}")))?;
    let addr = listener.local_addr()?;
    let (stop, stopping) = watch::channel(false);
    let webhook_secret = match &config.webhook_secret {
        Some(s) => Some(signature::parse_secrets(s).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("webhook secret {e}"))
        })?),
        None => None,
    };
    let creds = Credentials {
        juspay_api_key: config.juspay_api_key,
        juspay_merchant_id: config.juspay_merchant_id,
        razorpay_key_id: config.razorpay_key_id,
        razorpay_key_secret: config.razorpay_key_secret,
        webhook_secret,
    };
    let state = AppState::new(creds, config.seed, stopping.clone());
    let app = router(state.clone()).into_make_service_with_connect_info::<ConnHandle>();
    let mut signal = stopping;
    let task = tokio::spawn(async move {
        let server =
            axum::serve(SandboxListener(listener), app).with_graceful_shutdown(async move {
                // Also resolves when the handle is dropped (sender gone).
                let _ = signal.wait_for(|stopped| *stopped).await;
            });
        if let Err(e) = server.await {
            tracing::error!(error = %e, "sandbox server failed");
        }
    });
    Ok(SandboxHandle {
        addr,
        state,
        stop,
        task: Some(task),
    })
}

fn router(state: AppState) -> Router {
    Router::new()
        .merge(juspay::router())
        .merge(razorpay::router())
        .merge(admin::router())
        .merge(webhooks::router())
        .fallback(unmatched)
        .with_state(state)
}

async fn unmatched(State(state): State<AppState>, req: Request) -> Response {
    if req.uri().path().starts_with("/__sandbox/") {
        return StatusCode::NOT_FOUND.into_response();
    }
    exchange::serve_unmatched(state, req, StatusCode::NOT_FOUND).await
}

impl SandboxHandle {
    /// `http://127.0.0.1:PORT` (loopback even when bound to the unspecified address).
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn journal(&self) -> Vec<JournalEntry> {
        self.state.lock().journal.entries()
    }

    pub fn clear_journal(&self) {
        self.state.lock().journal.clear();
    }

    /// Where the webhook receiver listens.
    pub fn webhook_url(&self) -> String {
        format!("{}/__sandbox/webhooks", self.base_url())
    }

    /// The webhooks the receiver got, in arrival order.
    pub fn webhooks(&self) -> Vec<WebhookReceipt> {
        self.state.lock().webhooks.entries()
    }

    /// Installs a fault and returns its id.
    ///
    /// # Panics
    /// If the spec is invalid (a test bug); use [`Self::try_add_fault`] to handle that.
    pub fn add_fault(&self, fault: FaultSpec) -> u64 {
        match self.try_add_fault(fault) {
            Ok(id) => id,
            Err(e) => panic!("invalid sandbox fault: {e}"),
        }
    }

    pub fn try_add_fault(&self, fault: FaultSpec) -> Result<u64, String> {
        self.state.lock().faults.add(fault)
    }

    pub fn faults(&self) -> Vec<FaultView> {
        self.state.lock().fault_list()
    }

    pub fn clear_faults(&self) {
        self.state.lock().faults.clear();
    }

    /// Per route name: calls, applied updates, faults fired.
    pub fn counters(&self) -> BTreeMap<String, RouteCounters> {
        self.state.lock().counters_by_name()
    }

    /// The current data, with the installed faults in `faults`.
    pub fn state(&self) -> SeedData {
        self.state.lock().snapshot()
    }

    /// Replaces the data and the installed faults.
    ///
    /// # Panics
    /// If the seed is invalid; use [`Self::try_set_state`] to handle that.
    pub fn set_state(&self, seed: SeedData) {
        if let Err(e) = self.try_set_state(seed) {
            panic!("invalid sandbox state: {e}");
        }
    }

    pub fn try_set_state(&self, seed: SeedData) -> Result<(), String> {
        seed.validate()?;
        self.state.lock().load(seed);
        Ok(())
    }

    /// Starting seed, no faults, empty journal, zero counters.
    pub fn reset(&self) {
        self.state.reset();
    }

    /// Stops accepting, releases hung calls and waits (briefly) for open calls to finish.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err()
        {
            tracing::warn!("sandbox did not stop within the grace period");
        }
    }
}

impl std::fmt::Debug for SandboxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Runs the sandbox alone (the `profile-gateway sandbox` command) until ctrl-c or SIGTERM.
/// Uses the demo credentials; the data comes from `seed_file` (JSON, [`SeedData`]) or the demo set.
pub async fn run_standalone(listen: SocketAddr, seed_file: Option<PathBuf>) -> io::Result<()> {
    let seed = match seed_file {
        Some(path) => SeedData::from_json_file(&path)?,
        None => SeedData::demo(),
    };
    let config = SandboxConfig {
        seed,
        ..SandboxConfig::default()
    };
    let listener = TcpListener::bind(listen).await?;
    let handle = spawn(config, listener).await?;
    tracing::info!(
        base_url = %handle.base_url(),
        juspay_merchant_id = DEMO_JUSPAY_MERCHANT_ID,
        razorpay_key_id = DEMO_RAZORPAY_KEY_ID,
        "sandbox listening with the demo credentials; admin API under /__sandbox/ (never expose it)"
    );
    stop_signal().await?;
    tracing::info!("sandbox stopping");
    handle.shutdown().await;
    Ok(())
}

async fn stop_signal() -> io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
