//! Settings: compiled-in defaults, then an optional TOML file, then `PROFILE_GATEWAY__SECTION__KEY`
//! environment variables (last wins). `DATABASE_URL` is honoured as well, below the prefixed variable.

use crate::secret::Secret;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub upstream: UpstreamSettings,
    pub juspay: JuspaySettings,
    pub razorpay: RazorpaySettings,
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
}

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
    /// Largest upstream response body read; a larger one ends the read and drops the connection.
    /// The `all` default for every provider.
    pub max_response_bytes: usize,
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
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RazorpaySettings {
    pub base_url: Option<String>,
    pub key_id: Option<String>,
    pub key_secret: Option<Secret>,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub callers: Vec<CallerSettings>,
    /// Issuers whose signed JWTs identify callers (workload identity) or end users (assertions).
    #[serde(default)]
    pub issuers: Vec<IssuerSettings>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerSettings {
    pub name: String,
    /// Hex SHA-256 of the bearer token: the plaintext token never sits in configuration. A caller
    /// has either this or (`issuer`, `subject`).
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// With `subject`: the caller presents a JWT of this issuer (an `auth.issuers[].issuer`).
    #[serde(default)]
    pub issuer: Option<String>,
    /// The JWT `sub`, e.g. `system:serviceaccount:checkout:checkout-app`.
    #[serde(default)]
    pub subject: Option<String>,
    /// Required and non-empty; `["*"]` grants every scope.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Every PATCH (and, with `assert_reads`, every read of a user) must carry a `User-Assertion`
    /// JWT of `user_assertion_issuer` for the user in the path.
    #[serde(default)]
    pub require_user_assertion: bool,
    #[serde(default)]
    pub user_assertion_issuer: Option<String>,
    #[serde(default)]
    pub assert_reads: bool,
    /// The assertion claim that must equal `{user}` (default `sub`).
    #[serde(default)]
    pub user_claim: Option<String>,
    /// Longest accepted assertion lifetime (`exp - iat`), default 300 s.
    #[serde(default)]
    pub max_assertion_age_s: Option<u64>,
    /// Requests per second this caller may make on each replica (token bucket refill); unset
    /// means `limits.rate_per_s`, and no limit when that is unset too.
    #[serde(default)]
    pub rate_per_s: Option<f64>,
    /// Bucket size: requests the caller may make at once after being idle.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Where this caller's outcome webhooks go (Standard Webhooks); https outside sandbox mode
    /// unless `upstream.allow_plain_http`. Unset: no webhooks.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// A file holding the signing secret `whsec_<base64>` (two, whitespace-separated, while
    /// rotating: each message is signed with both). Read at start.
    #[serde(default)]
    pub webhook_secret_file: Option<std::path::PathBuf>,
    /// Which events to send (`change.applied`, `change.partially_applied`, `change.failed`,
    /// `change.step_unknown`); unset: all.
    #[serde(default)]
    pub webhook_events: Option<Vec<String>>,
    /// The secret itself, only ever set by `serve --sandbox` (the published demo secret).
    #[serde(skip)]
    pub webhook_secret: Option<Secret>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSettings {
    /// The `iss` claim, exactly, e.g. `https://kubernetes.default.svc.cluster.local`.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// Where the JSON Web Key Set is fetched (https, or http on loopback for tests)...
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// ...trusting this PEM CA bundle besides the system roots (a cluster's private CA).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// A file whose contents are sent as a bearer token when fetching the keys, re-read on every
    /// fetch (Kubernetes: the pod's own projected ServiceAccount token).
    #[serde(default)]
    pub jwks_bearer_token_file: Option<std::path::PathBuf>,
    /// Or a local JWKS file (re-read on the same schedule).
    #[serde(default)]
    pub jwks_file: Option<std::path::PathBuf>,
    /// Subset of RS256, ES256, EdDSA (the default: all three). Never `none` or HMAC.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway_s")]
    pub leeway_s: u64,
    /// How often the keys are fetched again.
    #[serde(default = "default_refresh_interval_s")]
    pub refresh_interval_s: u64,
    /// An unknown `kid` fetches the keys at once, but at most once per this many seconds.
    #[serde(default = "default_min_refresh_s")]
    pub min_refresh_s: u64,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}
fn default_leeway_s() -> u64 {
    30
}
fn default_refresh_interval_s() -> u64 {
    300
}
fn default_min_refresh_s() -> u64 {
    10
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesSettings {
    /// 32 bytes, base64: encrypts the values a pending change still has to send.
    pub encryption_key: Option<Secret>,
    pub encryption_key_id: String,
    /// Older keys still needed to open payloads sealed before a rotation: `id:base64,id:base64`.
    pub previous_encryption_keys: Option<Secret>,
    /// Attempts per step in all (in the request and in the background) before it fails finally.
    pub max_attempts: u32,
    /// Attempts per step made while the caller waits; the rest run in the background.
    pub in_request_attempts: u32,
    /// Exponential backoff with full jitter: a retry waits rand(0, min(cap, base * 2^n)).
    pub retry_base_ms: u64,
    pub retry_cap_ms: u64,
    /// Per-provider retry budget: retries may add at most this fraction of first attempts...
    pub retry_budget_ratio: f64,
    /// ...plus this many retries per second, so a quiet provider can still be retried.
    pub retry_budget_min_per_sec: f64,
    /// Consecutive retryable failures that open a provider's circuit breaker.
    pub breaker_failure_threshold: u32,
    /// How long an open breaker fails fast before letting one probe through.
    pub breaker_open_ms: u64,
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

const DEFAULTS: &str = r#"
[server]
listen = "0.0.0.0:8080"
body_limit_bytes = 16384
shutdown_grace_ms = 20000
header_read_timeout_ms = 10000
body_read_timeout_ms = 10000
idle_timeout_ms = 60000
max_connections = 4096
shutdown_delay_ms = 5000

[database]
url = "postgres://postgres@127.0.0.1:5432/profile_gateway"
max_connections = 16
acquire_timeout_ms = 2000
migrate_on_start = false
max_batch = 64
batch_linger_ms = 1
health_check_interval_ms = 1000
health_unreachable_after_ms = 5000

[upstream]
connect_timeout_ms = 1000
request_deadline_ms = 15000
max_response_bytes = 65536

[juspay]
version = "2023-06-30"
timeout_ms = 5000

[razorpay]
timeout_ms = 5000

[auth]
callers = []

[changes]
encryption_key_id = "k1"
max_attempts = 5
in_request_attempts = 3
retry_base_ms = 100
retry_cap_ms = 10000
retry_budget_ratio = 0.2
retry_budget_min_per_sec = 5.0
breaker_failure_threshold = 5
breaker_open_ms = 5000
lease_ms = 30000
completer_interval_ms = 1000
idempotency_retention_hours = 24
failed_payload_retention_hours = 24
max_pending_per_user = 4
turn_poll_ms = 10000

[audit]
hmac_key_id = "k1"
retention_months = 13

[telemetry]
log_format = "json"
log_level = "info"
propagate_trace_context = true

[webhooks]
poll_interval_ms = 1000
batch_size = 32
max_in_flight_per_receiver = 8
max_connections = 3
attempt_timeout_ms = 10000
max_response_bytes = 4096
retry_base_ms = 5000
retry_cap_ms = 3600000
max_age_hours = 24
pause_after_failures = 10
pause_ms = 300000

[limits]
max_inflight_patches = 1024
max_inflight_reads = 4096
fingerprint_max_age_ms = 86400000
fingerprint_max_future_ms = 300000
"#;

const ENV_PREFIX: &str = "PROFILE_GATEWAY";

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
    /// Loads defaults, then `file`, then the environment given as an iterator (the process
    /// environment in `main`, a fixed map in tests).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SettingsError> {
        Self::load_layers(file.as_slice(), env)
    }

    /// Like [`Settings::load`] with several files, each overriding the ones before it: the
    /// deployment's `gateway.toml` from a ConfigMap, then a `secrets.toml` mounted from a Secret,
    /// so no credential ever has to sit in the environment.
    pub fn load_layers<P: AsRef<Path>>(
        files: &[P],
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SettingsError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        for path in files {
            builder = builder.add_source(
                config::File::from(path.as_ref())
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let env: Vec<(String, String)> = env.into_iter().collect();
        let mut overrides = std::collections::BTreeMap::new();
        let mut unknown = Vec::new();
        for (name, value) in &env {
            if name == "DATABASE_URL" {
                overrides
                    .entry("database.url".to_string())
                    .or_insert(value.clone());
                continue;
            }
            let Some(rest) = name.strip_prefix(&format!("{ENV_PREFIX}__")) else {
                continue;
            };
            let key = rest.to_ascii_lowercase().replace("__", ".");
            if !is_known_key(&key) {
                unknown.push(SettingError {
                    key: name.clone(),
                    problem: format!("unknown setting `{key}`"),
                });
                continue;
            }
            // The prefixed variable beats DATABASE_URL whatever the iteration order.
            overrides.insert(key, value.clone());
        }
        if !unknown.is_empty() {
            return Err(SettingsError::Invalid(unknown));
        }
        for (key, value) in overrides {
            let value = typed_value(&key, value);
            builder = builder
                .set_override(key.as_str(), value)
                .map_err(|e| SettingsError::Load(e.to_string()))?;
        }
        let config = builder
            .build()
            .map_err(|e| SettingsError::Load(e.to_string()))?;
        config
            .try_deserialize::<Settings>()
            .map_err(|e| SettingsError::Load(e.to_string()))
    }

    /// Checks what serde cannot: that a production deployment names its real upstreams, credentials
    /// and keys. In sandbox mode the simulator fills the upstream parts in.
    pub fn validate(&self, sandbox: bool) -> Result<(), SettingsError> {
        let mut errors = Vec::new();
        let mut bad = |key: &str, problem: &str| {
            errors.push(SettingError {
                key: key.to_string(),
                problem: problem.to_string(),
            })
        };
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            bad("server.listen", "must be an address such as 0.0.0.0:8080");
        }
        if let Some(addr) = &self.telemetry.metrics_listen
            && addr.parse::<std::net::SocketAddr>().is_err()
        {
            bad(
                "telemetry.metrics_listen",
                "must be an address such as 0.0.0.0:9090",
            );
        }
        if url::Url::parse(self.database.url.expose()).is_err() {
            bad(
                "database.url",
                "must be a URL such as postgres://user@host:5432/db",
            );
        }
        if !is_date(&self.juspay.version) || self.juspay.version.as_str() < "2019-09-17" {
            bad(
                "juspay.version",
                "must be a date YYYY-MM-DD no older than 2019-09-17",
            );
        }
        for (key, ms) in [
            ("juspay.timeout_ms", self.juspay.timeout_ms),
            ("razorpay.timeout_ms", self.razorpay.timeout_ms),
            (
                "upstream.connect_timeout_ms",
                self.upstream.connect_timeout_ms,
            ),
            (
                "upstream.request_deadline_ms",
                self.upstream.request_deadline_ms,
            ),
        ] {
            if ms == 0 {
                bad(key, "must be greater than 0");
            }
        }
        for (key, url) in [
            ("juspay.base_url", &self.juspay.base_url),
            ("razorpay.base_url", &self.razorpay.base_url),
        ] {
            match url {
                Some(u) if !is_http_url(u) => {
                    bad(key, "must be an http(s) URL such as https://api.juspay.in")
                }
                Some(_) => {}
                None if !sandbox => bad(
                    key,
                    "is required outside sandbox mode (use `serve --sandbox` to try the gateway without credentials)",
                ),
                None => {}
            }
        }
        if !sandbox {
            if self.juspay.api_key.as_ref().is_none_or(Secret::is_empty) {
                bad("juspay.api_key", "is required outside sandbox mode");
            }
            if self.razorpay.key_id.as_deref().unwrap_or("").is_empty() {
                bad("razorpay.key_id", "is required outside sandbox mode");
            }
            if self
                .razorpay
                .key_secret
                .as_ref()
                .is_none_or(Secret::is_empty)
            {
                bad("razorpay.key_secret", "is required outside sandbox mode");
            }
            if self.changes.encryption_key.is_none() {
                bad("changes.encryption_key", "is required outside sandbox mode");
            }
            if self.audit.hmac_key.is_none() {
                bad("audit.hmac_key", "is required outside sandbox mode");
            }
            if self.auth.callers.is_empty() {
                bad(
                    "auth.callers",
                    "at least one caller is required outside sandbox mode",
                );
            }
        }
        for (key, value) in [
            ("changes.encryption_key", &self.changes.encryption_key),
            ("audit.hmac_key", &self.audit.hmac_key),
        ] {
            if let Some(v) = value
                && crate::crypto::decode_key(v).is_err()
            {
                bad(key, "must be 32 bytes, base64-encoded");
            }
        }
        self.validate_limits(sandbox, &mut bad);
        if let Some(addr) = &self.telemetry.metrics_listen
            && addr.parse::<std::net::SocketAddr>().is_err()
        {
            bad(
                "telemetry.metrics_listen",
                "must be an address such as 0.0.0.0:9090",
            );
        }
        if self.database.health_check_interval_ms == 0 {
            bad(
                "database.health_check_interval_ms",
                "must be greater than 0",
            );
        }
        if self.database.max_batch == 0 {
            bad("database.max_batch", "must be at least 1");
        }
        if self.audit.checkpoint_interval_s == 0 {
            bad("audit.checkpoint_interval_s", "must be at least 1");
        }
        if self.audit.retention_months < 12 {
            bad(
                "audit.retention_months",
                "must be at least 12 (PCI DSS 10.5.1 keeps a year of audit history)",
            );
        }
        let c = &self.changes;
        if c.max_attempts == 0 || c.in_request_attempts == 0 {
            bad("changes.max_attempts", "attempt limits must be at least 1");
        }
        if c.idempotency_retention_hours < 24 {
            bad(
                "changes.idempotency_retention_hours",
                "must be at least 24 (callers retry for a day)",
            );
        }
        if !(0.0..=1.0).contains(&c.retry_budget_ratio) {
            bad("changes.retry_budget_ratio", "must be between 0 and 1");
        }
        if c.lease_ms < 1000 {
            bad("changes.lease_ms", "must be at least 1000");
        }
        if let Some(keys) = &c.previous_encryption_keys
            && crate::crypto::parse_key_list(keys).is_err()
        {
            bad(
                "changes.previous_encryption_keys",
                "must be `id:base64key` pairs separated by commas, each key 32 bytes",
            );
        }
        errors.extend(crate::auth::validate_settings(&self.auth));
        errors.extend(crate::webhooks::validate_settings(
            &self.auth.callers,
            sandbox,
            self.upstream.allow_plain_http,
        ));
        self.validate_webhooks(&mut |k: &str, p: &str| {
            errors.push(SettingError {
                key: k.to_string(),
                problem: p.to_string(),
            })
        });
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SettingsError::Invalid(errors))
        }
    }

    fn validate_webhooks(&self, bad: &mut impl FnMut(&str, &str)) {
        let w = &self.webhooks;
        for (key, n) in [
            ("webhooks.poll_interval_ms", w.poll_interval_ms),
            ("webhooks.attempt_timeout_ms", w.attempt_timeout_ms),
            ("webhooks.max_response_bytes", w.max_response_bytes as u64),
            ("webhooks.retry_base_ms", w.retry_base_ms),
            ("webhooks.max_age_hours", w.max_age_hours),
            ("webhooks.pause_ms", w.pause_ms),
        ] {
            if n == 0 {
                bad(key, "must be greater than 0");
            }
        }
        if w.batch_size < 1 {
            bad("webhooks.batch_size", "must be at least 1");
        }
        if w.max_in_flight_per_receiver < 1 {
            bad("webhooks.max_in_flight_per_receiver", "must be at least 1");
        }
        if w.max_connections < 1 {
            bad("webhooks.max_connections", "must be at least 1");
        }
        if w.pause_after_failures < 1 {
            bad("webhooks.pause_after_failures", "must be at least 1");
        }
        if w.retry_cap_ms < w.retry_base_ms {
            bad(
                "webhooks.retry_cap_ms",
                "must be at least webhooks.retry_base_ms",
            );
        }
    }

    /// The settings of issue 14 (limits and hostile peers), checked in one place.
    fn validate_limits(&self, sandbox: bool, bad: &mut impl FnMut(&str, &str)) {
        // The LISTEN connection for turn notifications lives outside the pool, but a pool of one
        // still serialises every request behind the group-commit writer.
        if self.database.max_connections < 2 {
            bad("database.max_connections", "must be at least 2");
        }
        for (key, n) in [
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms,
            ),
            (
                "server.body_read_timeout_ms",
                self.server.body_read_timeout_ms,
            ),
            ("server.idle_timeout_ms", self.server.idle_timeout_ms),
            ("server.max_connections", self.server.max_connections as u64),
            (
                "upstream.max_response_bytes",
                self.upstream.max_response_bytes as u64,
            ),
            (
                "limits.max_inflight_patches",
                self.limits.max_inflight_patches as u64,
            ),
            (
                "limits.max_inflight_reads",
                self.limits.max_inflight_reads as u64,
            ),
            ("changes.turn_poll_ms", self.changes.turn_poll_ms),
        ] {
            if n == 0 {
                bad(key, "must be greater than 0");
            }
        }
        if self.changes.max_pending_per_user < 1 {
            bad("changes.max_pending_per_user", "must be at least 1");
        }
        let rates = std::iter::once((
            "limits".to_string(),
            self.limits.rate_per_s,
            self.limits.burst,
        ))
        .chain(
            self.auth
                .callers
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("auth.callers[{i}]"), c.rate_per_s, c.burst)),
        );
        for (base, rate, burst) in rates {
            if rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
                bad(
                    &format!("{base}.rate_per_s"),
                    "must be a number greater than 0",
                );
            }
            if burst == Some(0) {
                bad(&format!("{base}.burst"), "must be at least 1");
            }
        }
        if let Some(proxy) = &self.upstream.proxy
            && !is_http_url(proxy)
        {
            bad(
                "upstream.proxy",
                "must be an http(s) URL such as http://proxy:3128",
            );
        }
        if !sandbox && !self.upstream.allow_plain_http {
            for (key, url) in [
                ("juspay.base_url", &self.juspay.base_url),
                ("razorpay.base_url", &self.razorpay.base_url),
            ] {
                if let Some(u) = url
                    && is_http_url(u)
                    && !u.to_ascii_lowercase().starts_with("https://")
                {
                    bad(
                        key,
                        "must be https:// outside sandbox mode (the upstream credentials would cross in cleartext); set upstream.allow_plain_http = true to allow it",
                    );
                }
            }
        }
        if !sandbox
            && !self.database.allow_plaintext
            && let Some(why) = crate::db_tls::plaintext_risk(self.database.url.expose())
        {
            bad("database.url", &why);
        }
    }

    /// Settings that are allowed but weaken transport security; `serve` logs each at start and
    /// `check-config` prints them.
    pub fn warnings(&self, sandbox: bool) -> Vec<String> {
        let mut out = Vec::new();
        if sandbox {
            return out;
        }
        for (key, url) in [
            ("juspay.base_url", &self.juspay.base_url),
            ("razorpay.base_url", &self.razorpay.base_url),
        ] {
            if self.upstream.allow_plain_http
                && url
                    .as_deref()
                    .is_some_and(|u| u.to_ascii_lowercase().starts_with("http://"))
            {
                out.push(format!(
                    "{key} is plain http:// (upstream.allow_plain_http = true): credentials and PII cross in cleartext"
                ));
            }
        }
        for (i, c) in self.auth.callers.iter().enumerate() {
            if self.upstream.allow_plain_http
                && c.webhook_url
                    .as_deref()
                    .is_some_and(|u| u.to_ascii_lowercase().starts_with("http://"))
            {
                out.push(format!(
                    "auth.callers[{i}].webhook_url is plain http:// (upstream.allow_plain_http = true): webhook bodies cross in cleartext"
                ));
            }
        }
        if self.database.allow_plaintext
            && crate::db_tls::plaintext_risk(self.database.url.expose()).is_some()
        {
            out.push(
                "database.url may run without TLS (database.allow_plaintext = true)".to_string(),
            );
        }
        out
    }

    pub fn request_deadline(&self) -> Duration {
        Duration::from_millis(self.upstream.request_deadline_ms)
    }
}

