//! The sections of the settings file, one struct each; `#[serde(deny_unknown_fields)]` on every
//! one is what refuses a misspelt key.

use crate::secret::Secret;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: String,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// How long shutdown waits for in-flight changes before giving up on them (the completer of
    /// another replica then finishes them).
    pub shutdown_grace_ms: u64,
    /// A connection must send a request's complete header block within this time.
    pub header_read_timeout_ms: u64,
    /// A request body must arrive completely within this time once its headers did.
    pub body_read_timeout_ms: u64,
    /// A keep-alive connection with no request in flight is closed after this time.
    pub idle_timeout_ms: u64,
    /// Open client connections per replica; further connections wait in the kernel's backlog.
    pub max_connections: usize,
    /// After SIGTERM: how long readiness answers 503 while the listener still accepts, so load
    /// balancers and kube-proxy stop routing here before the door closes.
    pub shutdown_delay_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
    /// Apply pending migrations when `serve` starts. Off by default: in Kubernetes migrations run as
    /// a Job (`profile-gateway migrate`) before the rollout.
    pub migrate_on_start: bool,
    /// Most changes one group-commit write carries (1 turns batching off).
    pub max_batch: usize,
    /// How long a group-commit write waits for more changes to join it once it has one (0: it
    /// goes at once and the next batch gathers while it runs).
    pub batch_linger_ms: u64,
    /// Outside sandbox mode a URL without TLS to a host that is not loopback or a Unix socket is
    /// refused unless this is set.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// How often readiness's background check looks at the database (its own connection, never
    /// one of the request pool's).
    pub health_check_interval_ms: u64,
    /// How long the database may be unreachable, as that check sees it, before readiness says 503.
    pub health_unreachable_after_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    pub connect_timeout_ms: u64,
    /// The overall deadline of one PATCH: after it the caller gets 202 and the change goes on.
    pub request_deadline_ms: u64,
    /// Outside sandbox mode upstream base URLs must be https:// unless this is set.
    #[serde(default)]
    pub allow_plain_http: bool,
    /// An explicit proxy for upstream calls; environment proxies (HTTP_PROXY...) are ignored.
    #[serde(default)]
    pub proxy: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JuspaySettings {
    pub base_url: Option<String>,
    pub api_key: Option<Secret>,
    pub merchant_id: Option<String>,
    /// The `version` header; it pins Juspay's response schema. Wallet updates need >= 2019-09-17.
    pub version: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RazorpaySettings {
    pub base_url: Option<String>,
    pub key_id: Option<String>,
    pub key_secret: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesSettings {
    /// 32 bytes, base64: encrypts the values a pending change still has to send.
    pub encryption_key: Option<Secret>,
    pub encryption_key_id: String,
    /// Older keys still needed to open payloads sealed before a rotation: `id:base64,id:base64`.
    pub previous_encryption_keys: Option<Secret>,
    /// How long a replica owns a change it drives; renewed while it works, taken over after.
    pub lease_ms: u64,
    /// How often each replica's completer looks for changes to finish.
    pub completer_interval_ms: u64,
    /// How long an Idempotency-Key is remembered (at least 24 h).
    pub idempotency_retention_hours: u64,
    /// How long a failed change keeps its sealed payload for an operator retry.
    pub failed_payload_retention_hours: u64,
    /// Unfinished changes one user may have; more are refused with 429.
    pub max_pending_per_user: i64,
    /// How often a change waiting for its turn re-checks without a notification.
    pub turn_poll_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// 32 bytes, base64: keys the HMAC stored beside every masked PII value.
    pub hmac_key: Option<Secret>,
    pub hmac_key_id: String,
    /// Months of audit events kept in the live table (PCI DSS 10.5.1 wants at least 12); older
    /// monthly partitions are detached into the `audit_archive` schema.
    pub retention_months: u32,
    /// Ed25519 private key (PKCS#8 PEM, `openssl genpkey -algorithm ed25519`) that signs the
    /// audit checkpoints; mounted from a Secret, never stored in the database. Unset: no
    /// checkpoints.
    #[serde(default)]
    pub signing_key_file: Option<String>,
    /// Seconds between checkpoints (one per interval across all replicas).
    #[serde(default = "default_checkpoint_interval_s")]
    pub checkpoint_interval_s: u64,
    /// Append-only directory (a write-once bucket mount) that receives every checkpoint.
    #[serde(default)]
    pub witness_dir: Option<String>,
}

fn default_checkpoint_interval_s() -> u64 {
    60
}

/// Per-replica bounds on work in flight and on callers (README "Limits").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSettings {
    /// Writes (PATCH, PUT, POST) served at once; more get 503 overloaded before any work.
    pub max_inflight_patches: usize,
    /// Reads (GET) served at once; probes are never counted.
    pub max_inflight_reads: usize,
    /// Default per-caller rate for callers whose entry names none.
    #[serde(default)]
    pub rate_per_s: Option<f64>,
    #[serde(default)]
    pub burst: Option<u32>,
    /// How old a device `fingerprint_timestamp` may be.
    pub fingerprint_max_age_ms: u64,
    /// How far ahead of this replica's clock it may be.
    pub fingerprint_max_future_ms: u64,
}

/// The outcome-webhook dispatcher that runs in every replica (README "Webhooks").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksSettings {
    /// How often each replica looks for due events (a replica that records an outcome also
    /// wakes its own dispatcher at once).
    pub poll_interval_ms: u64,
    /// Most delivery attempts one replica has in flight at once.
    pub batch_size: i64,
    /// Most attempts in flight at one receiver (all replicas' claims together, give or take two
    /// replicas claiming at the same instant), so one receiver's backlog leaves slots to others.
    pub max_in_flight_per_receiver: i64,
    /// The dispatcher's own database pool (claims and attempt records), apart from the request
    /// pool so deliveries never take connections from requests.
    pub max_connections: u32,
    /// One delivery attempt's whole budget: connect, send, and the answer's status and body.
    pub attempt_timeout_ms: u64,
    /// Most of a receiver's answer that is read; the rest is dropped with the connection.
    pub max_response_bytes: usize,
    /// After a failed attempt the next waits min(cap, base * 2^(n-1)) times a jitter in [1, 1.5).
    pub retry_base_ms: u64,
    pub retry_cap_ms: u64,
    /// How long an event is retried before it is marked failed.
    pub max_age_hours: u64,
    /// Consecutive failed attempts at one receiver that pause it...
    pub pause_after_failures: i32,
    /// ...for this long; then one probe decides whether it resumes.
    pub pause_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `json` (default, for log shippers) or `pretty`.
    pub log_format: String,
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub log_level: String,
    /// Address of the admin listener serving Prometheus metrics at `/metrics` (e.g.
    /// `0.0.0.0:9090`); unset: no metrics listener.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Send the W3C `traceparent` of each upstream attempt to the providers. Global for now: a
    /// provider that refuses unknown headers needs it off for all until per-provider settings
    /// exist.
    pub propagate_trace_context: bool,
}
