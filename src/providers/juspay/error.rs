//! Juspay's error envelope, shared by the customer and wallet APIs. Every member is optional and
//! may be free text; only facts are extracted, the judgement is `classify`'s.

use crate::providers::classify::{ErrorFacts, safe_code, says_not_found};
use serde_json::Value;

/// A Juspay field name that is one of the fields the Juspay adapters send, or their `command`.
fn known_field(name: &str) -> Option<&'static str> {
    if name == "command" {
        return Some("command");
    }
    crate::providers::juspay_customer::SPEC
        .fields
        .iter()
        .chain(crate::providers::juspay_wallet::SPEC.fields)
        .find(|f| f.name() == name)
        .map(|f| f.name())
}

pub fn facts(body: &[u8]) -> ErrorFacts {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return ErrorFacts::default();
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();
    let info = obj.get("error_info").and_then(Value::as_object);
    let envelope = [
        "status",
        "error_code",
        "error_message",
        "user_message",
        "error_info",
    ]
    .iter()
    .any(|k| obj.contains_key(*k));
    let error_code = text(obj.get("error_code"));
    let info_code = text(info.and_then(|i| i.get("code")));
    let upstream_code = safe_code(&error_code).or_else(|| safe_code(&info_code));
    let not_found = error_code == "object_not_found"
        || info_code == "RESOURCE_NOT_FOUND"
        || says_not_found(&error_code);
    let mut fields = Vec::new();
    if let Some(list) = info.and_then(|i| i.get("fields")).and_then(Value::as_array) {
        for f in list {
            let name = text(f.get("field_name"));
            if let Some(known) = known_field(&name)
                && !fields.contains(&known)
            {
                fields.push(known);
            }
        }
    }
    ErrorFacts {
        envelope,
        upstream_code,
        not_found,
        fields,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_shape() {
        let f = facts(br#"{"status":"invalid_request_error","error_code":"object_not_found","error_message":"Cannot find"}"#);
        assert!(f.envelope && f.not_found);
        assert_eq!(f.upstream_code.as_deref(), Some("object_not_found"));

        let f = facts(br#"{"error_info":{"code":"INVALID_INPUT","category":"USER_ERROR","fields":[{"field_name":"email_address","reason":"bad"},{"field_name":"secret_thing"}]}}"#);
        assert_eq!(f.upstream_code.as_deref(), Some("INVALID_INPUT"));
        assert_eq!(f.fields, ["email_address"]);
        assert!(!f.not_found);

        let f = facts(br#"{"error_code":"Mobile number 98765 is not valid"}"#);
        assert!(f.envelope);
        assert_eq!(f.upstream_code, None);

        assert_eq!(facts(b"<html>502</html>"), ErrorFacts::default());
        assert_eq!(facts(b""), ErrorFacts::default());
        assert!(!facts(br#"{"unrelated":1}"#).envelope);
    }
}
