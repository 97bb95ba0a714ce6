//! Juspay customer: `POST /customers/{id}`, form-urlencoded.

pub mod wire;

use super::classify::{self, bad_success};
use super::http::{self, basic_auth};
use super::{JuspayConfig, ProviderAdapter, StepResult, endpoint, juspay_error, misrouted};
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

    async fn update(&self, customer_id: &str, form: wire::UpdateCustomerForm<'_>) -> StepResult {
        let body = serde_urlencoded::to_string(&form).map_err(|_| misrouted(TARGET))?;
        let mut request = self
            .client
            .post(endpoint(
                &self.config.base_url,
                &format!("/customers/{customer_id}"),
            ))
            .header(AUTHORIZATION, self.authorization.clone())
            .header("version", &self.config.version)
            // Juspay routes all calls of one customer to one shard by this id.
            .header("x-routing-id", customer_id)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body);
        if let Some(m) = &self.config.merchant_id {
            request = request.header("x-merchantid", m);
        }
        let response = http::send(request, self.config.timeout)
            .await
            .map_err(|e| classify::transport_failure(TARGET, e))?;
        if !response.is_success() {
            return Err(classify::http_failure(
                TARGET,
                response.status,
                response.retry_after,
                juspay_error::facts(&response.body),
            ));
        }
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
        // Each sent field must come back as sent; a field the response schema omits is not a
        // contradiction (older `version`s return fewer fields).
        let echoes = [
            (
                "mobile_number",
                form.mobile_number,
                customer.mobile_number.as_deref(),
            ),
            (
                "mobile_country_code",
                form.mobile_country_code,
                customer.mobile_country_code.as_deref(),
            ),
            (
                "email_address",
                form.email_address,
                customer.email_address.as_deref(),
            ),
            (
                "first_name",
                form.first_name,
                customer.first_name.as_deref(),
            ),
            ("last_name", form.last_name, customer.last_name.as_deref()),
        ];
        for (name, sent, got) in echoes {
            if let (Some(sent), Some(got)) = (sent, got)
                && !sent.eq_ignore_ascii_case(got)
            {
                return Err(bad_success(
                    TARGET,
                    response.status,
                    &format!("its {name} is not the value sent"),
                ));
            }
        }
        Ok(())
    }
}

impl ProviderAdapter for JuspayCustomer {
    fn target(&self) -> Target {
        TARGET
    }

    fn apply<'a>(&'a self, request: &'a StepRequest) -> BoxFuture<'a, StepResult> {
        Box::pin(async move {
            let StepRequest::JuspayCustomer {
                customer_id,
                mobile_number,
                mobile_country_code,
                email_address,
                first_name,
                last_name,
            } = request
            else {
                return Err(misrouted(TARGET));
            };
            let form = wire::UpdateCustomerForm {
                mobile_number: mobile_number.as_ref().map(|v| v.as_str()),
                mobile_country_code: mobile_country_code.as_ref().map(|v| v.as_str()),
                email_address: email_address.as_ref().map(|v| v.as_str()),
                first_name: first_name.as_ref().map(|v| v.as_str()),
                last_name: last_name.as_ref().map(|v| v.as_str()),
            };
            self.update(customer_id, form).await
        })
    }
}
