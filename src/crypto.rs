//! The two keyed primitives the gateway needs: AES-256-GCM for values a pending change still has to
//! send, and HMAC-SHA-256 so auditors can find a PII value without it being stored in plain text.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
#[error("key must be 32 bytes, base64-encoded")]
pub struct BadKey;

pub fn decode_key(s: &Secret) -> Result<[u8; 32], BadKey> {
    let bytes = B64.decode(s.expose().trim()).map_err(|_| BadKey)?;
    bytes.try_into().map_err(|_| BadKey)
}

#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    #[error("payload was sealed with key id `{0}`, which this replica does not have")]
    UnknownKey(String),
    #[error("payload is corrupt or was sealed for another change")]
    Corrupt,
}

/// `id:base64,id:base64` as in `changes.previous_encryption_keys`.
pub fn parse_key_list(s: &Secret) -> Result<Vec<(String, [u8; 32])>, BadKey> {
    s.expose()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (id, key) = pair.split_once(':').ok_or(BadKey)?;
            Ok((id.trim().to_string(), decode_key(&Secret::new(key))?))
        })
        .collect()
}

/// Seals change payloads. The key id is stored beside the ciphertext so keys can rotate: a replica
/// keeps the previous keys to open what was sealed before.
#[derive(Clone)]
pub struct PayloadCipher {
    key_id: String,
    keys: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for PayloadCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PayloadCipher(key_id={})", self.key_id)
    }
}

const NONCE_LEN: usize = 12;

impl PayloadCipher {
    pub fn new(key_id: impl Into<String>, key: [u8; 32]) -> Self {
        let key_id = key_id.into();
        Self {
            keys: vec![(key_id.clone(), key)],
            key_id,
        }
    }

    /// Adds keys that only open (never seal): those of earlier rotations.
    pub fn with_previous(mut self, keys: Vec<(String, [u8; 32])>) -> Self {
        self.keys.extend(keys);
        self
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// `aad` binds the ciphertext to its change, so a sealed payload copied onto another change row
    /// does not open.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let cipher = Aes256Gcm::new((&self.keys[0].1).into());
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn open(&self, key_id: &str, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, DecryptError> {
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| id == key_id)
            .ok_or_else(|| DecryptError::UnknownKey(key_id.to_string()))?;
        if sealed.len() < NONCE_LEN {
            return Err(DecryptError::Corrupt);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        Aes256Gcm::new(key.into())
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
            .map_err(|_| DecryptError::Corrupt)
    }
}

/// Keyed hash of a PII value, hex-encoded. Values are normalized by the domain types before they get
/// here, so the same number always hashes the same way.
#[derive(Clone)]
pub struct PiiHasher {
    key_id: String,
    key: [u8; 32],
}

impl std::fmt::Debug for PiiHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PiiHasher(key_id={})", self.key_id)
    }
}

impl PiiHasher {
    pub fn new(key_id: impl Into<String>, key: [u8; 32]) -> Self {
        Self {
            key_id: key_id.into(),
            key,
        }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn hash(&self, value: &str) -> String {
        hmac_hex(&self.key, value)
    }
}

pub fn hmac_hex(key: &[u8], value: &str) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(value.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_payload_opens_only_with_its_key_and_change() {
        let c = PayloadCipher::new("k1", [7u8; 32]);
        let sealed = c.seal(b"{\"mobile_number\":\"9876543210\"}", b"change-1");
        assert!(!sealed.windows(10).any(|w| w == b"9876543210"));
        assert_eq!(
            c.open("k1", &sealed, b"change-1").unwrap(),
            b"{\"mobile_number\":\"9876543210\"}"
        );
        assert!(matches!(
            c.open("k1", &sealed, b"change-2"),
            Err(DecryptError::Corrupt)
        ));
        assert!(matches!(
            c.open("k0", &sealed, b"change-1"),
            Err(DecryptError::UnknownKey(_))
        ));
    }

    #[test]
    fn a_rotated_key_still_opens_what_it_sealed() {
        let old = PayloadCipher::new("k1", [1u8; 32]);
        let sealed = old.seal(b"pending values", b"change-9");
        let keys = parse_key_list(&Secret::new(format!(
            "k1:{}",
            base64::engine::general_purpose::STANDARD.encode([1u8; 32])
        )))
        .unwrap();
        let rotated = PayloadCipher::new("k2", [2u8; 32]).with_previous(keys);
        assert_eq!(rotated.key_id(), "k2", "new payloads use the new key");
        assert_eq!(
            rotated.open("k1", &sealed, b"change-9").unwrap(),
            b"pending values"
        );
        let fresh = rotated.seal(b"x", b"c");
        assert!(old.open("k2", &fresh, b"c").is_err());
        assert!(parse_key_list(&Secret::new("k1:not-base64")).is_err());
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        assert_eq!(
            hmac_hex(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
