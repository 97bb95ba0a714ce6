//! Caller authentication and authorization. A caller presents `Authorization: Bearer <credential>`:
//! either a static token, matched by SHA-256 against `[[auth.callers]]` in constant time, or a JWT
//! of a configured issuer (`[[auth.issuers]]`, e.g. a Kubernetes projected ServiceAccount token),
//! matched by (issuer, subject). Each caller holds explicit scopes; a route names the scope it
//! needs in its extractor, so a caller without it is refused before the body is read.

pub mod assertion;
mod callers;
mod extract;
pub mod jwks;
pub mod jwt;
mod validate;

pub use callers::{Callers, token_sha256};
pub use extract::{Authorized, LinksRead, LinksWrite, NeedsScope, ProfileRead, ProfileWrite};
pub use validate::validate_settings;

use crate::error::ApiError;

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
