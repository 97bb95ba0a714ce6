//! `POST`/`GET /wallets/{id}`: a wallet's linked mobile number.

use axum::http::StatusCode;
use serde::Serialize;

use super::errors::{invalid_input, not_found};
use super::request::{authorize, check_version, field, form};
use crate::provider::{Call, Outcome, Reply};
use crate::seed::JuspayWallet;
use crate::state::{Credentials, Inner};
use crate::validate;

pub(super) fn update_wallet(
    inner: &mut Inner,
    creds: &Credentials,
    call: &Call,
    id: &str,
) -> Result<Outcome, Reply> {
    authorize(creds, call, false)?;
    check_version(&call.headers)?;
    let form = form(call)?;
    let wallet = find_wallet(inner, id)?;
    match field(&form, "command") {
        Some("update") => {}
        Some(_) => return Err(invalid_input(vec![("command", "must be update")])),
        None => return Err(invalid_input(vec![("command", "is mandatory")])),
    }
    let mobile = field(&form, "mobile_number");
    match mobile.map(validate::mobile_number) {
        None => return Err(invalid_input(vec![("mobile_number", "is mandatory")])),
        Some(Err(reason)) => return Err(invalid_input(vec![("mobile_number", reason)])),
        Some(Ok(())) => {}
    }
    wallet.mobile_number = mobile.map(str::to_owned);
    Ok(Outcome::applied(Reply::json(
        StatusCode::OK,
        &WalletBody::from(&*wallet),
    )))
}

pub(super) fn get_wallet(
    inner: &mut Inner,
    creds: &Credentials,
    call: &Call,
    id: &str,
) -> Result<Outcome, Reply> {
    authorize(creds, call, false)?;
    let wallet = find_wallet(inner, id)?;
    Ok(Outcome::read(Reply::json(
        StatusCode::OK,
        &WalletBody::from(&*wallet),
    )))
}

fn find_wallet<'a>(inner: &'a mut Inner, id: &str) -> Result<&'a mut JuspayWallet, Reply> {
    inner
        .data
        .juspay_wallets
        .iter_mut()
        .find(|w| w.id == id)
        .ok_or_else(not_found)
}

/// Field order follows the docs' sample response.
#[derive(Serialize)]
pub(super) struct WalletBody<'a> {
    id: &'a str,
    object: &'static str,
    wallet: &'a str,
    token: Option<&'a str>,
    current_balance: Option<f64>,
    linked: bool,
    last_refreshed: Option<&'a str>,
    metadata: WalletMetadata<'a>,
    gateway_reference_id: Option<&'a str>,
}

#[derive(Serialize)]
struct WalletMetadata<'a> {
    mobile_number: Option<&'a str>,
}

impl<'a> From<&'a JuspayWallet> for WalletBody<'a> {
    fn from(w: &'a JuspayWallet) -> Self {
        WalletBody {
            id: &w.id,
            object: "wallet_account",
            wallet: &w.wallet,
            token: w.token.as_deref(),
            current_balance: w.current_balance,
            linked: w.linked,
            last_refreshed: w.last_refreshed.as_deref(),
            metadata: WalletMetadata {
                mobile_number: w.mobile_number.as_deref(),
            },
            gateway_reference_id: w.gateway_reference_id.as_deref(),
        }
    }
}
