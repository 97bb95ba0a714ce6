//! Who a user is at each provider: the gateway's own mapping, set by `PUT /profile/{user}/links`.

use super::patch::FieldError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The gateway's user id, from the path. Kept to characters that are safe in URLs, logs and SQL
/// without quoting surprises.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    /// Ids starting with `_` are reserved for the gateway's own records (`_system`): a caller
    /// cannot name them, so its changes never land in the gateway's audit chains.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = (1..=128).contains(&s.len())
            && !s.starts_with('_')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._:-@".contains(c));
        ok.then(|| Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An upstream object id (`cst_...`, `wlt_...`, a customer reference). It becomes a URL path
/// segment or a header: only URL- and header-safe characters, starting with a letter or digit, so
/// `.` and `..` (which a URL resolves to "this" and "the parent" resource) can never be one.
fn upstream_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileLinks {
    pub juspay_customer_id: Option<String>,
    pub juspay_wallet_ids: Vec<String>,
    pub razorpay_customer_reference: Option<String>,
}

const MAX_WALLETS: usize = 16;

impl ProfileLinks {
    pub fn parse(body: &Value) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let Value::Object(obj) = body else {
            return Err(vec![FieldError::new(
                "",
                "invalid_type",
                "the body must be a JSON object",
            )]);
        };
        for key in obj.keys() {
            if ![
                "juspay_customer_id",
                "juspay_wallet_ids",
                "razorpay_customer_reference",
            ]
            .contains(&key.as_str())
            {
                errors.push(FieldError::new(
                    format!("/{}", crate::strict_json::escape_pointer(key)),
                    "unknown_field",
                    "this member is not a field of this object",
                ));
            }
        }
        let mut single = |key: &str| -> Option<String> {
            match obj.get(key) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if upstream_id(s) => Some(s.clone()),
                Some(_) => {
                    errors.push(FieldError::new(
                        format!("/{key}"),
                        "invalid_id",
                        format!("{key} must be 1 to 128 letters, digits, `.`, `_` or `-`"),
                    ));
                    None
                }
            }
        };
        let juspay_customer_id = single("juspay_customer_id");
        let razorpay_customer_reference = single("razorpay_customer_reference");
        let mut juspay_wallet_ids = Vec::new();
        match obj.get("juspay_wallet_ids") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                if items.len() > MAX_WALLETS {
                    errors.push(FieldError::new(
                        "/juspay_wallet_ids",
                        "too_many",
                        format!("at most {MAX_WALLETS} wallets can be linked"),
                    ));
                }
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) if upstream_id(s) => {
                            if juspay_wallet_ids.contains(s) {
                                errors.push(FieldError::new(
                                    format!("/juspay_wallet_ids/{i}"),
                                    "duplicate",
                                    "each wallet can be linked once",
                                ));
                            } else {
                                juspay_wallet_ids.push(s.clone());
                            }
                        }
                        _ => errors.push(FieldError::new(
                            format!("/juspay_wallet_ids/{i}"),
                            "invalid_id",
                            "a wallet id must be 1 to 128 letters, digits, `.`, `_` or `-`",
                        )),
                    }
                }
            }
            Some(_) => errors.push(FieldError::new(
                "/juspay_wallet_ids",
                "invalid_type",
                "juspay_wallet_ids must be an array of strings",
            )),
        }
        if errors.is_empty() {
            Ok(Self {
                juspay_customer_id,
                juspay_wallet_ids,
                razorpay_customer_reference,
            })
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn links_parse_and_reject_unsafe_ids() {
        let l = ProfileLinks::parse(
            &json!({"juspay_customer_id": "cst_1", "juspay_wallet_ids": ["wlt_1", "wlt_2"]}),
        )
        .unwrap();
        assert_eq!(l.juspay_wallet_ids, ["wlt_1", "wlt_2"]);
        assert_eq!(l.razorpay_customer_reference, None);
        let errs = ProfileLinks::parse(
            &json!({"juspay_customer_id": "../admin", "juspay_wallet_ids": ["a", "a"], "x": 1}),
        )
        .unwrap_err();
        let ptrs: Vec<_> = errs.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(ptrs, ["/x", "/juspay_customer_id", "/juspay_wallet_ids/1"]);
        assert!(UserId::parse("user-42").is_some());
        assert!(UserId::parse("a/b").is_none());
    }
}
