//! Contact details as Juspay documents them. Each type can only hold a value the upstream accepts,
//! and each is PII: `Debug` prints the masked form.

use super::mask;
use serde::{Deserialize, Serialize};

macro_rules! pii_newtype {
    ($name:ident, $mask:path) => {
        #[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
            pub fn masked(&self) -> String {
                $mask(&self.0)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($name), self.masked())
            }
        }
    };
}
pub(crate) use pii_newtype;

pii_newtype!(MobileNumber, mask::digits);
pii_newtype!(CountryCode, mask::country_code);
pii_newtype!(Email, mask::email);
pii_newtype!(PersonName, mask::name);

/// A field rejected by a parser: a stable code and a message safe to show (it never echoes the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub code: &'static str,
    pub detail: String,
}

impl Invalid {
    pub fn new(code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

fn digits(s: &str, min: usize, max: usize, what: &str) -> Result<String, Invalid> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Invalid::new(
            "not_digits",
            format!("{what} must contain digits only"),
        ));
    }
    if s.len() < min || s.len() > max {
        return Err(Invalid::new(
            "invalid_length",
            format!("{what} must have {min} to {max} digits"),
        ));
    }
    Ok(s.to_string())
}

impl MobileNumber {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        digits(s, 6, 15, "mobile_number").map(Self)
    }
}

impl CountryCode {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        digits(s, 1, 4, "mobile_country_code").map(Self)
    }
}

/// Juspay: alphanumerics and `!#$%&'*+-/=?^_`.{|}~` in the local part; `.` and `_` never first or
/// last; no `..` anywhere.
const EMAIL_LOCAL_SPECIALS: &str = "!#$%&'*+-/=?^_`.{|}~";

impl Email {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = |d: &str| Err(Invalid::new("invalid_email", d.to_string()));
        if s.len() > 254 {
            return bad("email_address must be at most 254 characters");
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return bad("email_address must look like local@domain");
        };
        if local.is_empty() || local.len() > 64 {
            return bad("the local part of email_address must have 1 to 64 characters");
        }
        if !local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || EMAIL_LOCAL_SPECIALS.contains(c))
        {
            return bad(
                "the local part of email_address may hold letters, digits and !#$%&'*+-/=?^_`.{|}~ only",
            );
        }
        for edge in ['.', '_'] {
            if local.starts_with(edge) || local.ends_with(edge) {
                return bad(
                    "the local part of email_address must not start or end with `.` or `_`",
                );
            }
        }
        if s.contains("..") {
            return bad("email_address must not contain consecutive dots");
        }
        let labels: Vec<&str> = domain.split('.').collect();
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if labels.len() < 2 || !labels.iter().all(label_ok) {
            return bad("the domain of email_address must be a host name such as example.com");
        }
        // Domains are case-insensitive; lower-casing keeps the audit HMAC of one address stable.
        Ok(Self(format!("{local}@{}", domain.to_ascii_lowercase())))
    }
}

impl PersonName {
    /// Juspay: alphanumerics and `().-_` only (no spaces).
    pub fn parse(s: &str, field: &str) -> Result<Self, Invalid> {
        if s.is_empty() || s.chars().count() > 64 {
            return Err(Invalid::new(
                "invalid_length",
                format!("{field} must have 1 to 64 characters"),
            ));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "().-_".contains(c))
        {
            return Err(Invalid::new(
                "invalid_characters",
                format!("{field} may hold letters, digits and ().-_ only"),
            ));
        }
        Ok(Self(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_rules_follow_the_juspay_docs() {
        for ok in [
            "customer@gmail.com",
            "a.b+c@Example.COM",
            "x!#$%&'*+-/=?^`{|}~y@ex.co",
            "a_b@ex.in",
        ] {
            assert!(Email::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            Email::parse("A@Example.COM").unwrap().as_str(),
            "A@example.com"
        );
        for bad in [
            ".a@ex.com",
            "a.@ex.com",
            "_a@ex.com",
            "a_@ex.com",
            "a..b@ex.com",
            "a b@ex.com",
            "a\"b@ex.com",
            "noat",
            "a@nodot",
            "a@-ex.com",
            "a@ex..com",
            "@ex.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_numbers() {
        assert!(PersonName::parse("Jon", "first_name").is_ok());
        assert!(PersonName::parse("O.Brien-(Jr)_2", "first_name").is_ok());
        assert_eq!(
            PersonName::parse("Jon Snow", "first_name")
                .unwrap_err()
                .code,
            "invalid_characters"
        );
        assert_eq!(
            PersonName::parse("", "first_name").unwrap_err().code,
            "invalid_length"
        );
        assert!(MobileNumber::parse("99887766").is_ok());
        assert_eq!(MobileNumber::parse("+9198").unwrap_err().code, "not_digits");
        assert_eq!(
            MobileNumber::parse("12345").unwrap_err().code,
            "invalid_length"
        );
        assert!(CountryCode::parse("65").is_ok());
        assert!(CountryCode::parse("+65").is_err());
    }

    #[test]
    fn debug_masks_pii() {
        let m = MobileNumber::parse("9876547766").unwrap();
        assert_eq!(format!("{m:?}"), "MobileNumber(******7766)");
        let e = Email::parse("jon@example.com").unwrap();
        assert_eq!(format!("{e:?}"), "Email(j***@example.com)");
    }
}
