//! Which provider a step goes to. Open, not an enum: a provider registered by the embedding
//! application (or a test crate) names itself, and the gateway's vocabulary does not change.

use std::sync::RwLock;

/// A provider's name: lowercase ASCII letters, digits and `_`, starting with a letter (it is a
/// metric label, a settings section, a row value and a JSON string, all without quoting).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target(&'static str);

/// The names of every provider registered in this process. A row is decoded against it, so a
/// step naming a provider nobody registered fails to load instead of becoming another provider.
/// Process-wide rather than per registry because rows are decoded in the store, which knows no
/// registry; registries only ever add to it.
static KNOWN: RwLock<Vec<&'static str>> = RwLock::new(Vec::new());

impl Target {
    pub const JUSPAY_CUSTOMER: Target = Target::new("juspay_customer");
    pub const JUSPAY_WALLET: Target = Target::new("juspay_wallet");
    pub const RAZORPAY_UPI: Target = Target::new("razorpay_upi");

    /// Panics (at compile time in a `const`) on a name that is not snake_case.
    pub const fn new(name: &'static str) -> Self {
        let b = name.as_bytes();
        assert!(
            !b.is_empty() && b.len() <= 64 && b[0].is_ascii_lowercase(),
            "a provider name is snake_case"
        );
        let mut i = 0;
        while i < b.len() {
            assert!(
                b[i].is_ascii_lowercase() || b[i].is_ascii_digit() || b[i] == b'_',
                "a provider name is snake_case"
            );
            i += 1;
        }
        Self(name)
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// Makes the name decodable from rows ([`Target::registered`]).
    pub fn register(self) {
        let mut known = KNOWN.write().unwrap_or_else(|e| e.into_inner());
        if !known.contains(&self.0) {
            known.push(self.0);
        }
    }

    /// The registered provider of this name, if any.
    pub fn registered(name: &str) -> Option<Self> {
        let known = KNOWN.read().unwrap_or_else(|e| e.into_inner());
        known.iter().find(|k| **k == name).map(|k| Self(k))
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl serde::Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

super::sql_text::text_type!(Target, |t| t.as_str(), Target::registered, "provider");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_registered_names_decode() {
        const T: Target = Target::new("unit_test_provider_7");
        assert_eq!(Target::registered("unit_test_provider_7"), None);
        T.register();
        assert_eq!(Target::registered("unit_test_provider_7"), Some(T));
        assert_eq!(Target::registered("juspay_customer_x"), None);
    }

    #[test]
    #[should_panic(expected = "snake_case")]
    fn a_name_is_snake_case() {
        let _ = Target::new("Juspay-Customer");
    }
}
