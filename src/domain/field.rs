//! The profile fields a change can set: the one list of their names, which are PII and how each
//! is masked. Planning, the audit trail, the providers' error envelopes and read-backs all name
//! fields through this enum, so a field's spelling lives here only.

use super::mask;
use super::patch::ProfilePatch;

/// A field a step sets. The three UPI fields travel together as the PATCH body's `upi` member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    MobileNumber,
    MobileCountryCode,
    EmailAddress,
    FirstName,
    LastName,
    UpiNumber,
    Vpa,
    UpiAction,
}

impl Field {
    /// In the order the PATCH body documents them: a step lists its fields in this order.
    pub const ALL: [Field; 8] = [
        Self::MobileNumber,
        Self::MobileCountryCode,
        Self::EmailAddress,
        Self::FirstName,
        Self::LastName,
        Self::UpiNumber,
        Self::Vpa,
        Self::UpiAction,
    ];

    /// The name in step rows, audit events, change bodies and masks.
    pub fn name(self) -> &'static str {
        match self {
            Self::MobileNumber => "mobile_number",
            Self::MobileCountryCode => "mobile_country_code",
            Self::EmailAddress => "email_address",
            Self::FirstName => "first_name",
            Self::LastName => "last_name",
            Self::UpiNumber => "upi_number",
            Self::Vpa => "vpa",
            Self::UpiAction => "action",
        }
    }

    /// An unknown name is `None`: a row naming a field this build does not know is an error for
    /// its reader, never a field silently dropped.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Every name parsed, or the first unknown one.
    pub fn parse_all<S: AsRef<str>>(names: &[S]) -> Result<Vec<Self>, String> {
        names
            .iter()
            .map(|n| Self::parse(n.as_ref()).ok_or_else(|| n.as_ref().to_string()))
            .collect()
    }

    /// The top-level member of the PATCH body that carries the field.
    pub fn member(self) -> &'static str {
        match self {
            Self::UpiNumber | Self::Vpa | Self::UpiAction => "upi",
            other => other.name(),
        }
    }

    /// Whether the value identifies a person: such values are stored masked beside a keyed hash.
    /// A country code or an action identifies nobody.
    pub fn is_pii(self) -> bool {
        !matches!(self, Self::MobileCountryCode | Self::UpiAction)
    }

    /// What logs, audit rows and dry runs may show of a value of this field.
    pub fn mask(self, raw: &str) -> String {
        match self {
            Self::MobileNumber | Self::UpiNumber => mask::digits(raw),
            Self::EmailAddress => mask::email(raw),
            Self::FirstName | Self::LastName => mask::name(raw),
            Self::Vpa => mask::vpa(raw),
            Self::MobileCountryCode => mask::country_code(raw),
            // For a read-back, the number's status (`active`, ...) in this field's place.
            Self::UpiAction => mask::upi_state(raw),
        }
    }

    /// The patch's value of this field, if it sets it.
    pub fn value(self, patch: &ProfilePatch) -> Option<&str> {
        let upi = patch.upi.as_ref();
        match self {
            Self::MobileNumber => patch.mobile_number.as_ref().map(|v| v.as_str()),
            Self::MobileCountryCode => patch.mobile_country_code.as_ref().map(|v| v.as_str()),
            Self::EmailAddress => patch.email_address.as_ref().map(|v| v.as_str()),
            Self::FirstName => patch.first_name.as_ref().map(|v| v.as_str()),
            Self::LastName => patch.last_name.as_ref().map(|v| v.as_str()),
            Self::UpiNumber => upi.map(|u| u.upi_number.as_str()),
            Self::Vpa => upi.map(|u| u.vpa.as_str()),
            Self::UpiAction => upi.map(|u| u.action.as_str()),
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Field {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The names of `fields`, as rows and bodies carry them.
pub fn names(fields: &[Field]) -> Vec<String> {
    fields.iter().map(|f| f.name().to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_and_an_unknown_one_does_not() {
        for f in Field::ALL {
            assert_eq!(Field::parse(f.name()), Some(f));
        }
        assert_eq!(Field::parse("upi"), None);
        assert_eq!(
            Field::parse_all(&["vpa", "nickname"]),
            Err("nickname".to_string())
        );
        assert_eq!(Field::UpiAction.member(), "upi");
        assert_eq!(Field::FirstName.member(), "first_name");
        assert!(Field::Vpa.is_pii() && !Field::MobileCountryCode.is_pii());
    }
}
