//! Juspay customer: `POST /customers/{id}`, form-urlencoded; `GET /customers/{id}` to read back.

pub mod wire;

use super::classify::bad_success;
use super::juspay::{JuspayClient, JuspayConfig};
use super::{
    BuildContext, FieldReading, ProviderAdapter, Reading, StepError, StepResult, cannot_build,
};
use crate::domain::{Field, LinkMember, ProviderSpec, StepRequest, Target};
use futures_util::future::BoxFuture;
use reqwest::header::CONTENT_TYPE;
use std::sync::Arc;

const TARGET: Target = Target::JUSPAY_CUSTOMER;

pub const SPEC: ProviderSpec = ProviderSpec {
    target: TARGET,
    link: LinkMember::one(TARGET, "juspay_customer_id"),
    fields: &[
        Field::MobileNumber,
        Field::MobileCountryCode,
        Field::EmailAddress,
        Field::FirstName,
        Field::LastName,
    ],
};

pub fn build(ctx: &BuildContext<'_>) -> Result<Arc<dyn ProviderAdapter>, String> {
    let config = JuspayConfig::from_context(ctx);
    Ok(Arc::new(JuspayCustomer::new(ctx.client.clone(), config)))
}

pub struct JuspayCustomer {
    juspay: JuspayClient,
}

impl JuspayCustomer {
    pub fn new(client: reqwest::Client, config: JuspayConfig) -> Self {
        Self {
            juspay: JuspayClient::new(client, config),
        }
    }

    fn request(
        &self,
        method: reqwest::Method,
        customer_id: &str,
    ) -> Result<reqwest::RequestBuilder, StepError> {
        Ok(self
            .juspay
            .request(TARGET, method, &["customers", customer_id])?
            // Juspay routes all calls of one customer to one shard by this id.
            .header("x-routing-id", customer_id))
    }

    async fn fetch(
        &self,
        request: reqwest::RequestBuilder,
        customer_id: &str,
    ) -> Result<(u16, wire::Customer), StepError> {
        let response = self.juspay.send(TARGET, request).await?;
        let customer: wire::Customer = serde_json::from_slice(&response.body)
            .map_err(|_| bad_success(TARGET, response.status, "its body is not a customer"))?;
        let names_other = customer.id.as_deref().is_some_and(|id| id != customer_id)
            && customer.object_reference_id.as_deref() != Some(customer_id);
        if names_other {
            return Err(bad_success(
                TARGET,
                response.status,
                "it names another customer",
            ));
        }
        Ok((response.status, customer))
    }

    async fn update(&self, customer_id: &str, form: wire::UpdateCustomerForm<'_>) -> StepResult {
        let body = serde_urlencoded::to_string(&form).map_err(|_| cannot_build(TARGET))?;
        let request = self
            .request(reqwest::Method::POST, customer_id)?
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body);
        let (status, customer) = self.fetch(request, customer_id).await?;
        match mismatch(&form, &customer) {
            None => Ok(()),
            Some(field) => Err(bad_success(
                TARGET,
                status,
                &format!("its answer does not show the {field} sent"),
            )),
        }
    }

    async fn read_customer(
        &self,
        customer_id: &str,
        form: wire::UpdateCustomerForm<'_>,
    ) -> Result<Reading, StepError> {
        let request = self.request(reqwest::Method::GET, customer_id)?;
        let (_, customer) = self.fetch(request, customer_id).await?;
        Ok(reading(&form, &customer))
    }
}

/// Each field the form can send, with what was sent and what the answer shows.
fn pairs<'a>(
    form: &wire::UpdateCustomerForm<'a>,
    c: &'a wire::Customer,
) -> [(Field, Option<&'a str>, Option<&'a str>); 5] {
    [
        (
            Field::MobileNumber,
            form.mobile_number,
            c.mobile_number.as_deref(),
        ),
        (
            Field::MobileCountryCode,
            form.mobile_country_code,
            c.mobile_country_code.as_deref(),
        ),
        (
            Field::EmailAddress,
            form.email_address,
            c.email_address.as_deref(),
        ),
        (Field::FirstName, form.first_name, c.first_name.as_deref()),
        (Field::LastName, form.last_name, c.last_name.as_deref()),
    ]
}

