//! JWT verification rules shared by caller tokens and end-user assertions. Each refusal names the
//! rule that failed (the 401's `detail`) and never the token.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

/// The asymmetric algorithms accepted; `none` and HMAC (whose "key" would be the public key, the
/// classic algorithm-confusion attack) never are.
pub fn allowed_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

/// Three base64url parts whose first decodes to a JOSE header: not a static token.
pub fn looks_like_jwt(credential: &str) -> bool {
    let mut parts = credential.split('.');
    let header = parts.next().unwrap_or("");
    parts.clone().count() == 2
        && header.starts_with("eyJ")
        && parts.all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error(
        "the token's algorithm is not allowed for its issuer (RS256, ES256 or EdDSA as configured)"
    )]
    AlgorithmNotAllowed,
    #[error("the token has no `iss` claim")]
    NoIssuer,
    #[error("the token's issuer is not configured in auth.issuers")]
    UnknownIssuer,
    #[error("the token is not from the expected issuer")]
    WrongIssuer,
    #[error("the issuer's signing keys cannot be fetched; its tokens are refused until they can")]
    KeysUnavailable,
    #[error("the token's key id (kid) is not among the issuer's keys")]
    UnknownKid,
    #[error("the token's key does not match its algorithm")]
    KeyMismatch,
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's audience (aud) is not one the gateway accepts")]
    WrongAudience,
    #[error("the token lacks the required claim `{0}`")]
    MissingClaim(String),
    #[error("the token's claim `{0}` is malformed")]
    BadClaim(String),
}

impl From<jsonwebtoken::errors::Error> for JwtError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        match e.kind() {
            ErrorKind::InvalidSignature => JwtError::BadSignature,
            ErrorKind::ExpiredSignature => JwtError::Expired,
            ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            ErrorKind::InvalidAudience => JwtError::WrongAudience,
            ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                JwtError::AlgorithmNotAllowed
            }
            ErrorKind::MissingRequiredClaim(c) => JwtError::MissingClaim(c.clone()),
            ErrorKind::InvalidClaimFormat(c) => JwtError::BadClaim(c.clone()),
            ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => JwtError::KeyMismatch,
            _ => JwtError::Malformed,
        }
    }
}

/// A token whose signature and registered claims held.
#[derive(Debug, Clone)]
pub struct Verified {
    pub issuer: String,
    pub subject: Option<String>,
    pub claims: Map<String, Value>,
}

/// The validation of one issuer's tokens for one algorithm.
pub fn validation(alg: Algorithm, issuer: &str, audiences: &[String], leeway_s: u64) -> Validation {
    let mut v = Validation::new(alg);
    v.algorithms = vec![alg];
    v.set_issuer(&[issuer]);
    v.set_audience(audiences);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.leeway = leeway_s;
    v.validate_exp = true;
    v.validate_nbf = true;
    v
}

/// The `iss` claim read before the signature is checked, only to choose the issuer whose keys
/// will check it.
pub fn peek_issuer(token: &str) -> Result<String, JwtError> {
    #[derive(serde::Deserialize)]
    struct Peek {
        iss: Option<String>,
    }
    let peek: Peek =
        jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|_| JwtError::Malformed)?;
    peek.iss.ok_or(JwtError::NoIssuer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_asymmetric_algorithms_are_allowed() {
        assert!(allowed_algorithm("RS256").is_some());
        assert!(allowed_algorithm("ES256").is_some());
        assert!(allowed_algorithm("EdDSA").is_some());
        for refused in ["none", "HS256", "HS512", "RS384", "PS256", ""] {
            assert!(allowed_algorithm(refused).is_none(), "{refused}");
        }
    }

    #[test]
    fn jwt_shape_is_told_from_static_tokens() {
        assert!(looks_like_jwt("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(!looks_like_jwt("test-token-writer"));
        assert!(!looks_like_jwt("a.b.c"));
        assert!(!looks_like_jwt("eyJ.a.b.c"));
    }
}
