//! Razorpay TPAP UPI number update, as domain types.

use super::contact::{Invalid, pii_newtype};
use super::mask;
use serde::{Deserialize, Serialize};

pii_newtype!(UpiNumber, mask::digits);
pii_newtype!(Vpa, mask::vpa);

impl UpiNumber {
    /// NPCI's UPI number rules: a 10-digit UPI number is the user's Indian mobile number (it starts
    /// with 6 to 9); an 8-9 digit numeric id has no leading 0, is not one digit repeated, and
    /// does not end in three equal digits. Each rule has its own code so an app can say which.
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
        let b = s.as_bytes();
        if b.len() == 10 {
            if !(b'6'..=b'9').contains(&b[0]) {
                return Err(Invalid::new(
                    "upi_number_not_mobile",
                    "a 10-digit upi_number is a mobile number and must start with 6, 7, 8 or 9",
                ));
            }
            return Ok(Self(s.to_string()));
        }
        if b[0] == b'0' {
            return Err(Invalid::new(
                "upi_number_leading_zero",
                "an 8 or 9 digit upi_number must not start with 0",
            ));
        }
        if b.iter().all(|d| *d == b[0]) {
            return Err(Invalid::new(
                "upi_number_repeated_digits",
                "an 8 or 9 digit upi_number must not be one digit repeated",
            ));
        }
        let tail = &b[b.len() - 3..];
        if tail.iter().all(|d| *d == tail[0]) {
            return Err(Invalid::new(
                "upi_number_repeated_ending",
                "an 8 or 9 digit upi_number must not end in three equal digits",
            ));
        }
        Ok(Self(s.to_string()))
    }
}

/// Where a device's `fingerprint_timestamp` may lie: a fingerprint made long ago (or "in the
/// future") is a replayed or forged one, and Razorpay receives it verbatim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampWindow {
    now_ms: u64,
    max_age_ms: u64,
    max_future_ms: u64,
}

impl TimestampWindow {
    pub fn around(now_ms: u64, max_age_ms: u64, max_future_ms: u64) -> Self {
        Self {
            now_ms,
            max_age_ms,
            max_future_ms,
        }
    }

    pub fn around_now(max_age_ms: u64, max_future_ms: u64) -> Self {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self::around(now_ms, max_age_ms, max_future_ms)
    }

    /// Any positive millisecond count up to year 2255 (JSON's exact-integer range): for
    /// benchmarks and tests of other rules, never for a request.
    pub fn unbounded() -> Self {
        Self::around(0, 0, 9_000_000_000_000)
    }

    pub fn check(&self, ts_ms: u64) -> Result<u64, Invalid> {
        if self.now_ms > 0 && ts_ms < self.now_ms.saturating_sub(self.max_age_ms) {
            return Err(Invalid::new(
                "timestamp_too_old",
                "fingerprint_timestamp is older than the accepted window (limits.fingerprint_max_age_ms)",
            ));
        }
        if ts_ms > self.now_ms.saturating_add(self.max_future_ms) {
            return Err(Invalid::new(
                "timestamp_in_future",
                "fingerprint_timestamp is further in the future than the accepted clock skew (limits.fingerprint_max_future_ms)",
            ));
        }
        Ok(ts_ms)
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
        assert!(UpiNumber::parse("9876543210").is_ok());
        assert!(UpiNumber::parse("12345678").is_ok());
        assert!(UpiNumber::parse("123456789").is_ok());
        let code = |s: &str| UpiNumber::parse(s).unwrap_err().code;
        assert_eq!(code("1234567"), "invalid_length");
        assert_eq!(code("12345678a"), "not_digits");
        assert_eq!(code("1234567890"), "upi_number_not_mobile");
        assert_eq!(code("5876543210"), "upi_number_not_mobile");
        assert_eq!(code("01234567"), "upi_number_leading_zero");
        assert_eq!(code("77777777"), "upi_number_repeated_digits");
        assert_eq!(code("999999999"), "upi_number_repeated_digits");
        assert_eq!(code("12345000"), "upi_number_repeated_ending");
        assert_eq!(code("123456111"), "upi_number_repeated_ending");
        assert!(UpiNumber::parse("12345100").is_ok());
    }

    #[test]
    fn timestamp_window() {
        let w = TimestampWindow::around(1_000_000_000, 86_400_000, 300_000);
        assert_eq!(w.check(1_000_000_000), Ok(1_000_000_000));
        assert!(w.check(1_000_000_000 - 86_400_000).is_ok());
        assert!(w.check(1_000_300_000).is_ok());
        assert_eq!(
            w.check(1_000_300_001).unwrap_err().code,
            "timestamp_in_future"
        );
        assert_eq!(w.check(u64::MAX).unwrap_err().code, "timestamp_in_future");
        assert_eq!(w.check(1).unwrap_err().code, "timestamp_too_old");
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
