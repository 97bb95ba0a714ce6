//! Razorpay TPAP: `PATCH /v1/upi/tpap/upi_number`, JSON, with the end user's device headers.

pub mod wire;

use super::classify::{ErrorFacts, bad_success, safe_code, says_not_found};
use super::http::{ReadLimits, basic_auth};
use super::{
    BuildContext, FieldReading, ProviderAdapter, Reading, StepError, StepResult, cannot_build,
    endpoint,
};
use crate::domain::{Field, LinkMember, ProviderSpec, StepRequest, Target, UpiChange};
use futures_util::future::BoxFuture;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::Value;
use std::sync::Arc;

const TARGET: Target = Target::RAZORPAY_UPI;

pub const SPEC: ProviderSpec = ProviderSpec {
    target: TARGET,
    link: LinkMember::one(TARGET, "razorpay_customer_reference"),
    fields: &[Field::UpiNumber, Field::Vpa, Field::UpiAction],
};

/// The settings of the Razorpay account (`[razorpay]`).
#[derive(Debug, Clone)]
pub struct RazorpayConfig {
    pub base_url: String,
    pub key_id: String,
    pub key_secret: crate::secret::Secret,
    pub read: ReadLimits,
}

impl RazorpayConfig {
    /// The resolved `[razorpay]` account, read with this provider's own limits.
    pub fn from_context(ctx: &BuildContext<'_>) -> Self {
        let r = &ctx.runtime.razorpay;
        Self {
            base_url: r.base_url.clone(),
            key_id: r.key_id.clone(),
            key_secret: r.key_secret.clone(),
            read: ctx.read_limits(),
        }
    }
}

pub fn build(ctx: &BuildContext<'_>) -> Result<Arc<dyn ProviderAdapter>, String> {
    let config = RazorpayConfig::from_context(ctx);
    Ok(Arc::new(RazorpayUpi::new(ctx.client.clone(), config)))
}

pub struct RazorpayUpi {
    client: reqwest::Client,
    config: RazorpayConfig,
    authorization: HeaderValue,
}

impl RazorpayUpi {
    pub fn new(client: reqwest::Client, config: RazorpayConfig) -> Self {
        let authorization =
            super::sensitive(&basic_auth(&config.key_id, config.key_secret.expose()));
        Self {
            client,
            config,
            authorization,
        }
    }

    /// Every TPAP call carries the credentials and the end user's device headers.
    fn request(
        &self,
        method: reqwest::Method,
        customer_reference: &str,
        upi: &UpiChange,
    ) -> Result<reqwest::RequestBuilder, StepError> {
        Ok(self
            .client
            .request(
                method,
                endpoint(
                    TARGET,
                    &self.config.base_url,
                    &["v1", "upi", "tpap", "upi_number"],
                )?,
            )
            .header(AUTHORIZATION, self.authorization.clone())
            .header("x-device-fingerprint", upi.device_fingerprint.as_str())
            .header(
                "x-device-fingerprint-timestamp",
                upi.fingerprint_timestamp.to_string(),
            )
            .header("x-customer-reference", customer_reference))
    }

    async fn read_number(
        &self,
        customer_reference: &str,
        upi: &UpiChange,
    ) -> Result<Reading, StepError> {
        let request = self.request(reqwest::Method::GET, customer_reference, upi)?;
        let response = super::exchange(TARGET, request, &self.config.read, facts).await?;
        let list: wire::UpiNumberList = serde_json::from_slice(&response.body).map_err(|_| {
            bad_success(TARGET, response.status, "its body is not a UPI number list")
        })?;
        let found = list
            .upi_numbers
            .unwrap_or_default()
            .into_iter()
            .find(|n| n.number.as_deref() == Some(upi.upi_number.as_str()));
        Ok(reading(upi, found.as_ref()))
    }

    async fn update(&self, customer_reference: &str, upi: &UpiChange) -> StepResult {
        let body = wire::UpdateUpiNumber {
            upi_number: upi.upi_number.as_str(),
            vpa: upi.vpa.as_str(),
            action: upi.action.as_str(),
            consent: true,
        };
        let request = self
            .request(reqwest::Method::PATCH, customer_reference, upi)?
            .header(CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body).map_err(|_| cannot_build(TARGET))?);
        let response = super::exchange(TARGET, request, &self.config.read, facts).await?;
        let entity: wire::UpiNumberEntity = serde_json::from_slice(&response.body)
            .map_err(|_| bad_success(TARGET, response.status, "its body is not a UPI number"))?;
        if entity.upi_number.as_deref() != Some(upi.upi_number.as_str()) {
            return Err(bad_success(
                TARGET,
                response.status,
                "it names another UPI number",
            ));
        }
        let expected = upi.action.expected_status();
        if entity.status.as_deref() != Some(expected) {
            // Razorpay can answer 200 with a state nobody asked for; that is not an applied step.
            let mut e = bad_success(
                TARGET,
                response.status,
                &format!("the number is not {expected} after {}", upi.action.as_str()),
            );
            e.outcome_unknown = false;
            e.upstream_code = entity.status.as_deref().and_then(safe_code);
            return Err(e);
        }
        if upi.action == crate::domain::UpiAction::ChangeVpa
            && !entity
                .vpa
                .as_deref()
                .is_some_and(|v| v.eq_ignore_ascii_case(upi.vpa.as_str()))
        {
            return Err(bad_success(
                TARGET,
                response.status,
                "its vpa is not the one sent",
            ));
        }
        Ok(())
    }
}

