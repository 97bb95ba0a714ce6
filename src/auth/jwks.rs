//! The signing keys of each configured issuer: fetched from its JWKS URL (or file), cached,
//! refreshed on an interval and when a token names a key id the cache lacks (at most once per
//! `min_refresh_s`, so unknown-`kid` tokens cannot make the gateway hammer the issuer).

use super::jwt::{self, JwtError, Verified};
use crate::settings::IssuerSettings;
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value, json};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

struct Key {
    kid: Option<String>,
    /// The algorithm the key declares, if any; a token must then use exactly it.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

#[derive(Default)]
struct Cache {
    keys: Arc<Vec<Key>>,
    fetched_at: Option<Instant>,
    fetched_wall: Option<SystemTime>,
    last_error: Option<String>,
}

enum Source {
    Url {
        url: String,
        client: reqwest::Client,
        bearer_file: Option<std::path::PathBuf>,
    },
    File(std::path::PathBuf),
}

pub struct Issuer {
    pub issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway_s: u64,
    source: Source,
    refresh_interval: Duration,
    min_refresh: Duration,
    cache: RwLock<Cache>,
    /// Held while fetching; the instant of the last attempt.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Issuer({})", self.issuer)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("auth.issuers[{index}]: {problem}")]
pub struct IssuerBuildError {
    pub index: usize,
    pub problem: String,
}

impl Issuer {
    fn build(index: usize, s: &IssuerSettings) -> Result<Self, IssuerBuildError> {
        let err = |problem: String| IssuerBuildError { index, problem };
        let source = match (&s.jwks_url, &s.jwks_file) {
            (Some(url), _) => {
                let mut builder = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(5))
                    .redirect(reqwest::redirect::Policy::none());
                if let Some(path) = &s.ca_file {
                    let pem = std::fs::read(path)
                        .map_err(|e| err(format!("ca_file {}: {e}", path.display())))?;
                    let certs = reqwest::Certificate::from_pem_bundle(&pem)
                        .map_err(|e| err(format!("ca_file {}: {e}", path.display())))?;
                    if certs.is_empty() {
                        return Err(err(format!(
                            "ca_file {}: no PEM certificate in it",
                            path.display()
                        )));
                    }
                    for cert in certs {
                        builder = builder.add_root_certificate(cert);
                    }
                }
                Source::Url {
                    url: url.clone(),
                    client: builder.build().map_err(|e| err(e.to_string()))?,
                    bearer_file: s.jwks_bearer_token_file.clone(),
                }
            }
            (None, Some(path)) => Source::File(path.clone()),
            (None, None) => return Err(err("needs jwks_url or jwks_file".into())),
        };
        Ok(Self {
            issuer: s.issuer.clone(),
            audiences: s.audiences.clone(),
            algorithms: s
                .algorithms
                .iter()
                .filter_map(|a| jwt::allowed_algorithm(a))
                .collect(),
            leeway_s: s.leeway_s,
            source,
            refresh_interval: Duration::from_secs(s.refresh_interval_s.max(1)),
            min_refresh: Duration::from_secs(s.min_refresh_s),
            cache: RwLock::new(Cache::default()),
            fetching: tokio::sync::Mutex::new(None),
        })
    }

    /// Cached keys stop counting once no fetch has succeeded for this long: an issuer that cannot
    /// be reached for long is refused rather than trusted on keys it may have revoked.
    fn max_staleness(&self) -> Duration {
        (self.refresh_interval * 3).max(Duration::from_secs(900))
    }

    fn keys(&self) -> Option<Arc<Vec<Key>>> {
        let cache = self.cache.read().expect("issuer cache lock");
        let fresh = cache
            .fetched_at
            .is_some_and(|t| t.elapsed() < self.max_staleness());
        fresh.then(|| Arc::clone(&cache.keys))
    }