fn is_http_url(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
}

fn is_date(s: &str) -> bool {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}

/// Every leaf key of the schema, so a misspelt environment variable fails loudly instead of being
/// silently ignored.
const KNOWN_KEYS: &[&str] = &[
    "server.listen",
    "server.body_limit_bytes",
    "server.shutdown_grace_ms",
    "server.header_read_timeout_ms",
    "server.body_read_timeout_ms",
    "server.idle_timeout_ms",
    "server.max_connections",
    "database.allow_plaintext",
    "upstream.max_response_bytes",
    "upstream.allow_plain_http",
    "upstream.proxy",
    "changes.max_pending_per_user",
    "changes.turn_poll_ms",
    "limits.max_inflight_patches",
    "limits.max_inflight_reads",
    "limits.rate_per_s",
    "limits.burst",
    "limits.fingerprint_max_age_ms",
    "limits.fingerprint_max_future_ms",
    "server.shutdown_delay_ms",
    "database.url",
    "database.max_connections",
    "database.acquire_timeout_ms",
    "database.migrate_on_start",
    "database.max_batch",
    "database.batch_linger_ms",
    "database.health_check_interval_ms",
    "database.health_unreachable_after_ms",
    "upstream.connect_timeout_ms",
    "upstream.request_deadline_ms",
    "juspay.base_url",
    "juspay.api_key",
    "juspay.merchant_id",
    "juspay.version",
    "juspay.timeout_ms",
    "razorpay.base_url",
    "razorpay.key_id",
    "razorpay.key_secret",
    "razorpay.timeout_ms",
    "changes.encryption_key",
    "changes.encryption_key_id",
    "changes.previous_encryption_keys",
    "changes.max_attempts",
    "changes.in_request_attempts",
    "changes.retry_base_ms",
    "changes.retry_cap_ms",
    "changes.retry_budget_ratio",
    "changes.retry_budget_min_per_sec",
    "changes.breaker_failure_threshold",
    "changes.breaker_open_ms",
    "changes.lease_ms",
    "changes.completer_interval_ms",
    "changes.idempotency_retention_hours",
    "changes.failed_payload_retention_hours",
    "audit.hmac_key",
    "audit.hmac_key_id",
    "audit.retention_months",
    "audit.signing_key_file",
    "audit.checkpoint_interval_s",
    "audit.witness_dir",
    "telemetry.log_format",
    "telemetry.log_level",
    "telemetry.metrics_listen",
    "telemetry.propagate_trace_context",
    "webhooks.poll_interval_ms",
    "webhooks.batch_size",
    "webhooks.max_in_flight_per_receiver",
    "webhooks.max_connections",
    "webhooks.attempt_timeout_ms",
    "webhooks.max_response_bytes",
    "webhooks.retry_base_ms",
    "webhooks.retry_cap_ms",
    "webhooks.max_age_hours",
    "webhooks.pause_after_failures",
    "webhooks.pause_ms",
];