/// The first sent field the answer does not show with the sent value. A field the answer omits
/// proves nothing either way (older `version`s return fewer fields, and a proxy or a hostile
/// upstream can answer `{"id": ...}` alone): the step stays unknown until a read-back confirms it.
fn mismatch(form: &wire::UpdateCustomerForm<'_>, c: &wire::Customer) -> Option<Field> {
    pairs(form, c)
        .into_iter()
        .find_map(|(field, sent, got)| match (sent, got) {
            (Some(sent), Some(got)) if !sent.eq_ignore_ascii_case(got) => Some(field),
            (Some(_), None) => Some(field),
            _ => None,
        })
}

/// Confirming a write needs positive evidence: the object is the one asked for and every sent
/// field is present with the sent value (absent is "not held", unlike in an echo).
fn reading(form: &wire::UpdateCustomerForm<'_>, c: &wire::Customer) -> Reading {
    Reading {
        identified: c.id.is_some() || c.object_reference_id.is_some(),
        fields: pairs(form, c)
            .into_iter()
            .filter_map(|(field, sent, got)| {
                let sent = sent?;
                let holds = got.is_some_and(|got| sent.eq_ignore_ascii_case(got));
                Some(FieldReading::new(field, got, holds))
            })
            .collect(),
    }
}

/// The form of the fields the step sets, built from the patch.
fn form<'a>(request: &StepRequest<'a>) -> wire::UpdateCustomerForm<'a> {
    wire::UpdateCustomerForm {
        mobile_number: request.value(Field::MobileNumber),
        mobile_country_code: request.value(Field::MobileCountryCode),
        email_address: request.value(Field::EmailAddress),
        first_name: request.value(Field::FirstName),
        last_name: request.value(Field::LastName),
    }
}

impl ProviderAdapter for JuspayCustomer {
    fn target(&self) -> Target {
        TARGET
    }

    fn apply<'a>(&'a self, request: &'a StepRequest<'a>) -> BoxFuture<'a, StepResult> {
        Box::pin(self.update(&request.step.upstream_ref, form(request)))
    }

    fn read<'a>(
        &'a self,
        request: &'a StepRequest<'a>,
    ) -> BoxFuture<'a, Result<Reading, StepError>> {
        Box::pin(self.read_customer(&request.step.upstream_ref, form(request)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer(email: Option<&str>) -> wire::Customer {
        wire::Customer {
            id: Some("cst_1".into()),
            object_reference_id: None,
            mobile_number: Some("9876543210".into()),
            mobile_country_code: None,
            email_address: email.map(str::to_string),
            first_name: None,
            last_name: None,
        }
    }

    #[test]
    fn read_back_needs_every_sent_field_present_and_equal() {
        let form = wire::UpdateCustomerForm {
            email_address: Some("new@example.com"),
            ..Default::default()
        };
        assert!(reading(&form, &customer(Some("NEW@example.com"))).holds_all());
        assert!(!reading(&form, &customer(Some("old@example.com"))).holds_all());
        // An absent field is not evidence that the write happened.
        assert!(!reading(&form, &customer(None)).holds_all());
        // Nor is an answer that names no customer.
        let mut anonymous = customer(Some("new@example.com"));
        anonymous.id = None;
        assert!(!reading(&form, &anonymous).holds_all());
        // What a dry run shows: the current value, masked, per field sent.
        assert_eq!(
            reading(&form, &customer(Some("old@example.com"))).fields,
            [FieldReading {
                field: Field::EmailAddress,
                current: Some("o***@example.com".into()),
                holds: false,
            }]
        );
        // Nor is an echo that omits it (issue 14: `{"id":"big"}` counted as applied): the step
        // stays unknown until a read-back shows the value.
        assert_eq!(mismatch(&form, &customer(None)), Some(Field::EmailAddress));
        assert_eq!(mismatch(&form, &customer(Some("NEW@example.com"))), None);
    }
}