    async fn fetch(&self) -> Result<Vec<Key>, String> {
        let body = match &self.source {
            Source::File(path) => {
                std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?
            }
            Source::Url {
                url,
                client,
                bearer_file,
            } => {
                let mut req = client.get(url).header("accept", "application/json");
                if let Some(path) = bearer_file {
                    let token = std::fs::read_to_string(path)
                        .map_err(|e| format!("jwks_bearer_token_file {}: {e}", path.display()))?;
                    req = req.bearer_auth(token.trim());
                }
                let mut resp = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
                if !resp.status().is_success() {
                    return Err(format!("GET {url}: status {}", resp.status()));
                }
                let mut body = Vec::new();
                while let Some(chunk) = resp.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
                    if body.len() + chunk.len() > MAX_JWKS_BYTES {
                        return Err(format!(
                            "GET {url}: key set larger than {MAX_JWKS_BYTES} bytes"
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                body
            }
        };
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| format!("not a JWK set: {e}"))?;
        let keys: Vec<Key> = set
            .keys
            .iter()
            .filter(|k| !matches!(k.common.public_key_use, Some(PublicKeyUse::Encryption)))
            .filter_map(|k| {
                let alg = match k.common.key_algorithm {
                    Some(a) => Some(Algorithm::try_from(a).ok()?),
                    None => None,
                };
                Some(Key {
                    kid: k.common.key_id.clone(),
                    alg,
                    key: DecodingKey::from_jwk(k).ok()?,
                })
            })
            .collect();
        Ok(keys)
    }

    /// Fetches the keys now; `on_demand` (an unknown kid) waits its turn and skips the fetch when
    /// one ran within `min_refresh_s`.
    async fn refresh(&self, on_demand: bool) {
        let mut last = self.fetching.lock().await;
        if on_demand && last.is_some_and(|t| t.elapsed() < self.min_refresh) {
            return;
        }
        *last = Some(Instant::now());
        let result = self.fetch().await;
        let mut cache = self.cache.write().expect("issuer cache lock");
        match result {
            Ok(keys) => {
                tracing::info!(issuer = %self.issuer, keys = keys.len(), on_demand, "issuer keys fetched");
                cache.keys = Arc::new(keys);
                cache.fetched_at = Some(Instant::now());
                cache.fetched_wall = Some(SystemTime::now());
                cache.last_error = None;
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, "cannot fetch the issuer's keys; its tokens are refused while none are current");
                cache.last_error = Some(e);
            }
        }
    }

    fn find<'k>(
        keys: &'k [Key],
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Option<&'k DecodingKey>, JwtError> {
        let candidates: Vec<&Key> = match kid {
            Some(kid) => keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            // Without a kid only an unambiguous set will do.
            None if keys.len() == 1 => keys.iter().collect(),
            None => return Ok(None),
        };
        let Some(key) = candidates.first() else {
            return Ok(None);
        };
        if key.alg.is_some_and(|a| a != alg) || key.key.family() != alg.family() {
            return Err(JwtError::KeyMismatch);
        }
        Ok(Some(&key.key))
    }

    pub async fn verify(&self, token: &str) -> Result<Verified, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(JwtError::AlgorithmNotAllowed);
        }
        let kid = header.kid.as_deref();
        let mut keys = self.keys();
        let found = match &keys {
            Some(k) => Self::find(k, kid, header.alg)?.is_some(),
            None => false,
        };
        if !found {
            self.refresh(true).await;
            keys = self.keys();
        }
        let keys = keys.ok_or(JwtError::KeysUnavailable)?;
        let key = Self::find(&keys, kid, header.alg)?.ok_or(JwtError::UnknownKid)?;
        let validation = jwt::validation(header.alg, &self.issuer, &self.audiences, self.leeway_s);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)?;
        let subject = match data.claims.get("sub") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(JwtError::BadClaim("sub".into())),
        };
        Ok(Verified {
            issuer: self.issuer.clone(),
            subject,
            claims: data.claims,
        })
    }

    /// The issuer's state for readiness detail and operators.
    pub fn status(&self) -> Value {
        let cache = self.cache.read().expect("issuer cache lock");
        let current = cache
            .fetched_at
            .is_some_and(|t| t.elapsed() < self.max_staleness());
        json!({
            "issuer": self.issuer,
            "keys_current": current,
            "keys": if current { cache.keys.len() } else { 0 },
            "last_fetched_at": cache.fetched_wall.map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339()),
            "last_error": cache.last_error,
        })
    }
}

/// Every configured issuer.
#[derive(Debug, Clone, Default)]
pub struct Issuers(Arc<Vec<Arc<Issuer>>>);

impl Issuers {
    pub fn build(settings: &[IssuerSettings]) -> Result<Self, IssuerBuildError> {
        let issuers = settings
            .iter()
            .enumerate()
            .map(|(i, s)| Issuer::build(i, s).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(Arc::new(issuers)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, issuer: &str) -> Option<&Arc<Issuer>> {
        self.0.iter().find(|i| i.issuer == issuer)
    }

    /// Verifies a token of whichever configured issuer its `iss` names; with `expected`, only of
    /// that issuer.
    pub async fn verify(&self, token: &str, expected: Option<&str>) -> Result<Verified, JwtError> {
        let iss = jwt::peek_issuer(token)?;
        if expected.is_some_and(|e| e != iss) {
            return Err(JwtError::WrongIssuer);
        }
        let issuer = self.get(&iss).ok_or(JwtError::UnknownIssuer)?;
        issuer.verify(token).await
    }

    /// Fetches every issuer's keys at once, then again every `refresh_interval_s`, until the
    /// token is cancelled.
    pub fn spawn_refresh(&self, stop: tokio_util::sync::CancellationToken) {
        for issuer in self.0.iter() {
            let issuer = Arc::clone(issuer);
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    issuer.refresh(false).await;
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(issuer.refresh_interval) => {}
                    }
                }
            });
        }
    }

    /// `[{issuer, keys_current, keys, last_fetched_at, last_error}]` for `/health/ready`. An issuer
    /// without current keys does not make the replica unready (token callers and other issuers
    /// still work; every replica would be equally affected), it shows here and in the logs.
    pub fn readiness_detail(&self) -> Value {
        Value::Array(self.0.iter().map(|i| i.status()).collect())
    }
}
