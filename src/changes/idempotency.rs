//! `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header): parsing and the request
//! fingerprint that tells a retry from a different request reusing a key.

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: Vec<u8>,
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

/// SHA-256 over method, path and the canonical body (object keys sorted, no whitespace), so the
/// same JSON sent with other spacing or key order is the same request.
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
