//! The PATCH body, parsed in one pass that collects every violation with its JSON pointer, so a
//! caller fixes everything after one round trip.

use super::contact::{CountryCode, Email, Invalid, MobileNumber, PersonName};
use super::field::Field;
use super::upi::{DeviceFingerprint, TimestampWindow, UpiAction, UpiChange, UpiNumber, Vpa};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub pointer: String,
    pub code: &'static str,
    pub detail: String,
}

impl FieldError {
    pub fn new(pointer: impl Into<String>, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            code,
            detail: detail.into(),
        }
    }

    fn from_invalid(pointer: &str, e: Invalid) -> Self {
        Self::new(pointer, e.code, e.detail)
    }
}

/// A validated change. It is also the payload that is sealed into the change row while steps are
/// pending, hence `Serialize`/`Deserialize`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfilePatch {
    pub mobile_number: Option<MobileNumber>,
    pub mobile_country_code: Option<CountryCode>,
    pub email_address: Option<Email>,
    pub first_name: Option<PersonName>,
    pub last_name: Option<PersonName>,
    pub upi: Option<UpiChange>,
}

const TOP_FIELDS: [&str; 6] = [
    "mobile_number",
    "mobile_country_code",
    "email_address",
    "first_name",
    "last_name",
    "upi",
];
const UPI_FIELDS: [&str; 5] = ["upi_number", "vpa", "action", "consent", "device"];
const DEVICE_FIELDS: [&str; 2] = ["fingerprint", "fingerprint_timestamp"];

struct Collector(Vec<FieldError>);

impl Collector {
    fn push(&mut self, pointer: &str, code: &'static str, detail: impl Into<String>) {
        self.0.push(FieldError::new(pointer, code, detail));
    }

    fn reject_unknown(&mut self, obj: &Map<String, Value>, base: &str, known: &[&str]) {
        for key in obj.keys() {
            if !known.contains(&key.as_str()) {
                self.push(
                    &format!("{base}/{}", escape_pointer(key)),
                    "unknown_field",
                    // The pointer names the member; the detail never repeats what was sent.
                    "this member is not a field of this object",
                );
            }
        }
    }

    fn string<'v>(
        &mut self,
        obj: &'v Map<String, Value>,
        base: &str,
        key: &str,
    ) -> Option<&'v str> {
        match obj.get(key)? {
            Value::String(s) => Some(s),
            Value::Null => {
                self.push(
                    &format!("{base}/{key}"),
                    "null_not_allowed",
                    format!("{key} cannot be cleared; omit it to leave it unchanged"),
                );
                None
            }
            _ => {
                self.push(
                    &format!("{base}/{key}"),
                    "invalid_type",
                    format!("{key} must be a string"),
                );
                None
            }
        }
    }

    fn parsed<T>(
        &mut self,
        obj: &Map<String, Value>,
        base: &str,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, Invalid>,
    ) -> Option<T> {
        let s = self.string(obj, base, key)?;
        match parse(s) {
            Ok(v) => Some(v),
            Err(e) => {
                self.0
                    .push(FieldError::from_invalid(&format!("{base}/{key}"), e));
                None
            }
        }
    }

    fn required(&mut self, obj: &Map<String, Value>, base: &str, key: &str) -> bool {
        if obj.contains_key(key) {
            true
        } else {
            self.push(
                &format!("{base}/{key}"),
                "required",
                format!("{key} is required"),
            );
            false
        }
    }

    fn object<'v>(
        &mut self,
        v: &'v Value,
        pointer: &str,
        what: &str,
    ) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            _ => {
                self.push(
                    pointer,
                    "invalid_type",
                    format!("{what} must be a JSON object"),
                );
                None
            }
        }
    }
}

use crate::strict_json::escape_pointer;

