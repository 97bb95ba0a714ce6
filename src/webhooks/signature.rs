//! Standard Webhooks signatures (standardwebhooks.com): `webhook-signature: v1,<base64>` where the
//! base64 is HMAC-SHA256, keyed with the bytes of a `whsec_<base64>` secret, over
//! `{webhook-id}.{webhook-timestamp}.{body}`. Several secrets (a rotation) give several
//! space-separated signatures, and a receiver accepts any one that matches.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

const PREFIX: &str = "whsec_";
/// The specification's bounds on the key behind `whsec_`.
const MIN_KEY: usize = 24;
const MAX_KEY: usize = 64;

/// One signing key. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(****)")
    }
}

impl WebhookSecret {
    /// `whsec_` followed by the base64 of 24 to 64 bytes.
    pub fn parse(s: &str) -> Result<Self, String> {
        let b64 = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| format!("must start with `{PREFIX}`"))?;
        let key = STANDARD
            .decode(b64)
            .map_err(|_| format!("the part after `{PREFIX}` must be base64"))?;
        if !(MIN_KEY..=MAX_KEY).contains(&key.len()) {
            return Err(format!(
                "the key after `{PREFIX}` must be {MIN_KEY} to {MAX_KEY} bytes (it is {})",
                key.len()
            ));
        }
        Ok(Self(key))
    }

    /// The base64 signature (without `v1,`) of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        STANDARD.encode(self.mac(id, timestamp, body).finalize().into_bytes())
    }

    fn matches(&self, id: &str, timestamp: i64, body: &[u8], signature_b64: &str) -> bool {
        let Ok(presented) = STANDARD.decode(signature_b64) else {
            return false;
        };
        // Constant time, so a forger learns nothing from how fast a guess is refused.
        self.mac(id, timestamp, body)
            .verify_slice(&presented)
            .is_ok()
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// The secrets of a file: one or more `whsec_...`, separated by whitespace (more than one while a
/// secret is being rotated: the receiver accepts either).
pub fn parse_secrets(text: &str) -> Result<Vec<WebhookSecret>, String> {
    let secrets: Vec<WebhookSecret> = text
        .split_whitespace()
        .map(WebhookSecret::parse)
        .collect::<Result<_, _>>()?;
    if secrets.is_empty() {
        return Err(format!("holds no `{PREFIX}...` secret"));
    }
    Ok(secrets)
}

/// The `webhook-signature` header value for `secrets`.
pub fn header(secrets: &[WebhookSecret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| format!("v1,{}", s.sign(id, timestamp, body)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// `webhook-timestamp` is not a number of seconds.
    BadTimestamp,
    /// Further from now than the tolerance (a replay, or a clock that is off).
    Stale { age_s: i64 },
    /// No `v1,` signature in the header matches.
    Mismatch,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::BadTimestamp => f.write_str("webhook-timestamp is not UNIX seconds"),
            VerifyError::Stale { age_s } => write!(
                f,
                "webhook-timestamp is {age_s} s away from now, beyond the tolerance"
            ),
            VerifyError::Mismatch => {
                f.write_str("no v1 signature in webhook-signature matches the body and secret")
            }
        }
    }
}

/// Checks a received message as a Standard Webhooks receiver does: the timestamp within
/// `tolerance_s` of `now` (unless `tolerance_s` is `None`), then any `v1,` signature of the header
/// matching any of `secrets`.
pub fn verify(
    secrets: &[WebhookSecret],
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_s: Option<i64>,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    if let Some(tolerance) = tolerance_s
        && (now - ts).abs() > tolerance
    {
        return Err(VerifyError::Stale { age_s: now - ts });
    }
    let matched = signature_header
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|sig| secrets.iter().any(|k| k.matches(id, ts, body, sig)));
    if matched {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of the Standard Webhooks reference libraries' test suites.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_reference_example() {
        let s = parse_secrets(SECRET).unwrap();
        assert_eq!(header(&s, ID, TS, BODY), SIGNATURE);
        assert_eq!(
            verify(&s, ID, "1614265330", SIGNATURE, BODY, TS + 10, Some(300)),
            Ok(())
        );
    }

    #[test]
    fn refuses_tampering_staleness_and_malformed_secrets() {
        let s = parse_secrets(SECRET).unwrap();
        let other = br#"{"test": 2432232315}"#;
        assert_eq!(
            verify(&s, ID, "1614265330", SIGNATURE, other, TS, Some(300)),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&s, "msg_other", "1614265330", SIGNATURE, BODY, TS, None),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(&s, ID, "1614265330", SIGNATURE, BODY, TS + 301, Some(300)),
            Err(VerifyError::Stale { age_s: 301 })
        );
        assert_eq!(
            verify(&s, ID, "soon", SIGNATURE, BODY, TS, None),
            Err(VerifyError::BadTimestamp)
        );
        // A rotation: either secret's signature is accepted, and both are sent.
        let rotated =
            parse_secrets(&format!("whsec_{}\n{SECRET}\n", STANDARD.encode([7u8; 32]))).unwrap();
        let both = header(&rotated, ID, TS, BODY);
        assert!(both.ends_with(&format!(" {SIGNATURE}")), "{both}");
        assert_eq!(verify(&s, ID, "1614265330", &both, BODY, TS, None), Ok(()));
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not base64!",
            "whsec_c2hvcnQ=",
            "",
        ] {
            assert!(parse_secrets(bad).is_err(), "{bad}");
        }
        assert_eq!(
            format!("{:?}", rotated[0]),
            "WebhookSecret(****)",
            "Debug never shows a key"
        );
    }
}
