//! The configured callers and how a bearer credential finds one: a static token by its SHA-256, a
//! JWT by its (issuer, subject).

use super::{AssertionPolicy, AuthMethod, Caller, jwks, jwt};
use crate::error::ApiError;
use crate::settings::CallerSettings;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

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

pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{SCOPE_LINKS_WRITE, SCOPE_WRITE};

    fn caller(name: &str, token: &str, scopes: &[&str]) -> CallerSettings {
        CallerSettings {
            name: name.into(),
            token_sha256: Some(token_sha256(token)),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
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
