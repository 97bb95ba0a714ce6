//! Caller authentication and authorization. A caller presents `Authorization: Bearer <credential>`:
//! either a static token, matched by SHA-256 against `[[auth.callers]]` in constant time, or a JWT
//! of a configured issuer (`[[auth.issuers]]`, e.g. a Kubernetes projected ServiceAccount token),
//! matched by (issuer, subject). Each caller holds explicit scopes; a route names the scope it
//! needs in its extractor, so a caller without it is refused before the body is read.

pub mod assertion;
pub mod jwks;
pub mod jwt;

use crate::error::ApiError;
use crate::settings::SettingError;
use crate::settings::{AuthSettings, CallerSettings};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub const SCOPE_WRITE: &str = "profile:write";
pub const SCOPE_READ: &str = "profile:read";
pub const SCOPE_OPERATE: &str = "changes:operate";
pub const SCOPE_LINKS_READ: &str = "links:read";
pub const SCOPE_LINKS_WRITE: &str = "links:write";
/// Every scope; must be written explicitly.
pub const SCOPE_ALL: &str = "*";

/// Every scope a caller may be given (README, "Scopes").
pub const SCOPES: &[&str] = &[
    SCOPE_WRITE,
    SCOPE_READ,
    SCOPE_LINKS_READ,
    SCOPE_LINKS_WRITE,
    SCOPE_OPERATE,
    SCOPE_ALL,
];

/// How a caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    Token,
    Jwt { issuer: String, subject: String },
}

impl AuthMethod {
    /// `token` or `jwt:{issuer}`, as the change log records it.
    pub fn label(&self) -> String {
        match self {
            AuthMethod::Token => "token".into(),
            AuthMethod::Jwt { issuer, .. } => format!("jwt:{issuer}"),
        }
    }

    pub fn subject(&self) -> Option<&str> {
        match self {
            AuthMethod::Token => None,
            AuthMethod::Jwt { subject, .. } => Some(subject),
        }
    }
}

/// What a caller must show for the end user it acts for.
#[derive(Debug, Clone)]
pub struct AssertionPolicy {
    pub issuer: String,
    pub assert_reads: bool,
    pub user_claim: String,
    pub max_age_s: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    token_sha256: Option<[u8; 32]>,
    jwt: Option<(String, String)>,
    scopes: Vec<String>,
    assertion: Option<AssertionPolicy>,
}

#[derive(Debug, Clone, Default)]
pub struct Callers {
    entries: Arc<Vec<Entry>>,
    pub issuers: jwks::Issuers,
}

impl Callers {
    /// Entries `validate_settings` refused cannot reach here (the start stops); a malformed hash
    /// is skipped rather than trusted.
    pub fn new(settings: &[CallerSettings]) -> Self {
        Self::with_issuers(settings, jwks::Issuers::default())
    }

    pub fn with_issuers(settings: &[CallerSettings], issuers: jwks::Issuers) -> Self {
        let entries = settings
            .iter()
            .map(|c| Entry {
                name: c.name.clone(),
                token_sha256: c
                    .token_sha256
                    .as_deref()
                    .and_then(|h| hex::decode(h).ok())
                    .and_then(|b| b.try_into().ok()),
                jwt: c.issuer.clone().zip(c.subject.clone()),
                scopes: c.scopes.clone(),
                assertion: c.require_user_assertion.then(|| AssertionPolicy {
                    issuer: c.user_assertion_issuer.clone().unwrap_or_default(),
                    assert_reads: c.assert_reads,
                    user_claim: c.user_claim.clone().unwrap_or_else(|| "sub".into()),
                    max_age_s: c.max_assertion_age_s.unwrap_or(300),
                }),
            })
            .collect();
        Self {
            entries: Arc::new(entries),
            issuers,
        }
    }

