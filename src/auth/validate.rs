//! The start-up checks of `[auth]`.

use super::{SCOPES, jwt};
use crate::settings::{AuthSettings, SettingError};
use std::collections::HashSet;

/// The start-up checks of `[auth]`: every problem named by its key, so a typo in a scope or a
/// copied caller entry stops the start instead of granting something unintended.
pub fn validate_settings(auth: &AuthSettings) -> Vec<SettingError> {
    let mut errors = Vec::new();
    let mut bad = |key: String, problem: String| errors.push(SettingError { key, problem });
    let mut names = HashSet::new();
    let mut hashes = HashSet::new();
    let mut subjects = HashSet::new();
    let issuer_names: Vec<&str> = auth.issuers.iter().map(|i| i.issuer.as_str()).collect();
    for (i, caller) in auth.callers.iter().enumerate() {
        let key = |field: &str| format!("auth.callers[{i}].{field}");
        if caller.name.trim().is_empty() {
            bad(key("name"), "must not be empty".into());
        } else if !names.insert(caller.name.as_str()) {
            bad(
                key("name"),
                format!("duplicate caller name `{}`", caller.name),
            );
        }
        match (&caller.token_sha256, &caller.issuer, &caller.subject) {
            (Some(hash), None, None) => {
                let hex_ok = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
                if !hex_ok {
                    bad(
                        key("token_sha256"),
                        "must be the 64-hex-digit SHA-256 of the token".into(),
                    );
                } else if !hashes.insert(hash.to_ascii_lowercase()) {
                    bad(
                        key("token_sha256"),
                        "duplicate token hash: another caller has the same token".into(),
                    );
                }
            }
            (None, Some(issuer), Some(subject)) => {
                if !issuer_names.contains(&issuer.as_str()) {
                    bad(
                        key("issuer"),
                        format!("`{issuer}` is not an auth.issuers[].issuer"),
                    );
                }
                if subject.is_empty() {
                    bad(key("subject"), "must not be empty".into());
                } else if !subjects.insert((issuer.as_str(), subject.as_str())) {
                    bad(
                        key("subject"),
                        "duplicate (issuer, subject): another caller has the same identity".into(),
                    );
                }
            }
            _ => bad(
                key("token_sha256"),
                "a caller needs exactly one of token_sha256 or (issuer and subject)".into(),
            ),
        }
        if caller.scopes.is_empty() {
            bad(
                key("scopes"),
                format!(
                    "must list at least one scope (one of {}; \"*\" grants every scope)",
                    SCOPES.join(", ")
                ),
            );
        }
        let mut seen = HashSet::new();
        for (j, scope) in caller.scopes.iter().enumerate() {
            if !SCOPES.contains(&scope.as_str()) {
                bad(
                    format!("auth.callers[{i}].scopes[{j}]"),
                    format!("unknown scope `{scope}` (known: {})", SCOPES.join(", ")),
                );
            } else if !seen.insert(scope.as_str()) {
                bad(
                    format!("auth.callers[{i}].scopes[{j}]"),
                    format!("duplicate scope `{scope}`"),
                );
            }
        }
        if caller.require_user_assertion {
            match &caller.user_assertion_issuer {
                Some(iss) if issuer_names.contains(&iss.as_str()) => {}
                Some(iss) => bad(
                    key("user_assertion_issuer"),
                    format!("`{iss}` is not an auth.issuers[].issuer"),
                ),
                None => bad(
                    key("user_assertion_issuer"),
                    "is required with require_user_assertion = true".into(),
                ),
            }
            if caller.max_assertion_age_s == Some(0) {
                bad(key("max_assertion_age_s"), "must be greater than 0".into());
            }
        } else if caller.user_assertion_issuer.is_some() || caller.assert_reads {
            bad(
                key("require_user_assertion"),
                "user_assertion_issuer and assert_reads need require_user_assertion = true".into(),
            );
        }
    }
    let mut seen = HashSet::new();
    for (i, issuer) in auth.issuers.iter().enumerate() {
        let key = |field: &str| format!("auth.issuers[{i}].{field}");
        if issuer.issuer.is_empty() {
            bad(key("issuer"), "must not be empty".into());
        } else if !seen.insert(issuer.issuer.as_str()) {
            bad(
                key("issuer"),
                format!("duplicate issuer `{}`", issuer.issuer),
            );
        }
        if issuer.audiences.is_empty() || issuer.audiences.iter().any(String::is_empty) {
            bad(
                key("audiences"),
                "must list the audiences the gateway accepts (tokens must be audience-bound)"
                    .into(),
            );
        }
        match (&issuer.jwks_url, &issuer.jwks_file) {
            (Some(url), None) => {
                let ok = url::Url::parse(url).is_ok_and(|u| {
                    u.scheme() == "https"
                        || (u.scheme() == "http"
                            && u.host_str().is_some_and(|h| {
                                h == "localhost" || h.starts_with("127.") || h == "[::1]"
                            }))
                });
                if !ok {
                    bad(
                        key("jwks_url"),
                        "must be an https URL (http only on loopback)".into(),
                    );
                }
            }
            (None, Some(_)) => {
                if issuer.ca_file.is_some() || issuer.jwks_bearer_token_file.is_some() {
                    bad(
                        key("ca_file"),
                        "ca_file and jwks_bearer_token_file go with jwks_url".into(),
                    );
                }
            }
            _ => bad(
                key("jwks_url"),
                "an issuer needs exactly one of jwks_url or jwks_file".into(),
            ),
        }
        if issuer.algorithms.is_empty() {
            bad(key("algorithms"), "must list at least one algorithm".into());
        }
        for (j, alg) in issuer.algorithms.iter().enumerate() {
            if jwt::allowed_algorithm(alg).is_none() {
                bad(
                    format!("auth.issuers[{i}].algorithms[{j}]"),
                    format!("`{alg}` is not allowed (RS256, ES256 or EdDSA; never none or HMAC)"),
                );
            }
        }
        if issuer.refresh_interval_s == 0 {
            bad(key("refresh_interval_s"), "must be greater than 0".into());
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token_sha256;
    use crate::settings::{CallerSettings, IssuerSettings};

    fn caller(name: &str, token: &str, scopes: &[&str]) -> CallerSettings {
        CallerSettings {
            name: name.into(),
            token_sha256: Some(token_sha256(token)),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn problems(auth: &AuthSettings) -> Vec<String> {
        validate_settings(auth)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn scopes_and_callers_are_checked_at_start() {
        let auth = AuthSettings {
            callers: vec![
                caller("a", "t1", &["profile:write", "profile:wrte"]),
                caller("a", "t2", &[]),
                caller("b", "t1", &["links:read", "links:read"]),
            ],
            issuers: vec![],
        };
        let p = problems(&auth);
        let has = |needle: &str| p.iter().any(|e| e.contains(needle));
        assert!(
            has("auth.callers[0].scopes[1]: unknown scope `profile:wrte`"),
            "{p:?}"
        );
        assert!(
            has("auth.callers[1].name: duplicate caller name `a`"),
            "{p:?}"
        );
        assert!(
            has("auth.callers[1].scopes: must list at least one scope"),
            "{p:?}"
        );
        assert!(
            has("auth.callers[2].token_sha256: duplicate token hash"),
            "{p:?}"
        );
        assert!(has("auth.callers[2].scopes[1]: duplicate scope"), "{p:?}");
        assert_eq!(p.len(), 5, "{p:?}");
    }

    #[test]
    fn jwt_callers_need_a_known_issuer_and_safe_algorithms() {
        let auth = AuthSettings {
            callers: vec![
                CallerSettings {
                    name: "k8s".into(),
                    issuer: Some("https://other".into()),
                    subject: Some("system:serviceaccount:ns:app".into()),
                    scopes: vec!["*".into()],
                    ..Default::default()
                },
                CallerSettings {
                    name: "both".into(),
                    token_sha256: Some(token_sha256("x")),
                    issuer: Some("https://k8s".into()),
                    subject: Some("s".into()),
                    scopes: vec!["*".into()],
                    ..Default::default()
                },
            ],
            issuers: vec![IssuerSettings {
                issuer: "https://k8s".into(),
                audiences: vec![],
                jwks_url: Some("http://example.com/jwks".into()),
                ca_file: None,
                jwks_bearer_token_file: None,
                jwks_file: None,
                algorithms: vec!["HS256".into(), "none".into()],
                leeway_s: 30,
                refresh_interval_s: 300,
                min_refresh_s: 10,
            }],
        };
        let p = problems(&auth).join("\n");
        for needle in [
            "auth.callers[0].issuer: `https://other` is not",
            "auth.callers[1].token_sha256: a caller needs exactly one",
            "auth.issuers[0].audiences",
            "auth.issuers[0].jwks_url: must be an https URL",
            "auth.issuers[0].algorithms[0]: `HS256` is not allowed",
            "auth.issuers[0].algorithms[1]: `none` is not allowed",
        ] {
            assert!(p.contains(needle), "{needle} missing from:\n{p}");
        }
    }
}
