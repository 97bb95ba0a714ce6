//! `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header): parsing and the request
//! fingerprint that tells a retry from a different request reusing a key.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    /// The versioned, keyed fingerprint stored with the key (`Fingerprints::of`).
    pub fingerprint: Vec<u8>,
    /// The same request's fingerprint under the scheme of keys recorded before the keyed one
    /// (version 1, an unkeyed SHA-256), compared only with such keys; never stored.
    pub legacy_fingerprint: Vec<u8>,
}

impl IdempotencyKey {
    /// Whether a stored fingerprint is this request's, whichever version recorded it.
    pub fn matches(&self, stored: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        match stored.first() {
            Some(&FINGERPRINT_V2) if stored.len() == 33 => {
                bool::from(stored.ct_eq(&self.fingerprint))
            }
            // Version 1 had no version byte: 32 bytes of SHA-256.
            _ if stored.len() == 32 => bool::from(stored.ct_eq(&self.legacy_fingerprint)),
            _ => false,
        }
    }
}

/// The first byte of a version-2 fingerprint; version 1 (unkeyed, 32 bytes) had none.
const FINGERPRINT_V2: u8 = 2;
/// Separates the fingerprint key from every other use of `audit.hmac_key`.
const FINGERPRINT_LABEL: &[u8] = b"profile-gateway/idempotency-fingerprint/v2";

/// Fingerprints requests with HMAC-SHA-256 under a key derived from the server's `audit.hmac_key`
/// with its own label: without the key, a stored fingerprint cannot be tested against guesses (a
/// 10-digit mobile number was recovered from the unkeyed hash in 0.05 s).
#[derive(Clone)]
pub struct Fingerprints {
    key: [u8; 32],
}

impl std::fmt::Debug for Fingerprints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fingerprints(..)")
    }
}

impl Fingerprints {
    pub fn new(server_key: &[u8; 32]) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(server_key)
            .expect("HMAC accepts keys of any length");
        mac.update(FINGERPRINT_LABEL);
        Self {
            key: mac.finalize().into_bytes().into(),
        }
    }

    /// The key and both fingerprints of one request.
    pub fn key(
        &self,
        key: String,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> IdempotencyKey {
        IdempotencyKey {
            key,
            fingerprint: self.of(method, path, body),
            legacy_fingerprint: fingerprint(method, path, body),
        }
    }

    /// `[2] || HMAC(key, method \n path \n canonical body)`.
    pub fn of(&self, method: &str, path: &str, body: &serde_json::Value) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC accepts keys of any length");
        mac.update(method.as_bytes());
        mac.update(b"\n");
        mac.update(path.as_bytes());
        mac.update(b"\n");
        mac.update(body.to_string().as_bytes());
        let mut out = Vec::with_capacity(33);
        out.push(FINGERPRINT_V2);
        out.extend_from_slice(&mac.finalize().into_bytes());
        out
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum KeyError {
    Missing,
    Malformed,
}

/// The draft sends the key as a structured-field string (`"abc..."`); a bare token is accepted too.
pub fn parse_key(raw: Option<&str>) -> Result<String, KeyError> {
    let raw = raw.ok_or(KeyError::Missing)?.trim();
    let unquoted = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => inner,
        None if raw.contains('"') => return Err(KeyError::Malformed),
        None => raw,
    };
    let ok = (16..=255).contains(&unquoted.len())
        && unquoted
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(unquoted.to_string())
    } else {
        Err(KeyError::Malformed)
    }
}

/// Version 1: SHA-256 over method, path and the canonical body (object keys sorted, no
/// whitespace), so the same JSON sent with other spacing or key order is the same request. Kept
/// only to recognise retries of keys recorded before version 2, until they are reaped.
pub fn fingerprint(method: &str, path: &str, body: &serde_json::Value) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update(b"\n");
    h.update(path.as_bytes());
    h.update(b"\n");
    // serde_json's map is a BTreeMap (no `preserve_order`), so serialization is canonical.
    h.update(body.to_string().as_bytes());
    h.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys() {
        let k = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(parse_key(Some(&format!("\"{k}\""))).unwrap(), k);
        assert_eq!(parse_key(Some(k)).unwrap(), k);
        assert_eq!(parse_key(None), Err(KeyError::Missing));
        assert_eq!(parse_key(Some("short")), Err(KeyError::Malformed));
        assert_eq!(
            parse_key(Some("\"unterminated-key-123")),
            Err(KeyError::Malformed)
        );
        assert_eq!(
            parse_key(Some("has space in the key 123")),
            Err(KeyError::Malformed)
        );
        assert_eq!(parse_key(Some(&"a".repeat(256))), Err(KeyError::Malformed));
    }

    #[test]
    fn keyed_fingerprint_is_versioned_and_needs_the_key() {
        let body = json!({"mobile_number": "9876543210"});
        let a = Fingerprints::new(&[1u8; 32]);
        let b = Fingerprints::new(&[2u8; 32]);
        let fa = a.of("PATCH", "/profile/u", &body);
        assert_eq!(fa.len(), 33);
        assert_eq!(fa[0], 2);
        assert_ne!(
            fa,
            b.of("PATCH", "/profile/u", &body),
            "another key, another fingerprint"
        );
        assert_ne!(&fa[1..], &fingerprint("PATCH", "/profile/u", &body)[..]);
        let k = a.key("k".into(), "PATCH", "/profile/u", &body);
        assert!(k.matches(&fa));
        assert!(!k.matches(&b.of("PATCH", "/profile/u", &body)));
        // A key recorded before the change (unkeyed, no version byte) still compares.
        assert!(k.matches(&fingerprint("PATCH", "/profile/u", &body)));
        assert!(!k.matches(&fingerprint("PATCH", "/profile/v", &body)));
        assert!(!k.matches(&[]));
    }

    #[test]
    fn fingerprint_ignores_key_order_and_spacing() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": 2, "x": 3}}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"a":{"x":3,"y":2},"b":1}"#).unwrap();
        assert_eq!(
            fingerprint("PATCH", "/profile/u", &a),
            fingerprint("PATCH", "/profile/u", &b)
        );
        assert_ne!(
            fingerprint("PATCH", "/profile/u", &a),
            fingerprint("PATCH", "/profile/v", &a)
        );
        assert_ne!(
            fingerprint("PATCH", "/profile/u", &a),
            fingerprint(
                "PATCH",
                "/profile/u",
                &json!({"b": 2, "a": {"x": 3, "y": 2}})
            )
        );
    }
}
