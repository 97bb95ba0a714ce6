//! `[auth]`: who may call, and the issuers whose JWTs identify callers and users.

use crate::secret::Secret;
use serde::Deserialize;

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