impl ProfilePatch {
    /// `window` bounds the device fingerprint's timestamp (`TimestampWindow::around_now` for a
    /// request).
    pub fn parse(body: &Value, window: &TimestampWindow) -> Result<Self, Vec<FieldError>> {
        let mut c = Collector(Vec::new());
        let Some(obj) = c.object(body, "", "the body") else {
            return Err(c.0);
        };
        c.reject_unknown(obj, "", &TOP_FIELDS);
        let patch = ProfilePatch {
            mobile_number: c.parsed(obj, "", "mobile_number", MobileNumber::parse),
            mobile_country_code: c.parsed(obj, "", "mobile_country_code", CountryCode::parse),
            email_address: c.parsed(obj, "", "email_address", Email::parse),
            first_name: c.parsed(obj, "", "first_name", |s| {
                PersonName::parse(s, "first_name")
            }),
            last_name: c.parsed(obj, "", "last_name", |s| PersonName::parse(s, "last_name")),
            upi: obj.get("upi").and_then(|v| parse_upi(&mut c, v, window)),
        };
        if obj.is_empty() {
            c.push("", "empty_patch", "the body names no field to change");
        }
        if c.0.is_empty() { Ok(patch) } else { Err(c.0) }
    }

    /// Names of the fields this change sets, in a stable order.
    /// The fields the patch sets, in [`Field::ALL`] order.
    pub fn fields(&self) -> Vec<Field> {
        Field::ALL
            .into_iter()
            .filter(|f| f.value(self).is_some())
            .collect()
    }

    /// The top-level members the patch sets (`upi` for the UPI fields), as a change lists them.
    pub fn field_names(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = self.fields().iter().map(|f| f.member()).collect();
        out.dedup();
        out
    }
}

fn parse_upi(c: &mut Collector, v: &Value, window: &TimestampWindow) -> Option<UpiChange> {
    let obj = c.object(v, "/upi", "upi")?;
    c.reject_unknown(obj, "/upi", &UPI_FIELDS);
    let mut all_present = true;
    for key in ["upi_number", "vpa", "action", "consent", "device"] {
        all_present &= c.required(obj, "/upi", key);
    }
    let upi_number = c.parsed(obj, "/upi", "upi_number", UpiNumber::parse);
    let vpa = c.parsed(obj, "/upi", "vpa", Vpa::parse);
    let action = c.parsed(obj, "/upi", "action", UpiAction::parse);
    match obj.get("consent") {
        None | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => c.push(
            "/upi/consent",
            "consent_required",
            "the user's consent is required: consent must be true",
        ),
        Some(_) => c.push("/upi/consent", "invalid_type", "consent must be a boolean"),
    }
    let device = obj.get("device").and_then(|d| parse_device(c, d, window));
    if !all_present {
        return None;
    }
    let (fingerprint, ts) = device?;
    Some(UpiChange {
        upi_number: upi_number?,
        vpa: vpa?,
        action: action?,
        device_fingerprint: fingerprint,
        fingerprint_timestamp: ts,
    })
}

