//! Juspay customer: `POST /customers/{id}`, form-urlencoded; `GET /customers/{id}` to read back.

pub mod wire;

use super::classify::bad_success;
use super::http::basic_auth;
use super::{
    FieldReading, JuspayConfig, ProviderAdapter, Reading, StepError, StepResult, endpoint,
    juspay_error, misrouted,
};
use crate::domain::{StepRequest, Target};
use futures_util::future::BoxFuture;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};

const TARGET: Target = Target::JuspayCustomer;

pub struct JuspayCustomer {
    client: reqwest::Client,
    config: JuspayConfig,
    authorization: HeaderValue,
}

impl JuspayCustomer {
    pub fn new(client: reqwest::Client, config: JuspayConfig) -> Self {
        let authorization = super::sensitive(&basic_auth(config.api_key.expose(), ""));
        Self {
            client,
            config,
            authorization,
        }
    }

    fn request(
        &self,
        method: reqwest::Method,
        customer_id: &str,
    ) -> Result<reqwest::RequestBuilder, StepError> {
        let url = endpoint(TARGET, &self.config.base_url, &["customers", customer_id])?;
        let request = self
            .client
            .request(method, url)
            .header(AUTHORIZATION, self.authorization.clone())
            .header("version", &self.config.version)
            // Juspay routes all calls of one customer to one shard by this id.
            .header("x-routing-id", customer_id);
        Ok(match &self.config.merchant_id {
            Some(m) => request.header("x-merchantid", m),
            None => request,
        })
    }

    async fn fetch(
        &self,
        request: reqwest::RequestBuilder,
        customer_id: &str,
    ) -> Result<(u16, wire::Customer), StepError> {
        let response =
            super::exchange(TARGET, request, &self.config.read, juspay_error::facts).await?;
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
        let body = serde_urlencoded::to_string(&form).map_err(|_| misrouted(TARGET))?;
        let request = self
            .request(reqwest::Method::POST, customer_id)?
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body);
        let (status, customer) = self.fetch(request, customer_id).await?;
        match mismatch(&form, &customer) {
            None => Ok(()),
            Some(name) => Err(bad_success(
                TARGET,
                status,
                &format!("its answer does not show the {name} sent"),
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

/// The first sent field the answer does not show with the sent value. A field the answer omits
/// proves nothing either way (older `version`s return fewer fields, and a proxy or a hostile
/// upstream can answer `{"id": ...}` alone): the step stays unknown until a read-back confirms it.
fn mismatch(form: &wire::UpdateCustomerForm<'_>, c: &wire::Customer) -> Option<&'static str> {
    let echoes = [
        (
            "mobile_number",
            form.mobile_number,
            c.mobile_number.as_deref(),
        ),
        (
            "mobile_country_code",
            form.mobile_country_code,
            c.mobile_country_code.as_deref(),
        ),
        (
            "email_address",
            form.email_address,
            c.email_address.as_deref(),
        ),
        ("first_name", form.first_name, c.first_name.as_deref()),
        ("last_name", form.last_name, c.last_name.as_deref()),
    ];
    echoes
        .into_iter()
        .find_map(|(name, sent, got)| match (sent, got) {
            (Some(sent), Some(got)) if !sent.eq_ignore_ascii_case(got) => Some(name),
            (Some(_), None) => Some(name),
            _ => None,
        })
}

/// Confirming a write needs positive evidence: the object is the one asked for and every sent
/// field is present with the sent value (absent is "not held", unlike in an echo).
fn reading(form: &wire::UpdateCustomerForm<'_>, c: &wire::Customer) -> Reading {
    let pairs = [
        (
            "mobile_number",
            form.mobile_number,
            c.mobile_number.as_deref(),
        ),
        (
            "mobile_country_code",
            form.mobile_country_code,
            c.mobile_country_code.as_deref(),
        ),
        (
            "email_address",
            form.email_address,
            c.email_address.as_deref(),
        ),
        ("first_name", form.first_name, c.first_name.as_deref()),
        ("last_name", form.last_name, c.last_name.as_deref()),
    ];
    Reading {
        identified: c.id.is_some() || c.object_reference_id.is_some(),
        fields: pairs
            .into_iter()
            .filter_map(|(name, sent, got)| {
                let sent = sent?;
                let holds = got.is_some_and(|got| sent.eq_ignore_ascii_case(got));
                Some(FieldReading::new(name, got, holds))
            })
            .collect(),
    }
}

fn form(request: &StepRequest) -> Option<(&str, wire::UpdateCustomerForm<'_>)> {
    let StepRequest::JuspayCustomer {
        customer_id,
        mobile_number,
        mobile_country_code,
        email_address,
        first_name,
        last_name,
    } = request
    else {
        return None;
    };
    Some((
        customer_id,
        wire::UpdateCustomerForm {
            mobile_number: mobile_number.as_ref().map(|v| v.as_str()),
            mobile_country_code: mobile_country_code.as_ref().map(|v| v.as_str()),
            email_address: email_address.as_ref().map(|v| v.as_str()),
            first_name: first_name.as_ref().map(|v| v.as_str()),
            last_name: last_name.as_ref().map(|v| v.as_str()),
        },
    ))
}

impl ProviderAdapter for JuspayCustomer {
    fn target(&self) -> Target {
        TARGET
    }

    fn apply<'a>(&'a self, request: &'a StepRequest) -> BoxFuture<'a, StepResult> {
        Box::pin(async move {
            let (id, form) = form(request).ok_or_else(|| misrouted(TARGET))?;
            self.update(id, form).await
        })
    }

    fn read<'a>(&'a self, request: &'a StepRequest) -> BoxFuture<'a, Result<Reading, StepError>> {
        Box::pin(async move {
            let (id, form) = form(request).ok_or_else(|| misrouted(TARGET))?;
            self.read_customer(id, form).await
        })
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
                field: "email_address",
                current: Some("o***@example.com".into()),
                holds: false,
            }]
        );
        // Nor is an echo that omits it (issue 14: `{"id":"big"}` counted as applied): the step
        // stays unknown until a read-back shows the value.
        assert_eq!(mismatch(&form, &customer(None)), Some("email_address"));
        assert_eq!(mismatch(&form, &customer(Some("NEW@example.com"))), None);
    }
}
