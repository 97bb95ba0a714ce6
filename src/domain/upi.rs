//! Razorpay TPAP UPI number update, as domain types.

use super::contact::{Invalid, pii_newtype};
use super::mask;
use serde::{Deserialize, Serialize};

pii_newtype!(UpiNumber, mask::digits);
pii_newtype!(Vpa, mask::vpa);

impl UpiNumber {
    /// NPCI UPI numbers are 8-9 digit numeric ids or a 10-digit mobile number.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Invalid::new(
                "not_digits",
                "upi_number must contain digits only",
            ));
        }
        if !(8..=10).contains(&s.len()) {
            return Err(Invalid::new(
                "invalid_length",
                "upi_number must have 8 to 10 digits",
            ));
        }
        Ok(Self(s.to_string()))
    }
}

impl Vpa {
    /// `handle@psp`: the handle of letters, digits, `.`, `-`, `_`; the PSP of letters and digits.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = || {
            Err(Invalid::new(
                "invalid_vpa",
                "vpa must look like handle@psp (letters, digits, `.`, `-`, `_` before the @, letters and digits after)",
            ))
        };
        let Some((handle, psp)) = s.split_once('@') else {
            return bad();
        };
        let handle_ok = (2..=64).contains(&handle.len())
            && handle
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c));
        let psp_ok =
            (2..=64).contains(&psp.len()) && psp.chars().all(|c| c.is_ascii_alphanumeric());
        if !handle_ok || !psp_ok {
            return bad();
        }
        // VPAs are case-insensitive; lower-casing keeps one VPA one audit HMAC.
        Ok(Self(s.to_ascii_lowercase()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpiAction {
    ChangeVpa,
    Inactivate,
    Deregister,
    Activate,
}

impl UpiAction {
    pub const ALL: [&'static str; 4] = ["change_vpa", "inactivate", "deregister", "activate"];

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "change_vpa" => Ok(Self::ChangeVpa),
            "inactivate" => Ok(Self::Inactivate),
            "deregister" => Ok(Self::Deregister),
            "activate" => Ok(Self::Activate),
            _ => Err(Invalid::new(
                "invalid_action",
                "action must be one of change_vpa, inactivate, deregister, activate",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChangeVpa => "change_vpa",
            Self::Inactivate => "inactivate",
            Self::Deregister => "deregister",
            Self::Activate => "activate",
        }
    }

    /// The status Razorpay must report after this action succeeded.
    pub fn expected_status(self) -> &'static str {
        match self {
            Self::ChangeVpa | Self::Activate => "active",
            Self::Inactivate => "inactive",
            Self::Deregister => "deregistered",
        }
    }
}

/// Made on the end user's device; the gateway forwards it and cannot compute it. It goes into an
/// HTTP header, so only visible ASCII is allowed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceFingerprint(String);

impl DeviceFingerprint {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() || s.len() > 512 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Invalid::new(
                "invalid_fingerprint",
                "device.fingerprint must be 1 to 512 visible ASCII characters",
            ));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DeviceFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceFingerprint(****)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpiChange {
    pub upi_number: UpiNumber,
    pub vpa: Vpa,
    pub action: UpiAction,
    pub device_fingerprint: DeviceFingerprint,
    /// UNIX milliseconds, as the device sent it.
    pub fingerprint_timestamp: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vpa_and_upi_number() {
        assert_eq!(
            Vpa::parse("New.User@OKAXIS").unwrap().as_str(),
            "new.user@okaxis"
        );
        for bad in ["nouser", "a@", "@psp", "a b@psp", "ab@ok-axis", "ab@psp@x"] {
            assert!(Vpa::parse(bad).is_err(), "{bad}");
        }
        assert!(UpiNumber::parse("1234567890").is_ok());
        assert!(UpiNumber::parse("12345678").is_ok());
        assert!(UpiNumber::parse("1234567").is_err());
        assert!(UpiNumber::parse("12345678a").is_err());
    }

    #[test]
    fn actions() {
        for a in UpiAction::ALL {
            assert_eq!(UpiAction::parse(a).unwrap().as_str(), a);
        }
        assert!(UpiAction::parse("delete").is_err());
        assert_eq!(UpiAction::Deregister.expected_status(), "deregistered");
    }
}
