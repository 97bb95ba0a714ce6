//! Juspay wallet: `POST /wallets/{id}` with `command=update`; `GET /wallets/{id}` to read back.

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

const TARGET: Target = Target::JUSPAY_WALLET;

/// A user may have several wallets: a mobile number change goes to each.
pub const SPEC: ProviderSpec = ProviderSpec {
    target: TARGET,
    link: LinkMember::many(TARGET, "juspay_wallet_ids"),
    fields: &[Field::MobileNumber],
};

pub fn build(ctx: &BuildContext<'_>) -> Result<Arc<dyn ProviderAdapter>, String> {
    let config = JuspayConfig::from_context(ctx);
    Ok(Arc::new(JuspayWallet::new(ctx.client.clone(), config)))
}

pub struct JuspayWallet {
    juspay: JuspayClient,
}

impl JuspayWallet {
    pub fn new(client: reqwest::Client, config: JuspayConfig) -> Self {
        Self {
            juspay: JuspayClient::new(client, config),
        }
    }

    fn request(
        &self,
        method: reqwest::Method,
        wallet_id: &str,
    ) -> Result<reqwest::RequestBuilder, StepError> {
        self.juspay.request(TARGET, method, &["wallets", wallet_id])
    }

    async fn fetch(
        &self,
        request: reqwest::RequestBuilder,
        wallet_id: &str,
    ) -> Result<(u16, Option<String>), StepError> {
        let response = self.juspay.send(TARGET, request).await?;
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
        .map_err(|_| cannot_build(TARGET))?;
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
                Field::MobileNumber,
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

    fn apply<'a>(&'a self, request: &'a StepRequest<'a>) -> BoxFuture<'a, StepResult> {
        Box::pin(async move {
            let number = request
                .value(Field::MobileNumber)
                .ok_or_else(|| cannot_build(TARGET))?;
            self.update(&request.step.upstream_ref, number).await
        })
    }

    fn read<'a>(
        &'a self,
        request: &'a StepRequest<'a>,
    ) -> BoxFuture<'a, Result<Reading, StepError>> {
        Box::pin(async move {
            let number = request
                .value(Field::MobileNumber)
                .ok_or_else(|| cannot_build(TARGET))?;
            self.read_wallet(&request.step.upstream_ref, number).await
        })
    }
}