fn parse_device(
    c: &mut Collector,
    v: &Value,
    window: &TimestampWindow,
) -> Option<(DeviceFingerprint, u64)> {
    let obj = c.object(v, "/upi/device", "upi.device")?;
    c.reject_unknown(obj, "/upi/device", &DEVICE_FIELDS);
    let has_fp = c.required(obj, "/upi/device", "fingerprint");
    let has_ts = c.required(obj, "/upi/device", "fingerprint_timestamp");
    let fp = c.parsed(obj, "/upi/device", "fingerprint", DeviceFingerprint::parse);
    let ts = match obj.get("fingerprint_timestamp") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|t| t > 0) => n.as_u64(),
        // JSON has one number type: 1767225600000.0 is the same integer.
        Some(Value::Number(n))
            if n.as_f64()
                .is_some_and(|f| f > 0.0 && f.fract() == 0.0 && f < 9.0e15) =>
        {
            n.as_f64().map(|f| f as u64)
        }
        Some(_) => {
            c.push(
                "/upi/device/fingerprint_timestamp",
                "invalid_timestamp",
                "fingerprint_timestamp must be a positive integer of UNIX milliseconds",
            );
            None
        }
        None => None,
    };
    let ts = ts.and_then(|t| match window.check(t) {
        Ok(t) => Some(t),
        Err(e) => {
            c.0.push(FieldError::from_invalid(
                "/upi/device/fingerprint_timestamp",
                e,
            ));
            None
        }
    });
    if !(has_fp && has_ts) {
        return None;
    }
    Some((fp?, ts?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn any() -> TimestampWindow {
        TimestampWindow::unbounded()
    }

    fn pointers(errs: &[FieldError]) -> Vec<(&str, &str)> {
        errs.iter().map(|e| (e.pointer.as_str(), e.code)).collect()
    }

    #[test]
    fn a_full_patch_parses() {
        let p = ProfilePatch::parse(&json!({
            "mobile_number": "9876543210", "mobile_country_code": "91",
            "email_address": "a@example.com", "first_name": "Ann", "last_name": "Lee",
            "upi": {"upi_number": "9876543210", "vpa": "ann@okaxis", "action": "change_vpa",
                    "consent": true, "device": {"fingerprint": "abc123", "fingerprint_timestamp": 1496918882000u64}}
        }), &any())
        .unwrap();
        assert_eq!(
            p.field_names(),
            [
                "mobile_number",
                "mobile_country_code",
                "email_address",
                "first_name",
                "last_name",
                "upi"
            ]
        );
        assert_eq!(p.upi.unwrap().fingerprint_timestamp, 1496918882000);
        let mut body = json!({"upi": {"upi_number": "9876543210", "vpa": "ann@okaxis", "action": "activate",
            "consent": true, "device": {"fingerprint": "f", "fingerprint_timestamp": 450.0}}});
        assert_eq!(
            ProfilePatch::parse(&body, &any())
                .unwrap()
                .upi
                .unwrap()
                .fingerprint_timestamp,
            450
        );
        body["upi"]["device"]["fingerprint_timestamp"] = json!(450.5);
        assert!(ProfilePatch::parse(&body, &any()).is_err());
    }

    #[test]
    fn every_violation_is_listed_with_its_pointer() {
        let errs = ProfilePatch::parse(
            &json!({
                "mobile_number": "+91 98", "email_address": ".a@ex.com", "first_name": "Jon Snow",
                "nickname": "x", "last_name": null,
                "upi": {"upi_number": "12", "vpa": "nope", "action": "delete", "consent": false,
                        "device": {"fingerprint_timestamp": "soon", "extra": 1}}
            }),
            &any(),
        )
        .unwrap_err();
        assert_eq!(
            pointers(&errs),
            [
                ("/nickname", "unknown_field"),
                ("/mobile_number", "not_digits"),
                ("/email_address", "invalid_email"),
                ("/first_name", "invalid_characters"),
                ("/last_name", "null_not_allowed"),
                ("/upi/upi_number", "invalid_length"),
                ("/upi/vpa", "invalid_vpa"),
                ("/upi/action", "invalid_action"),
                ("/upi/consent", "consent_required"),
                ("/upi/device/extra", "unknown_field"),
                ("/upi/device/fingerprint", "required"),
                ("/upi/device/fingerprint_timestamp", "invalid_timestamp"),
            ]
        );
    }

    #[test]
    fn upi_needs_device_and_body_must_be_a_non_empty_object() {
        let errs = ProfilePatch::parse(
            &json!({"upi": {"upi_number": "12345678", "vpa": "ab@ok",
            "action": "activate", "consent": true}}),
            &any(),
        )
        .unwrap_err();
        assert_eq!(pointers(&errs), [("/upi/device", "required")]);
        assert_eq!(
            pointers(&ProfilePatch::parse(&json!({}), &any()).unwrap_err()),
            [("", "empty_patch")]
        );
        assert_eq!(
            pointers(&ProfilePatch::parse(&json!([1]), &any()).unwrap_err()),
            [("", "invalid_type")]
        );
        assert_eq!(
            pointers(&ProfilePatch::parse(&json!({"a/b~": 1}), &any()).unwrap_err()),
            [("/a~1b~0", "unknown_field")]
        );
    }
}
