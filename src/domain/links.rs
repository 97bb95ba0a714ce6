//! Who a user is at each provider: the gateway's own mapping, set by `PUT /profile/{user}/links`.

use super::patch::FieldError;
use super::target::Target;
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
        Self::recorded(s).filter(|_| !s.starts_with('_'))
    }

    /// A user id as a row holds it: the character rules, but not the reservation of `_`, which
    /// came after rows for such users could be written (and `_system`'s own rows have it).
    pub fn recorded(s: &str) -> Option<Self> {
        let ok = (1..=128).contains(&s.len())
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

/// One provider's member of the links body, as the provider declares it: its name on the wire and
/// whether it holds one object id (a string, or `null`) or several (an array).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkMember {
    pub provider: Target,
    pub name: &'static str,
    pub many: bool,
}

impl LinkMember {
    pub const fn one(provider: Target, name: &'static str) -> Self {
        Self {
            provider,
            name,
            many: false,
        }
    }

    pub const fn many(provider: Target, name: &'static str) -> Self {
        Self {
            provider,
            name,
            many: true,
        }
    }
}

/// A user's object ids at each registered provider, in registry order; every member is present,
/// empty when the user has no object there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileLinks {
    entries: Vec<(LinkMember, Vec<String>)>,
}

/// Bound on the ids of a member that holds several.
const MAX_OBJECTS: usize = 16;

impl ProfileLinks {
    /// Links from stored `(provider, object id)` pairs in ordinal order. A provider no member
    /// names is an error: its objects would otherwise vanish from the links silently.
    pub fn from_rows<'a>(
        members: &[LinkMember],
        rows: impl IntoIterator<Item = (&'a str, String)>,
    ) -> Result<Self, String> {
        let mut links = Self::empty(members);
        for (provider, id) in rows {
            let Some((_, ids)) = links
                .entries
                .iter_mut()
                .find(|(m, _)| m.provider.as_str() == provider)
            else {
                return Err(format!(
                    "a link names provider {provider:?}, which is not registered"
                ));
            };
            ids.push(id);
        }
        Ok(links)
    }

    /// No objects at any of `members`.
    pub fn empty(members: &[LinkMember]) -> Self {
        Self {
            entries: members.iter().map(|m| (*m, Vec::new())).collect(),
        }
    }

    /// Sets the objects of `provider`'s member (tests, demo data); ignored for a provider that is
    /// not among the members.
    pub fn with(mut self, provider: Target, ids: &[&str]) -> Self {
        if let Some((_, v)) = self
            .entries
            .iter_mut()
            .find(|(m, _)| m.provider == provider)
        {
            *v = ids.iter().map(|s| s.to_string()).collect();
        }
        self
    }

    /// The user's objects at `provider`, in the order they were linked.
    pub fn objects(&self, provider: Target) -> &[String] {
        self.entries
            .iter()
            .find(|(m, _)| m.provider == provider)
            .map(|(_, ids)| ids.as_slice())
            .unwrap_or(&[])
    }

    /// Each member with its objects, in registry order.
    pub fn entries(&self) -> impl Iterator<Item = (&LinkMember, &[String])> {
        self.entries.iter().map(|(m, ids)| (m, ids.as_slice()))
    }