fn is_known_key(key: &str) -> bool {
    KNOWN_KEYS.contains(&key)
}

/// Environment values are strings; numeric and boolean settings are converted here so that the
/// error for `PROFILE_GATEWAY__SERVER__BODY_LIMIT_BYTES=lots` names the key.
fn typed_value(key: &str, value: String) -> config::Value {
    let numeric = key.ends_with("_ms")
        || key.ends_with("_bytes")
        || key.ends_with("connections")
        || key.ends_with("_attempts")
        || key.ends_with("_hours")
        || key.ends_with("_months")
        || key.ends_with("_interval_s")
        || key.ends_with("_threshold")
        || key.ends_with("max_batch")
        || key.starts_with("limits.max_inflight_")
        || key.ends_with("max_pending_per_user")
        || key.ends_with("_size")
        || key.ends_with("_failures")
        || key.ends_with("_per_receiver")
        || key.ends_with(".burst");
    if numeric && let Ok(n) = value.parse::<i64>() {
        return config::Value::from(n);
    }
    if (key.ends_with("_ratio") || key.ends_with("_per_sec") || key.ends_with("_per_s"))
        && let Ok(f) = value.parse::<f64>()
    {
        return config::Value::from(f);
    }
    if (key.ends_with("migrate_on_start")
        || key.contains(".allow_")
        || key.ends_with("propagate_trace_context"))
        && let Ok(b) = value.parse::<bool>()
    {
        return config::Value::from(b);
    }
    config::Value::from(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_need_upstreams_outside_sandbox() {
        let s = Settings::load(None, env(&[])).unwrap();
        assert_eq!(s.juspay.version, "2023-06-30");
        assert_eq!(s.juspay.timeout_ms, 5000);
        assert_eq!(s.upstream.request_deadline_ms, 15000);
        assert!(s.validate(true).is_ok());
        let err = s.validate(false).unwrap_err().to_string();
        for key in [
            "juspay.base_url",
            "juspay.api_key",
            "razorpay.base_url",
            "razorpay.key_id",
            "razorpay.key_secret",
            "changes.encryption_key",
            "audit.hmac_key",
            "auth.callers",
        ] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
    }

    #[test]
    fn env_overrides_file_and_database_url_is_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(
            &path,
            "[juspay]\nbase_url = \"https://file.example\"\ntimeout_ms = 100\n",
        )
        .unwrap();
        let s = Settings::load(
            Some(&path),
            env(&[
                ("PROFILE_GATEWAY__JUSPAY__BASE_URL", "https://env.example"),
                ("DATABASE_URL", "postgres://x@db/one"),
            ]),
        )
        .unwrap();
        assert_eq!(s.juspay.base_url.as_deref(), Some("https://env.example"));
        assert_eq!(s.juspay.timeout_ms, 100);
        assert_eq!(s.database.url.expose(), "postgres://x@db/one");

        let s = Settings::load(
            None,
            env(&[
                ("PROFILE_GATEWAY__DATABASE__URL", "postgres://x@db/prefixed"),
                ("DATABASE_URL", "postgres://x@db/plain"),
            ]),
        )
        .unwrap();
        assert_eq!(s.database.url.expose(), "postgres://x@db/prefixed");
    }

    #[test]
    fn unknown_and_malformed_keys_are_named() {
        let err = Settings::load(None, env(&[("PROFILE_GATEWAY__JUSPAY__APIKEY", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("juspay.apikey"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(&path, "[razorpay]\nkey_idd = \"x\"\n").unwrap();
        let err = Settings::load(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("key_idd"), "{err}");

        let s = Settings::load(
            None,
            env(&[
                ("PROFILE_GATEWAY__JUSPAY__BASE_URL", "not a url"),
                ("PROFILE_GATEWAY__JUSPAY__VERSION", "2018-01-01"),
                ("PROFILE_GATEWAY__CHANGES__ENCRYPTION_KEY", "c2hvcnQ="),
            ]),
        )
        .unwrap();
        let err = s.validate(true).unwrap_err().to_string();
        assert!(
            err.contains("juspay.base_url: must be an http(s) URL"),
            "{err}"
        );
        assert!(err.contains("juspay.version"), "{err}");
        assert!(
            err.contains("changes.encryption_key: must be 32 bytes"),
            "{err}"
        );
    }

    fn production(extra: &[(&str, &str)]) -> Result<(), String> {
        let mut pairs = vec![
            ("PROFILE_GATEWAY__JUSPAY__BASE_URL", "https://api.juspay.in"),
            ("PROFILE_GATEWAY__JUSPAY__API_KEY", "k"),
            (
                "PROFILE_GATEWAY__RAZORPAY__BASE_URL",
                "https://api.razorpay.com",
            ),
            ("PROFILE_GATEWAY__RAZORPAY__KEY_ID", "id"),
            ("PROFILE_GATEWAY__RAZORPAY__KEY_SECRET", "secret"),
            (
                "PROFILE_GATEWAY__CHANGES__ENCRYPTION_KEY",
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            ),
            (
                "PROFILE_GATEWAY__AUDIT__HMAC_KEY",
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            ),
        ];
        pairs.extend_from_slice(extra);
        let mut s = Settings::load(None, env(&pairs)).map_err(|e| e.to_string())?;
        s.auth.callers.push(CallerSettings {
            name: "app".into(),
            token_sha256: Some("0".repeat(64)),
            scopes: vec!["profile:write".into()],
            ..Default::default()
        });
        s.validate(false).map_err(|e| e.to_string())
    }

    #[test]
    fn transport_security_and_limits_are_validated() {
        assert_eq!(production(&[]), Ok(()));
        let err = production(&[("PROFILE_GATEWAY__JUSPAY__BASE_URL", "http://api.juspay.in")])
            .unwrap_err();
        assert!(err.contains("juspay.base_url: must be https://"), "{err}");
        assert_eq!(
            production(&[
                ("PROFILE_GATEWAY__JUSPAY__BASE_URL", "http://10.0.0.1:8080"),
                ("PROFILE_GATEWAY__UPSTREAM__ALLOW_PLAIN_HTTP", "true"),
            ]),
            Ok(())
        );
        let err = production(&[(
            "PROFILE_GATEWAY__DATABASE__URL",
            "postgres://gw@db.internal:5432/pg",
        )])
        .unwrap_err();
        assert!(err.contains("database.url: sslmode=prefer"), "{err}");
        for ok in [
            "postgres://gw@db.internal/pg?sslmode=verify-full&sslrootcert=/ca.pem",
            "postgres://gw@127.0.0.1/pg",
        ] {
            assert_eq!(
                production(&[("PROFILE_GATEWAY__DATABASE__URL", ok)]),
                Ok(())
            );
        }
        assert_eq!(
            production(&[
                (
                    "PROFILE_GATEWAY__DATABASE__URL",
                    "postgres://gw@db.internal/pg"
                ),
                ("PROFILE_GATEWAY__DATABASE__ALLOW_PLAINTEXT", "true"),
            ]),
            Ok(())
        );
        let err = production(&[("PROFILE_GATEWAY__DATABASE__MAX_CONNECTIONS", "1")]).unwrap_err();
        assert!(
            err.contains("database.max_connections: must be at least 2"),
            "{err}"
        );
        let err = production(&[
            ("PROFILE_GATEWAY__LIMITS__RATE_PER_S", "0"),
            ("PROFILE_GATEWAY__LIMITS__BURST", "0"),
            ("PROFILE_GATEWAY__CHANGES__MAX_PENDING_PER_USER", "0"),
            ("PROFILE_GATEWAY__SERVER__HEADER_READ_TIMEOUT_MS", "0"),
            ("PROFILE_GATEWAY__UPSTREAM__PROXY", "not a url"),
        ])
        .unwrap_err();
        for key in [
            "limits.rate_per_s",
            "limits.burst",
            "changes.max_pending_per_user",
            "server.header_read_timeout_ms",
            "upstream.proxy",
        ] {
            assert!(err.contains(key), "{key}: {err}");
        }
        // Allowed, but said at start and by check-config.
        let mut s = Settings::load(
            None,
            env(&[
                ("PROFILE_GATEWAY__JUSPAY__BASE_URL", "http://10.0.0.1:8080"),
                ("PROFILE_GATEWAY__UPSTREAM__ALLOW_PLAIN_HTTP", "true"),
                (
                    "PROFILE_GATEWAY__DATABASE__URL",
                    "postgres://gw@db.internal/pg",
                ),
                ("PROFILE_GATEWAY__DATABASE__ALLOW_PLAINTEXT", "true"),
            ]),
        )
        .unwrap();
        let w = s.warnings(false);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("juspay.base_url is plain http://"),
            "{w:?}"
        );
        assert!(
            w[1].starts_with("database.url may run without TLS"),
            "{w:?}"
        );
        s.upstream.allow_plain_http = false;
        s.database.allow_plaintext = false;
        assert!(s.warnings(false).is_empty());
        // Sandbox mode talks to the local simulator over plain HTTP.
        let s = Settings::load(
            None,
            env(&[("PROFILE_GATEWAY__JUSPAY__BASE_URL", "http://127.0.0.1:1")]),
        )
        .unwrap();
        assert!(s.validate(true).is_ok());
        assert!(s.warnings(true).is_empty());
    }

    #[test]
    fn later_config_files_override_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.toml");
        let secrets = dir.path().join("secrets.toml");
        std::fs::write(
            &config,
            "[database]\nurl = \"postgres://app@db/config\"\nmax_connections = 7\n",
        )
        .unwrap();
        std::fs::write(
            &secrets,
            "[database]\nurl = \"postgres://app:pw@db/secret\"\n[razorpay]\nkey_secret = \"rzp\"\n",
        )
        .unwrap();
        let s = Settings::load_layers(&[&config, &secrets], env(&[])).unwrap();
        assert_eq!(s.database.url.expose(), "postgres://app:pw@db/secret");
        assert_eq!(s.database.max_connections, 7);
        assert_eq!(
            s.razorpay.key_secret.as_ref().map(Secret::expose),
            Some("rzp")
        );
        let err = Settings::load_layers(&[config, dir.path().join("missing.toml")], env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.toml"), "{err}");
    }

    #[test]
    fn telemetry_settings_load_from_the_environment_and_are_checked() {
        let s = Settings::load(None, env(&[])).unwrap();
        assert_eq!(s.telemetry.metrics_listen, None);
        assert!(s.telemetry.propagate_trace_context);
        let s = Settings::load(
            None,
            env(&[
                ("PROFILE_GATEWAY__TELEMETRY__METRICS_LISTEN", "0.0.0.0:9090"),
                (
                    "PROFILE_GATEWAY__TELEMETRY__PROPAGATE_TRACE_CONTEXT",
                    "false",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(s.telemetry.metrics_listen.as_deref(), Some("0.0.0.0:9090"));
        assert!(!s.telemetry.propagate_trace_context);
        assert!(s.validate(true).is_ok());
        let s = Settings::load(
            None,
            env(&[("PROFILE_GATEWAY__TELEMETRY__METRICS_LISTEN", "9090")]),
        )
        .unwrap();
        let err = s.validate(true).unwrap_err().to_string();
        assert!(err.contains("telemetry.metrics_listen"), "{err}");
    }

    #[test]
    fn webhook_dispatcher_settings_load_from_the_environment_and_are_checked() {
        let s = Settings::load(None, env(&[])).unwrap();
        assert_eq!(
            (s.webhooks.max_age_hours, s.webhooks.attempt_timeout_ms),
            (24, 10000)
        );
        let s = Settings::load(
            None,
            env(&[
                ("PROFILE_GATEWAY__WEBHOOKS__BATCH_SIZE", "5"),
                ("PROFILE_GATEWAY__WEBHOOKS__MAX_IN_FLIGHT_PER_RECEIVER", "2"),
                ("PROFILE_GATEWAY__WEBHOOKS__MAX_CONNECTIONS", "4"),
                ("PROFILE_GATEWAY__WEBHOOKS__PAUSE_AFTER_FAILURES", "3"),
                ("PROFILE_GATEWAY__WEBHOOKS__MAX_AGE_HOURS", "48"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (
                s.webhooks.batch_size,
                s.webhooks.max_in_flight_per_receiver,
                s.webhooks.max_connections,
                s.webhooks.pause_after_failures,
                s.webhooks.max_age_hours
            ),
            (5, 2, 4, 3, 48)
        );
        assert!(s.validate(true).is_ok());
        let s = Settings::load(
            None,
            env(&[
                ("PROFILE_GATEWAY__WEBHOOKS__BATCH_SIZE", "0"),
                ("PROFILE_GATEWAY__WEBHOOKS__MAX_IN_FLIGHT_PER_RECEIVER", "0"),
                ("PROFILE_GATEWAY__WEBHOOKS__MAX_CONNECTIONS", "0"),
                ("PROFILE_GATEWAY__WEBHOOKS__ATTEMPT_TIMEOUT_MS", "0"),
                ("PROFILE_GATEWAY__WEBHOOKS__RETRY_CAP_MS", "10"),
            ]),
        )
        .unwrap();
        let err = s.validate(true).unwrap_err().to_string();
        for key in [
            "webhooks.batch_size",
            "webhooks.max_in_flight_per_receiver",
            "webhooks.max_connections",
            "webhooks.attempt_timeout_ms",
            "webhooks.retry_cap_ms",
        ] {
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let s = Settings::load(
            None,
            env(&[("PROFILE_GATEWAY__RAZORPAY__KEY_SECRET", "very-secret-value")]),
        )
        .unwrap();
        assert!(!format!("{s:?}").contains("very-secret-value"));
    }
}
