//! Juspay wallet: `POST /wallets/{id}` with `command=update`; `GET /wallets/{id}` to read back.

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

const TARGET: Target = Target::JuspayWallet;

pub struct JuspayWallet {
    client: reqwest::Client,
    config: JuspayConfig,
    authorization: HeaderValue,
}

impl JuspayWallet {
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
        wallet_id: &str,
    ) -> Result<reqwest::RequestBuilder, StepError> {
        let url = endpoint(TARGET, &self.config.base_url, &["wallets", wallet_id])?;
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

    async fn fetch(
        &self,
        request: reqwest::RequestBuilder,
        wallet_id: &str,
    ) -> Result<(u16, Option<String>), StepError> {
        let response =
            super::exchange(TARGET, request, &self.config.read, juspay_error::facts).await?;
        let account: wire::WalletAccount =
            serde_json::from_slice(&response.body).map_err(|_| {
                bad_success(TARGET, response.status, "its body is not a wallet account")
            })?;
        if account.id.as_deref().is_some_and(|id| id != wallet_id) {
            return Err(bad_success(
                TARGET,
                response.status,
                "it names another wallet",
            ));
        }
        Ok((
            response.status,
            account.metadata.and_then(|m| m.mobile_number),
        ))
    }

    async fn update(&self, wallet_id: &str, mobile_number: &str) -> StepResult {
        let form = serde_urlencoded::to_string(wire::UpdateMobileForm {
            command: "update",
            mobile_number,
        })
        .map_err(|_| misrouted(TARGET))?;
        let request = self
            .request(reqwest::Method::POST, wallet_id)?
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form);
        let (status, echoed) = self.fetch(request, wallet_id).await?;
        if echoed.as_deref() != Some(mobile_number) {
            return Err(bad_success(
                TARGET,
                status,
                "its metadata.mobile_number is not the number sent",
            ));
        }
        Ok(())
    }

    async fn read_wallet(
        &self,
        wallet_id: &str,
        mobile_number: &str,
    ) -> Result<Reading, StepError> {
        let request = self.request(reqwest::Method::GET, wallet_id)?;
        let (_, current) = self.fetch(request, wallet_id).await?;
        let holds = current.as_deref() == Some(mobile_number);
        Ok(Reading {
            // `fetch` refused an answer naming another wallet.
            identified: true,
            fields: vec![FieldReading::new(
                "mobile_number",
                current.as_deref(),
                holds,
            )],
        })
    }
}

impl ProviderAdapter for JuspayWallet {
    fn target(&self) -> Target {
        TARGET
    }

    fn apply<'a>(&'a self, request: &'a StepRequest) -> BoxFuture<'a, StepResult> {
        Box::pin(async move {
            match request {
                StepRequest::JuspayWallet {
                    wallet_id,
                    mobile_number,
                } => self.update(wallet_id, mobile_number.as_str()).await,
                _ => Err(misrouted(TARGET)),
            }
        })
    }

    fn read<'a>(&'a self, request: &'a StepRequest) -> BoxFuture<'a, Result<Reading, StepError>> {
        Box::pin(async move {
            match request {
                StepRequest::JuspayWallet {
                    wallet_id,
                    mobile_number,
                } => self.read_wallet(wallet_id, mobile_number.as_str()).await,
                _ => Err(misrouted(TARGET)),
            }
        })
    }
}