    /// The body of `PUT /profile/{user}/links`; members not sent are left without objects.
    pub fn parse(body: &Value, members: &[LinkMember]) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let Value::Object(obj) = body else {
            return Err(vec![FieldError::new(
                "",
                "invalid_type",
                "the body must be a JSON object",
            )]);
        };
        for key in obj.keys() {
            if !members.iter().any(|m| m.name == key) {
                errors.push(FieldError::new(
                    format!("/{}", crate::strict_json::escape_pointer(key)),
                    "unknown_field",
                    "this member is not a field of this object",
                ));
            }
        }
        let mut links = Self::empty(members);
        for (member, ids) in &mut links.entries {
            let key = member.name;
            match (obj.get(key), member.many) {
                (None | Some(Value::Null), _) => {}
                (Some(Value::String(s)), false) if upstream_id(s) => ids.push(s.clone()),
                (Some(_), false) => errors.push(FieldError::new(
                    format!("/{key}"),
                    "invalid_id",
                    format!("{key} must be 1 to 128 letters, digits, `.`, `_` or `-`"),
                )),
                (Some(Value::Array(items)), true) => {
                    if items.len() > MAX_OBJECTS {
                        errors.push(FieldError::new(
                            format!("/{key}"),
                            "too_many",
                            format!("at most {MAX_OBJECTS} objects can be linked in {key}"),
                        ));
                    }
                    for (i, item) in items.iter().enumerate() {
                        match item {
                            Value::String(s) if upstream_id(s) => {
                                if ids.contains(s) {
                                    errors.push(FieldError::new(
                                        format!("/{key}/{i}"),
                                        "duplicate",
                                        "each object can be linked once",
                                    ));
                                } else {
                                    ids.push(s.clone());
                                }
                            }
                            _ => errors.push(FieldError::new(
                                format!("/{key}/{i}"),
                                "invalid_id",
                                "an object id must be 1 to 128 letters, digits, `.`, `_` or `-`",
                            )),
                        }
                    }
                }
                (Some(_), true) => errors.push(FieldError::new(
                    format!("/{key}"),
                    "invalid_type",
                    format!("{key} must be an array of strings"),
                )),
            }
        }
        if errors.is_empty() {
            Ok(links)
        } else {
            Err(errors)
        }
    }
}

/// On the wire each member keeps its shape: a string or `null` for one object, an array for
/// several.
impl Serialize for ProfileLinks {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.entries.len()))?;
        for (member, ids) in &self.entries {
            if member.many {
                map.serialize_entry(member.name, ids)?;
            } else {
                map.serialize_entry(member.name, &ids.first())?;
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MEMBERS: [LinkMember; 3] = [
        LinkMember::one(Target::JUSPAY_CUSTOMER, "juspay_customer_id"),
        LinkMember::many(Target::JUSPAY_WALLET, "juspay_wallet_ids"),
        LinkMember::one(Target::RAZORPAY_UPI, "razorpay_customer_reference"),
    ];

    #[test]
    fn a_row_of_an_unregistered_provider_is_an_error() {
        let rows = [
            ("juspay_wallet", "w1".to_string()),
            ("gone", "x".to_string()),
        ];
        assert!(ProfileLinks::from_rows(&MEMBERS, rows).is_err());
    }

    #[test]
    fn links_parse_and_reject_unsafe_ids() {
        let l = ProfileLinks::parse(
            &json!({"juspay_customer_id": "cst_1", "juspay_wallet_ids": ["wlt_1", "wlt_2"]}),
            &MEMBERS,
        )
        .unwrap();
        assert_eq!(l.objects(Target::JUSPAY_WALLET), ["wlt_1", "wlt_2"]);
        assert!(l.objects(Target::RAZORPAY_UPI).is_empty());
        assert_eq!(
            serde_json::to_value(&l).unwrap(),
            json!({"juspay_customer_id": "cst_1", "juspay_wallet_ids": ["wlt_1", "wlt_2"],
                   "razorpay_customer_reference": null})
        );
        let errs = ProfileLinks::parse(
            &json!({"juspay_customer_id": "../admin", "juspay_wallet_ids": ["a", "a"], "x": 1}),
            &MEMBERS,
        )
        .unwrap_err();
        let ptrs: Vec<_> = errs.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(ptrs, ["/x", "/juspay_customer_id", "/juspay_wallet_ids/1"]);
        assert!(UserId::parse("user-42").is_some());
        assert!(UserId::parse("a/b").is_none());
        // A reserved id cannot be named, but a row may hold one (`_system`, or a row written
        // before the reservation) and still reads.
        assert!(UserId::parse("_system").is_none());
        assert_eq!(UserId::recorded("_system").unwrap().as_str(), "_system");
        assert!(UserId::recorded("a/b").is_none());
    }
}
