//! The receiver's half of Standard Webhooks (standardwebhooks.com): parse `whsec_<base64>`
//! secrets and check a `webhook-signature: v1,<base64>` header, which is HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}`. Written apart from the gateway's signer on purpose:
//! the simulator is an independent receiver, so a signing mistake there shows up here.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "whsec_";

/// One verification key. `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(****)")
    }
}

/// One or more `whsec_...`, separated by whitespace (a rotation: any one may sign).
pub(crate) fn parse_secrets(text: &str) -> Result<Vec<WebhookSecret>, String> {
    let secrets = text
        .split_whitespace()
        .map(|s| {
            let b64 = s
                .strip_prefix(PREFIX)
                .ok_or_else(|| format!("must start with `{PREFIX}`"))?;
            STANDARD
                .decode(b64)
                .map(WebhookSecret)
                .map_err(|_| format!("the part after `{PREFIX}` must be base64"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    if secrets.is_empty() {
        return Err(format!("holds no `{PREFIX}...` secret"));
    }
    Ok(secrets)
}

/// Whether the timestamp is within `tolerance_s` of `now` and any `v1,` signature of the header
/// matches any of `secrets`.
pub(crate) fn verify(
    secrets: &[WebhookSecret],
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_s: i64,
) -> bool {
    let Ok(ts) = timestamp.trim().parse::<i64>() else {
        return false;
    };
    if (now - ts).abs() > tolerance_s {
        return false;
    }
    signature_header
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|sig| STANDARD.decode(sig).ok())
        .any(|presented| {
            secrets.iter().any(|key| {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.0)
                    .expect("HMAC takes a key of any length");
                mac.update(format!("{id}.{ts}.").as_bytes());
                mac.update(body);
                // Constant time, so a forger learns nothing from how fast a guess is refused.
                mac.verify_slice(&presented).is_ok()
            })
        })
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
    fn checks_the_reference_example() {
        let s = parse_secrets(SECRET).unwrap();
        assert!(verify(&s, ID, "1614265330", SIGNATURE, BODY, TS + 10, 300));
        assert!(!verify(&s, ID, "1614265330", SIGNATURE, b"{}", TS, 300));
        assert!(!verify(
            &s,
            ID,
            "1614265330",
            SIGNATURE,
            BODY,
            TS + 301,
            300
        ));
        assert!(!verify(&s, ID, "soon", SIGNATURE, BODY, TS, 300));
        let rotated = parse_secrets(&format!("whsec_AAAA {SECRET}")).unwrap();
        assert!(verify(&rotated, ID, "1614265330", SIGNATURE, BODY, TS, 300));
        assert!(parse_secrets("").is_err());
        assert!(parse_secrets("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert_eq!(format!("{:?}", s[0]), "WebhookSecret(****)");
    }
}
