//! A verified end-user assertion, as the checker yields it and the jti store records it.

/// A verified assertion: who the signed-in user is and which assertion said so.
#[derive(Debug, Clone)]
pub struct UserAssertion {
    pub issuer: String,
    pub subject: String,
    pub jti: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}