    fn caller(e: &Entry, auth: AuthMethod) -> Caller {
        Caller {
            name: e.name.clone(),
            scopes: e.scopes.clone(),
            auth,
            assertion: e.assertion.clone(),
        }
    }

    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every entry is compared, so timing does not reveal which (or whether one) matched early.
        let mut found = None;
        for e in self.entries.iter() {
            if let Some(h) = &e.token_sha256
                && bool::from(h.ct_eq(&presented))
            {
                found = Some(e);
            }
        }
        found.map(|e| Self::caller(e, AuthMethod::Token))
    }

    /// A bearer credential: a JWT when it parses as one and issuers are configured, else a token.
    pub async fn authenticate_bearer(&self, credential: &str) -> Result<Caller, ApiError> {
        if self.issuers.is_empty() || !jwt::looks_like_jwt(credential) {
            return self.authenticate(credential).ok_or(ApiError::Unauthorized);
        }
        let verified = self
            .issuers
            .verify(credential, None)
            .await
            .map_err(|e| ApiError::UnauthorizedBecause(e.to_string()))?;
        let subject = verified
            .subject
            .clone()
            .ok_or_else(|| ApiError::UnauthorizedBecause("the token has no `sub` claim".into()))?;
        self.entries
            .iter()
            .find(|e| {
                e.jwt
                    .as_ref()
                    .is_some_and(|(i, s)| *i == verified.issuer && *s == subject)
            })
            .map(|e| {
                Self::caller(
                    e,
                    AuthMethod::Jwt {
                        issuer: verified.issuer.clone(),
                        subject: subject.clone(),
                    },
                )
            })
            .ok_or_else(|| {
                ApiError::UnauthorizedBecause(
                    "the token is valid but its subject is not a caller configured for its issuer in auth.callers".into(),
                )
            })
    }
}

#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    scopes: Vec<String>,
    pub auth: AuthMethod,
    pub assertion: Option<AssertionPolicy>,
}

impl Caller {
    pub fn require(&self, scope: &'static str) -> Result<(), ApiError> {
        if self.scopes.iter().any(|s| s == scope || s == SCOPE_ALL) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(scope))
        }
    }
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Callers: axum::extract::FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let callers = <Callers as axum::extract::FromRef<S>>::from_ref(state);
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // The scheme name is case-insensitive (RFC 9110 section 11.1).
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        let caller = callers.authenticate_bearer(token).await?;
        tracing::Span::current().record("caller", caller.name.as_str());
        crate::limits::rate::admit(parts, &caller.name)?;
        Ok(caller)
    }
}

/// A scope a route needs, as a type, so the route's extractor list states it.
pub trait NeedsScope {
    const SCOPE: &'static str;
}

macro_rules! scope_marker {
    ($name:ident, $scope:expr) => {
        pub struct $name;
        impl NeedsScope for $name {
            const SCOPE: &'static str = $scope;
        }
    };
}
scope_marker!(ProfileWrite, SCOPE_WRITE);
scope_marker!(ProfileRead, SCOPE_READ);
scope_marker!(LinksRead, SCOPE_LINKS_READ);
scope_marker!(LinksWrite, SCOPE_LINKS_WRITE);

/// An authenticated caller holding scope `N`. Extracted from the head alone and listed before
/// the body extractor, so a caller without the scope gets 403 before any body is read or judged.
pub struct Authorized<N: NeedsScope>(pub Caller, pub std::marker::PhantomData<N>);

impl<S, N> FromRequestParts<S> for Authorized<N>
where
    S: Send + Sync,
    Callers: axum::extract::FromRef<S>,
    N: NeedsScope,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require(N::SCOPE)?;
        Ok(Self(caller, std::marker::PhantomData))
    }
}

pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The start-up checks of `[auth]`: every problem named by its key, so a typo in a scope or a
/// copied caller entry stops the start instead of granting something unintended.
pub fn validate_settings(auth: &AuthSettings) -> Vec<SettingError> {
    let mut errors = Vec::new();
    let mut bad = |key: String, problem: String| errors.push(SettingError { key, problem });
    let mut names = HashSet::new();
    let mut hashes = HashSet::new();
    let mut subjects = HashSet::new();
    let issuer_names: Vec<&str> = auth.issuers.iter().map(|i| i.issuer.as_str()).collect();
    for (i, caller) in auth.callers.iter().enumerate() {
        let key = |field: &str| format!("auth.callers[{i}].{field}");
        if caller.name.trim().is_empty() {
            bad(key("name"), "must not be empty".into());
        } else if !names.insert(caller.name.as_str()) {
            bad(
                key("name"),
                format!("duplicate caller name `{}`", caller.name),
            );
        }
        match (&caller.token_sha256, &caller.issuer, &caller.subject) {
            (Some(hash), None, None) => {
                let hex_ok = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
                if !hex_ok {
                    bad(
                        key("token_sha256"),
                        "must be the 64-hex-digit SHA-256 of the token".into(),
                    );
                } else if !hashes.insert(hash.to_ascii_lowercase()) {
                    bad(
                        key("token_sha256"),
                        "duplicate token hash: another caller has the same token".into(),
                    );
                }
            }
            (None, Some(issuer), Some(subject)) => {
                if !issuer_names.contains(&issuer.as_str()) {
                    bad(
                        key("issuer"),
                        format!("`{issuer}` is not an auth.issuers[].issuer"),
                    );
                }
                if subject.is_empty() {
                    bad(key("subject"), "must not be empty".into());
                } else if !subjects.insert((issuer.as_str(), subject.as_str())) {
                    bad(
                        key("subject"),
                        "duplicate (issuer, subject): another caller has the same identity".into(),
                    );
                }
            }
            _ => bad(
                key("token_sha256"),
                "a caller needs exactly one of token_sha256 or (issuer and subject)".into(),
            ),
        }
        if caller.scopes.is_empty() {
            bad(
                key("scopes"),
                format!(
                    "must list at least one scope (one of {}; \"*\" grants every scope)",
                    SCOPES.join(", ")
                ),
            );
        }
        let mut seen = HashSet::new();
        for (j, scope) in caller.scopes.iter().enumerate() {
            if !SCOPES.contains(&scope.as_str()) {
                bad(
                    format!("auth.callers[{i}].scopes[{j}]"),
                    format!("unknown scope `{scope}` (known: {})", SCOPES.join(", ")),
                );
            } else if !seen.insert(scope.as_str()) {
                bad(
                    format!("auth.callers[{i}].scopes[{j}]"),
                    format!("duplicate scope `{scope}`"),
                );
            }
        }
        if caller.require_user_assertion {
            match &caller.user_assertion_issuer {
                Some(iss) if issuer_names.contains(&iss.as_str()) => {}
                Some(iss) => bad(
                    key("user_assertion_issuer"),
                    format!("`{iss}` is not an auth.issuers[].issuer"),
                ),
                None => bad(
                    key("user_assertion_issuer"),
                    "is required with require_user_assertion = true".into(),
                ),
            }
            if caller.max_assertion_age_s == Some(0) {
                bad(key("max_assertion_age_s"), "must be greater than 0".into());
            }
        } else if caller.user_assertion_issuer.is_some() || caller.assert_reads {
            bad(
                key("require_user_assertion"),
                "user_assertion_issuer and assert_reads need require_user_assertion = true".into(),
            );
        }
    }
    let mut seen = HashSet::new();
    for (i, issuer) in auth.issuers.iter().enumerate() {
        let key = |field: &str| format!("auth.issuers[{i}].{field}");
        if issuer.issuer.is_empty() {
            bad(key("issuer"), "must not be empty".into());
        } else if !seen.insert(issuer.issuer.as_str()) {
            bad(
                key("issuer"),
                format!("duplicate issuer `{}`", issuer.issuer),
            );
        }
        if issuer.audiences.is_empty() || issuer.audiences.iter().any(String::is_empty) {
            bad(
                key("audiences"),
                "must list the audiences the gateway accepts (tokens must be audience-bound)"
                    .into(),
            );
        }
        match (&issuer.jwks_url, &issuer.jwks_file) {
            (Some(url), None) => {
                let ok = url::Url::parse(url).is_ok_and(|u| {
                    u.scheme() == "https"
                        || (u.scheme() == "http"
                            && u.host_str().is_some_and(|h| {
                                h == "localhost" || h.starts_with("127.") || h == "[::1]"
                            }))
                });
                if !ok {
                    bad(
                        key("jwks_url"),
                        "must be an https URL (http only on loopback)".into(),
                    );
                }
            }
            (None, Some(_)) => {
                if issuer.ca_file.is_some() || issuer.jwks_bearer_token_file.is_some() {
                    bad(
                        key("ca_file"),
                        "ca_file and jwks_bearer_token_file go with jwks_url".into(),
                    );
                }
            }
            _ => bad(
                key("jwks_url"),
                "an issuer needs exactly one of jwks_url or jwks_file".into(),
            ),
        }
        if issuer.algorithms.is_empty() {
            bad(key("algorithms"), "must list at least one algorithm".into());
        }
        for (j, alg) in issuer.algorithms.iter().enumerate() {
            if jwt::allowed_algorithm(alg).is_none() {
                bad(
                    format!("auth.issuers[{i}].algorithms[{j}]"),
                    format!("`{alg}` is not allowed (RS256, ES256 or EdDSA; never none or HMAC)"),
                );
            }
        }
        if issuer.refresh_interval_s == 0 {
            bad(key("refresh_interval_s"), "must be greater than 0".into());
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::IssuerSettings;

    fn caller(name: &str, token: &str, scopes: &[&str]) -> CallerSettings {
        CallerSettings {
            name: name.into(),
            token_sha256: Some(token_sha256(token)),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn problems(auth: &AuthSettings) -> Vec<String> {
        validate_settings(auth)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn scopes_and_callers_are_checked_at_start() {
        let auth = AuthSettings {
            callers: vec![
                caller("a", "t1", &["profile:write", "profile:wrte"]),
                caller("a", "t2", &[]),
                caller("b", "t1", &["links:read", "links:read"]),
            ],
            issuers: vec![],
        };
        let p = problems(&auth);
        let has = |needle: &str| p.iter().any(|e| e.contains(needle));
        assert!(
            has("auth.callers[0].scopes[1]: unknown scope `profile:wrte`"),
            "{p:?}"
        );
        assert!(
            has("auth.callers[1].name: duplicate caller name `a`"),
            "{p:?}"
        );
        assert!(
            has("auth.callers[1].scopes: must list at least one scope"),
            "{p:?}"
        );
        assert!(
            has("auth.callers[2].token_sha256: duplicate token hash"),
            "{p:?}"
        );
        assert!(has("auth.callers[2].scopes[1]: duplicate scope"), "{p:?}");
        assert_eq!(p.len(), 5, "{p:?}");
    }

    #[test]
    fn jwt_callers_need_a_known_issuer_and_safe_algorithms() {
        let auth = AuthSettings {
            callers: vec![
                CallerSettings {
                    name: "k8s".into(),
                    issuer: Some("https://other".into()),
                    subject: Some("system:serviceaccount:ns:app".into()),
                    scopes: vec!["*".into()],
                    ..Default::default()
                },
                CallerSettings {
                    name: "both".into(),
                    token_sha256: Some(token_sha256("x")),
                    issuer: Some("https://k8s".into()),
                    subject: Some("s".into()),
                    scopes: vec!["*".into()],
                    ..Default::default()
                },
            ],
            issuers: vec![IssuerSettings {
                issuer: "https://k8s".into(),
                audiences: vec![],
                jwks_url: Some("http://example.com/jwks".into()),
                ca_file: None,
                jwks_bearer_token_file: None,
                jwks_file: None,
                algorithms: vec!["HS256".into(), "none".into()],
                leeway_s: 30,
                refresh_interval_s: 300,
                min_refresh_s: 10,
            }],
        };
        let p = problems(&auth).join("\n");
        for needle in [
            "auth.callers[0].issuer: `https://other` is not",
            "auth.callers[1].token_sha256: a caller needs exactly one",
            "auth.issuers[0].audiences",
            "auth.issuers[0].jwks_url: must be an https URL",
            "auth.issuers[0].algorithms[0]: `HS256` is not allowed",
            "auth.issuers[0].algorithms[1]: `none` is not allowed",
        ] {
            assert!(p.contains(needle), "{needle} missing from:\n{p}");
        }
    }

    #[test]
    fn star_is_every_scope_and_nothing_else_is_implied() {
        let callers = Callers::new(&[
            caller("all", "t-all", &["*"]),
            caller("w", "t-w", &["profile:write"]),
        ]);
        let all = callers.authenticate("t-all").unwrap();
        assert!(all.require(SCOPE_LINKS_WRITE).is_ok());
        let w = callers.authenticate("t-w").unwrap();
        assert!(w.require(SCOPE_WRITE).is_ok());
        assert!(w.require(SCOPE_LINKS_WRITE).is_err());
        assert!(callers.authenticate("nope").is_none());
    }
}
