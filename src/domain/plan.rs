//! Which provider gets which fields: each field goes to the providers that hold it, one step per
//! linked object.

use super::contact::{CountryCode, Email, MobileNumber, PersonName};
use super::links::ProfileLinks;
use super::patch::{FieldError, ProfilePatch};
use super::upi::UpiChange;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    JuspayCustomer,
    JuspayWallet,
    RazorpayUpi,
}

impl Target {
    pub const ALL: [Target; 3] = [Self::JuspayCustomer, Self::JuspayWallet, Self::RazorpayUpi];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::JuspayCustomer => "juspay_customer",
            Self::JuspayWallet => "juspay_wallet",
            Self::RazorpayUpi => "razorpay_upi",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStep {
    pub step_no: i32,
    pub target: Target,
    /// The upstream object the step changes.
    pub upstream_ref: String,
    pub fields: Vec<&'static str>,
}

/// What one step sends, built from the patch at the moment of sending (the patch itself is what is
/// sealed at rest).
#[derive(Debug, Clone)]
pub enum StepRequest {
    JuspayCustomer {
        customer_id: String,
        mobile_number: Option<MobileNumber>,
        mobile_country_code: Option<CountryCode>,
        email_address: Option<Email>,
        first_name: Option<PersonName>,
        last_name: Option<PersonName>,
    },
    JuspayWallet {
        wallet_id: String,
        mobile_number: MobileNumber,
    },
    RazorpayUpi {
        customer_reference: String,
        upi: UpiChange,
    },
}

const CUSTOMER_FIELDS: [&str; 5] = [
    "mobile_number",
    "mobile_country_code",
    "email_address",
    "first_name",
    "last_name",
];

pub fn plan(
    patch: &ProfilePatch,
    links: &ProfileLinks,
) -> Result<Vec<PlannedStep>, Vec<FieldError>> {
    let fields = patch.field_names();
    let mut steps = Vec::new();
    let mut errors = Vec::new();
    let customer_fields: Vec<&'static str> = fields
        .iter()
        .copied()
        .filter(|f| CUSTOMER_FIELDS.contains(f))
        .collect();
    if !customer_fields.is_empty() {
        match &links.juspay_customer_id {
            Some(id) => steps.push(PlannedStep {
                step_no: 0,
                target: Target::JuspayCustomer,
                upstream_ref: id.clone(),
                fields: customer_fields.clone(),
            }),
            None => {
                for f in &customer_fields {
                    errors.push(FieldError::new(
                        format!("/{f}"),
                        "missing_link",
                        "the user has no juspay_customer_id link; set it with PUT /profile/{user}/links",
                    ));
                }
            }
        }
    }
    if patch.mobile_number.is_some() {
        for wallet in &links.juspay_wallet_ids {
            steps.push(PlannedStep {
                step_no: 0,
                target: Target::JuspayWallet,
                upstream_ref: wallet.clone(),
                fields: vec!["mobile_number"],
            });
        }
    }
    if patch.upi.is_some() {
        match &links.razorpay_customer_reference {
            Some(r) => steps.push(PlannedStep {
                step_no: 0,
                target: Target::RazorpayUpi,
                upstream_ref: r.clone(),
                fields: vec!["upi_number", "vpa", "action"],
            }),
            None => errors.push(FieldError::new(
                "/upi",
                "missing_link",
                "the user has no razorpay_customer_reference link; set it with PUT /profile/{user}/links",
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    for (i, s) in steps.iter_mut().enumerate() {
        s.step_no = i as i32;
    }
    Ok(steps)
}

impl PlannedStep {
    pub fn request(&self, patch: &ProfilePatch) -> Option<StepRequest> {
        Some(match self.target {
            Target::JuspayCustomer => StepRequest::JuspayCustomer {
                customer_id: self.upstream_ref.clone(),
                mobile_number: patch.mobile_number.clone(),
                mobile_country_code: patch.mobile_country_code.clone(),
                email_address: patch.email_address.clone(),
                first_name: patch.first_name.clone(),
                last_name: patch.last_name.clone(),
            },
            Target::JuspayWallet => StepRequest::JuspayWallet {
                wallet_id: self.upstream_ref.clone(),
                mobile_number: patch.mobile_number.clone()?,
            },
            Target::RazorpayUpi => StepRequest::RazorpayUpi {
                customer_reference: self.upstream_ref.clone(),
                upi: patch.upi.clone()?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TimestampWindow;
    use serde_json::json;

    fn links() -> ProfileLinks {
        ProfileLinks {
            juspay_customer_id: Some("cst_1".into()),
            juspay_wallet_ids: vec!["wlt_a".into(), "wlt_b".into()],
            razorpay_customer_reference: Some("cref".into()),
        }
    }

    fn targets(steps: &[PlannedStep]) -> Vec<(i32, &str, &str, Vec<&str>)> {
        steps
            .iter()
            .map(|s| {
                (
                    s.step_no,
                    s.target.as_str(),
                    s.upstream_ref.as_str(),
                    s.fields.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn fields_route_to_their_providers() {
        let p = ProfilePatch::parse(
            &json!({"mobile_number": "9876543210", "mobile_country_code": "91"}),
            &TimestampWindow::unbounded(),
        )
        .unwrap();
        assert_eq!(
            targets(&plan(&p, &links()).unwrap()),
            [
                (
                    0,
                    "juspay_customer",
                    "cst_1",
                    vec!["mobile_number", "mobile_country_code"]
                ),
                (1, "juspay_wallet", "wlt_a", vec!["mobile_number"]),
                (2, "juspay_wallet", "wlt_b", vec!["mobile_number"]),
            ]
        );
        let p = ProfilePatch::parse(
            &json!({"email_address": "a@b.co"}),
            &TimestampWindow::unbounded(),
        )
        .unwrap();
        assert_eq!(
            targets(&plan(&p, &links()).unwrap()),
            [(0, "juspay_customer", "cst_1", vec!["email_address"])]
        );
        let p = ProfilePatch::parse(&json!({"upi": {"upi_number": "12345678", "vpa": "ab@ok",
            "action": "activate", "consent": true, "device": {"fingerprint": "f", "fingerprint_timestamp": 1}}}), &TimestampWindow::unbounded())
        .unwrap();
        assert_eq!(
            targets(&plan(&p, &links()).unwrap()),
            [(
                0,
                "razorpay_upi",
                "cref",
                vec!["upi_number", "vpa", "action"]
            )]
        );
    }

    #[test]
    fn a_missing_link_is_a_field_error() {
        let p = ProfilePatch::parse(&json!({"first_name": "Ann", "upi": {"upi_number": "12345678", "vpa": "ab@ok",
            "action": "activate", "consent": true, "device": {"fingerprint": "f", "fingerprint_timestamp": 1}}}), &TimestampWindow::unbounded())
        .unwrap();
        let errs = plan(&p, &ProfileLinks::default()).unwrap_err();
        let ptrs: Vec<_> = errs.iter().map(|e| (e.pointer.as_str(), e.code)).collect();
        assert_eq!(
            ptrs,
            [("/first_name", "missing_link"), ("/upi", "missing_link")]
        );
    }
}
