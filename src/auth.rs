//! Caller authentication: `Authorization: Bearer <token>`, matched by SHA-256 against
//! `[[auth.callers]]` in constant time.

use crate::error::ApiError;
use crate::settings::CallerSettings;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub const SCOPE_WRITE: &str = "profile:write";
pub const SCOPE_READ: &str = "profile:read";
pub const SCOPE_OPERATE: &str = "changes:operate";

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    token_sha256: [u8; 32],
    scopes: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Callers(Arc<Vec<Entry>>);

impl Callers {
    /// Entries whose hash does not decode were refused by `Settings::validate`; they are skipped.
    pub fn new(settings: &[CallerSettings]) -> Self {
        let entries = settings
            .iter()
            .filter_map(|c| {
                let bytes = hex::decode(&c.token_sha256).ok()?;
                Some(Entry {
                    name: c.name.clone(),
                    token_sha256: bytes.try_into().ok()?,
                    scopes: c.scopes.clone(),
                })
            })
            .collect();
        Self(Arc::new(entries))
    }

    pub fn authenticate(&self, token: &str) -> Option<Caller> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every entry is compared, so timing does not reveal which (or whether one) matched early.
        let mut found = None;
        for e in self.0.iter() {
            if bool::from(e.token_sha256.ct_eq(&presented)) {
                found = Some(e);
            }
        }
        found.map(|e| Caller {
            name: e.name.clone(),
            scopes: e.scopes.clone(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    scopes: Vec<String>,
}

impl Caller {
    /// An empty scope list grants everything (a single trusted internal app).
    pub fn require(&self, scope: &'static str) -> Result<(), ApiError> {
        if self.scopes.is_empty() || self.scopes.iter().any(|s| s == scope) {
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
        let caller = callers.authenticate(token).ok_or(ApiError::Unauthorized)?;
        tracing::Span::current().record("caller", caller.name.as_str());
        crate::limits::rate::admit(parts, &caller.name)?;
        Ok(caller)
    }
}

pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
