//! One Juspay account, as both Juspay adapters call it: base URL, Basic auth with the API key,
//! the `version` header and the merchant id. The error envelope the two APIs share is `error`.

pub mod error;

use super::http::{ReadLimits, UpstreamResponse, basic_auth};
use super::{StepError, endpoint};
use crate::domain::Target;
use reqwest::header::{AUTHORIZATION, HeaderValue};

/// The settings of the Juspay account (`[juspay]`).
#[derive(Debug, Clone)]
pub struct JuspayConfig {
    pub base_url: String,
    pub api_key: crate::secret::Secret,
    pub merchant_id: Option<String>,
    pub version: String,
    pub read: ReadLimits,
}

impl JuspayConfig {
    /// The resolved `[juspay]` account, read with this provider's own limits.
    pub fn from_context(ctx: &super::BuildContext<'_>) -> Self {
        let j = &ctx.runtime.juspay;
        Self {
            base_url: j.base_url.clone(),
            api_key: j.api_key.clone(),
            merchant_id: j.merchant_id.clone(),
            version: j.version.clone(),
            read: ctx.read_limits(),
        }
    }
}

#[derive(Clone)]
pub struct JuspayClient {
    client: reqwest::Client,
    config: JuspayConfig,
    authorization: HeaderValue,
}

impl JuspayClient {
    pub fn new(client: reqwest::Client, config: JuspayConfig) -> Self {
        let authorization = super::sensitive(&basic_auth(config.api_key.expose(), ""));
        Self {
            client,
            config,
            authorization,
        }
    }

    /// A request to `segments` under the base URL, carrying the account's headers.
    pub fn request(
        &self,
        target: Target,
        method: reqwest::Method,
        segments: &[&str],
    ) -> Result<reqwest::RequestBuilder, StepError> {
        let url = endpoint(target, &self.config.base_url, segments)?;
        let request = self
            .client
            .request(method, url)
            .header(AUTHORIZATION, self.authorization.clone())
            .header("version", &self.config.version);
        Ok(match &self.config.merchant_id {
            Some(m) => request.header("x-merchantid", m),
            None => request,
        })
    }

    /// Sends `request`; a failure is judged by `classify` from Juspay's error envelope.
    pub async fn send(
        &self,
        target: Target,
        request: reqwest::RequestBuilder,
    ) -> Result<UpstreamResponse, StepError> {
        super::exchange(target, request, &self.config.read, error::facts).await
    }
}
