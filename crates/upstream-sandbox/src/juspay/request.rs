//! What every Juspay call is checked for before it touches data: auth and merchant id, the
//! `version` header, and a form-encoded body.

use axum::http::{HeaderMap, header};
use chrono::NaiveDate;

use super::errors::{access_denied, bad_request};
use crate::provider::{Call, Reply};
use crate::state::Credentials;

/// Wallet mobile updates are documented as needing `version` >= this date.
const MIN_WALLET_UPDATE_VERSION: (i32, u32, u32) = (2019, 9, 17);

/// Auth first, then the merchant header: a wrong merchant id is an access problem (401), a
/// missing one on the customer API a malformed request (400).
pub(super) fn authorize(
    creds: &Credentials,
    call: &Call,
    merchant_required: bool,
) -> Result<(), Reply> {
    if !call.auth.ok {
        return Err(access_denied("Invalid API key or missing credentials."));
    }
    let Some(expected) = &creds.juspay_merchant_id else {
        return Ok(());
    };
    // Every copy must match: a proxy that appends its own header must not slip through.
    let mut given = call.headers.get_all("x-merchantid").iter().peekable();
    if given.peek().is_none() {
        return if merchant_required {
            Err(bad_request("Header x-merchantid is mandatory"))
        } else {
            Ok(())
        };
    }
    if given.all(|v| v.as_bytes() == expected.as_bytes()) {
        Ok(())
    } else {
        Err(access_denied("Merchant id does not match the API key."))
    }
}

pub(super) fn check_version(headers: &HeaderMap) -> Result<(), Reply> {
    let (y, m, d) = MIN_WALLET_UPDATE_VERSION;
    let minimum = NaiveDate::from_ymd_opt(y, m, d);
    let given = headers
        .get("version")
        .and_then(|v| v.to_str().ok())
        // chrono accepts unpadded fields; the API wants exactly YYYY-MM-DD.
        .filter(|v| v.len() == 10)
        .and_then(|v| NaiveDate::parse_from_str(v, "%Y-%m-%d").ok());
    match given {
        Some(date) if Some(date) >= minimum => Ok(()),
        _ => Err(bad_request(
            "Header version must be a date (YYYY-MM-DD) on or after 2019-09-17",
        )),
    }
}

pub(super) fn form(call: &Call) -> Result<Vec<(String, String)>, Reply> {
    let is_form = call
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| {
            essence
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(bad_request(
            "Content-Type must be application/x-www-form-urlencoded",
        ));
    }
    serde_urlencoded::from_bytes(&call.body)
        .map_err(|_| bad_request("Request body is not valid application/x-www-form-urlencoded"))
}

/// The last occurrence wins, as with most form decoders.
pub(super) fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