/// The number as the customer's list shows it. It holds the change when its status is the one
/// the action leads to and, for `change_vpa`, its VPA is the one sent; for the other actions
/// Razorpay keeps the VPA, so it is not something the step changes. For `action` the current
/// value is the number's status (`active`, `inactive`, `deregistered`).
fn reading(upi: &UpiChange, found: Option<&wire::ListedUpiNumber>) -> Reading {
    let status = found.and_then(|n| n.status.as_deref());
    let vpa = found.and_then(|n| n.vpa.as_deref());
    let status_holds = status == Some(upi.action.expected_status());
    let vpa_holds = found.is_some()
        && (upi.action != crate::domain::UpiAction::ChangeVpa
            || vpa.is_some_and(|v| v.eq_ignore_ascii_case(upi.vpa.as_str())));
    Reading {
        identified: true,
        fields: vec![
            FieldReading::new(
                Field::UpiNumber,
                found.and_then(|n| n.number.as_deref()),
                found.is_some(),
            ),
            FieldReading::new(Field::Vpa, vpa, vpa_holds),
            FieldReading::new(Field::UpiAction, status, status_holds),
        ],
    }
}

/// Facts from `{"error": {...}}`. The code is an open set and does not follow HTTP semantics, so it
/// is kept for the record but only `reason`/`description` hint at "not found".
fn facts(body: &[u8]) -> ErrorFacts {
    let Ok(envelope) = serde_json::from_slice::<wire::ErrorEnvelope>(body) else {
        return ErrorFacts::default();
    };
    let text = |v: &Option<Value>| v.as_ref().and_then(Value::as_str).unwrap_or("").to_string();
    let e = envelope.error;
    let reason = text(&e.reason);
    let description = text(&e.description);
    let field = text(&e.field);
    // The fields this adapter sends, and the consent it sends with them.
    let fields = SPEC
        .fields
        .iter()
        .map(|f| f.name())
        .chain(["consent"])
        .filter(|f| *f == field)
        .collect();
    ErrorFacts {
        envelope: true,
        upstream_code: safe_code(&text(&e.code)),
        not_found: says_not_found(&reason) || says_not_found(&description),
        fields,
    }
}

impl ProviderAdapter for RazorpayUpi {
    fn target(&self) -> Target {
        TARGET
    }

    fn apply<'a>(&'a self, request: &'a StepRequest<'a>) -> BoxFuture<'a, StepResult> {
        Box::pin(async move {
            let upi = request
                .patch
                .upi
                .as_ref()
                .ok_or_else(|| cannot_build(TARGET))?;
            self.update(&request.step.upstream_ref, upi).await
        })
    }

    fn read<'a>(
        &'a self,
        request: &'a StepRequest<'a>,
    ) -> BoxFuture<'a, Result<Reading, StepError>> {
        Box::pin(async move {
            let upi = request
                .patch
                .upi
                .as_ref()
                .ok_or_else(|| cannot_build(TARGET))?;
            self.read_number(&request.step.upstream_ref, upi).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(vpa: &str, action: &str) -> UpiChange {
        UpiChange {
            upi_number: crate::domain::UpiNumber::parse("9876543210").unwrap(),
            vpa: crate::domain::Vpa::parse(vpa).unwrap(),
            action: crate::domain::UpiAction::parse(action).unwrap(),
            device_fingerprint: crate::domain::DeviceFingerprint::parse("f").unwrap(),
            fingerprint_timestamp: 1,
        }
    }

    fn listed(vpa: &str, status: &str) -> wire::ListedUpiNumber {
        wire::ListedUpiNumber {
            number: Some("9876543210".into()),
            vpa: Some(vpa.into()),
            status: Some(status.into()),
        }
    }

    fn holds(r: &Reading) -> Vec<(&str, bool)> {
        r.fields.iter().map(|f| (f.field.name(), f.holds)).collect()
    }

    #[test]
    fn a_number_holds_the_status_its_action_leads_to_and_the_vpa_only_for_change_vpa() {
        let active = listed("alice@okaxis", "active");
        let r = reading(&change("alice@okaxis", "change_vpa"), Some(&active));
        assert!(r.holds_all());
        assert_eq!(
            r.fields
                .iter()
                .map(|f| f.current.as_deref())
                .collect::<Vec<_>>(),
            [Some("******3210"), Some("****@okaxis"), Some("active")]
        );
        let r = reading(&change("alice.new@okaxis", "change_vpa"), Some(&active));
        assert_eq!(
            holds(&r),
            [("upi_number", true), ("vpa", false), ("action", true)]
        );
        assert!(!r.holds_all());
        // Inactivating keeps the VPA: only the status would change.
        let r = reading(&change("other@okaxis", "inactivate"), Some(&active));
        assert_eq!(
            holds(&r),
            [("upi_number", true), ("vpa", true), ("action", false)]
        );
        // A number the customer does not have holds nothing.
        let r = reading(&change("alice@okaxis", "activate"), None);
        assert_eq!(
            holds(&r),
            [("upi_number", false), ("vpa", false), ("action", false)]
        );
        assert!(r.fields.iter().all(|f| f.current.is_none()));
    }

    #[test]
    fn error_envelope_facts() {
        let f = facts(br#"{"error":{"code":"SERVER_ERROR","description":"UPI number does not exist","field":null,"reason":"NA"}}"#);
        assert!(f.envelope && f.not_found);
        assert_eq!(f.upstream_code.as_deref(), Some("SERVER_ERROR"));
        let f = facts(
            br#"{"error":{"code":"BAD_REQUEST_ERROR","field":"vpa","reason":"invalid_vpa"}}"#,
        );
        assert_eq!(f.fields, ["vpa"]);
        assert!(!f.not_found);
        assert_eq!(facts(b"Bad Gateway"), ErrorFacts::default());
        assert_eq!(facts(br#"{"error":"x"}"#), ErrorFacts::default());
    }
}
