//! Which provider gets which fields: each registered provider declares the fields it takes and
//! its member of the links; planning asks every one of them, in registry order.

use super::field::Field;
use super::links::{LinkMember, ProfileLinks};
use super::patch::{FieldError, ProfilePatch};
use super::target::Target;

/// What planning needs to know of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderSpec {
    pub target: Target,
    /// Its member of the links body. A provider with one object per user needs it linked before
    /// a change that sets its fields; one with several sends a step to each (none for none).
    pub link: LinkMember,
    /// The fields it takes, in [`Field::ALL`] order.
    pub fields: &'static [Field],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStep {
    pub step_no: i32,
    pub target: Target,
    /// The upstream object the step changes.
    pub upstream_ref: String,
    pub fields: Vec<Field>,
}

/// What one step sends: the planned step and the patch, from which the step's provider builds its
/// own upstream request at the moment of sending (the patch itself is what is sealed at rest).
#[derive(Debug, Clone, Copy)]
pub struct StepRequest<'a> {
    pub step: &'a PlannedStep,
    pub patch: &'a ProfilePatch,
}

impl<'a> StepRequest<'a> {
    /// The patch's value of `field`, when the step sets it.
    pub fn value(&self, field: Field) -> Option<&'a str> {
        if self.step.fields.contains(&field) {
            field.value(self.patch)
        } else {
            None
        }
    }
}

pub fn plan(
    patch: &ProfilePatch,
    links: &ProfileLinks,
    providers: &[ProviderSpec],
) -> Result<Vec<PlannedStep>, Vec<FieldError>> {
    let set = patch.fields();
    let mut steps = Vec::new();
    let mut errors = Vec::new();
    for p in providers {
        let fields: Vec<Field> = set
            .iter()
            .copied()
            .filter(|f| p.fields.contains(f))
            .collect();
        if fields.is_empty() {
            continue;
        }
        let objects = links.objects(p.target);
        if objects.is_empty() && !p.link.many {
            let mut members: Vec<&str> = fields.iter().map(|f| f.member()).collect();
            members.dedup();
            for m in members {
                errors.push(FieldError::new(
                    format!("/{m}"),
                    "missing_link",
                    format!(
                        "the user has no {} link; set it with PUT /profile/{{user}}/links",
                        p.link.name
                    ),
                ));
            }
            continue;
        }
        for object in objects {
            steps.push(PlannedStep {
                step_no: steps.len() as i32,
                target: p.target,
                upstream_ref: object.clone(),
                fields: fields.clone(),
            });
        }
    }
    if errors.is_empty() {
        Ok(steps)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TimestampWindow;
    use serde_json::json;

    const PROVIDERS: [ProviderSpec; 3] = [
        ProviderSpec {
            target: Target::JUSPAY_CUSTOMER,
            link: LinkMember::one(Target::JUSPAY_CUSTOMER, "juspay_customer_id"),
            fields: &[
                Field::MobileNumber,
                Field::MobileCountryCode,
                Field::EmailAddress,
                Field::FirstName,
                Field::LastName,
            ],
        },
        ProviderSpec {
            target: Target::JUSPAY_WALLET,
            link: LinkMember::many(Target::JUSPAY_WALLET, "juspay_wallet_ids"),
            fields: &[Field::MobileNumber],
        },
        ProviderSpec {
            target: Target::RAZORPAY_UPI,
            link: LinkMember::one(Target::RAZORPAY_UPI, "razorpay_customer_reference"),
            fields: &[Field::UpiNumber, Field::Vpa, Field::UpiAction],
        },
    ];

    fn members() -> Vec<LinkMember> {
        PROVIDERS.iter().map(|p| p.link).collect()
    }

    fn links() -> ProfileLinks {
        ProfileLinks::empty(&members())
            .with(Target::JUSPAY_CUSTOMER, &["cst_1"])
            .with(Target::JUSPAY_WALLET, &["wlt_a", "wlt_b"])
            .with(Target::RAZORPAY_UPI, &["cref"])
    }

    fn plan(p: &ProfilePatch, l: &ProfileLinks) -> Result<Vec<PlannedStep>, Vec<FieldError>> {
        super::plan(p, l, &PROVIDERS)
    }

    fn targets(steps: &[PlannedStep]) -> Vec<(i32, &str, &str, Vec<&str>)> {
        steps
            .iter()
            .map(|s| {
                (
                    s.step_no,
                    s.target.as_str(),
                    s.upstream_ref.as_str(),
                    s.fields.iter().map(|f| f.name()).collect(),
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
        let errs = plan(&p, &ProfileLinks::empty(&members())).unwrap_err();
        let ptrs: Vec<_> = errs.iter().map(|e| (e.pointer.as_str(), e.code)).collect();
        assert_eq!(
            ptrs,
            [("/first_name", "missing_link"), ("/upi", "missing_link")]
        );
    }
}
