//! `POST`/`GET /customers/{id}` and `GET /customers/{id}/wallets`.

use axum::http::StatusCode;
use serde::Serialize;

use super::errors::{bad_request, invalid_input, not_found};
use super::request::{authorize, field, form};
use super::wallets::WalletBody;
use crate::provider::{Call, Outcome, Reply};
use crate::seed::{JuspayCustomer, juspay_now};
use crate::state::{Credentials, Inner};
use crate::validate;

const CUSTOMER_FIELDS: [&str; 5] = [
    "mobile_number",
    "mobile_country_code",
    "email_address",
    "first_name",
    "last_name",
];

pub(super) fn update_customer(
    inner: &mut Inner,
    creds: &Credentials,
    call: &Call,
    id: &str,
) -> Result<Outcome, Reply> {
    authorize(creds, call, true)?;
    let form = form(call)?;
    let customer = find_customer(inner, id)?;
    let given: Vec<(&str, &str)> = CUSTOMER_FIELDS
        .into_iter()
        .filter_map(|name| field(&form, name).map(|v| (name, v)))
        .collect();
    if given.is_empty() {
        return Err(bad_request(format!(
            "At least one of {} is required",
            CUSTOMER_FIELDS.join(", ")
        )));
    }
    let invalid: Vec<(&str, &str)> = given
        .iter()
        .filter_map(|&(name, value)| {
            let check = match name {
                "mobile_number" => validate::mobile_number,
                "mobile_country_code" => validate::country_code,
                "email_address" => validate::email,
                _ => validate::person_name,
            };
            check(value).err().map(|reason| (name, reason))
        })
        .collect();
    if !invalid.is_empty() {
        return Err(invalid_input(invalid));
    }
    for (name, value) in given {
        let slot = match name {
            "mobile_number" => &mut customer.mobile_number,
            "mobile_country_code" => &mut customer.mobile_country_code,
            "email_address" => &mut customer.email_address,
            "first_name" => &mut customer.first_name,
            _ => &mut customer.last_name,
        };
        *slot = Some(value.to_owned());
    }
    customer.last_updated = juspay_now();
    Ok(Outcome::applied(Reply::json(
        StatusCode::OK,
        &CustomerBody::from(&*customer),
    )))
}

pub(super) fn get_customer(
    inner: &mut Inner,
    creds: &Credentials,
    call: &Call,
    id: &str,
) -> Result<Outcome, Reply> {
    authorize(creds, call, true)?;
    let customer = find_customer(inner, id)?;
    Ok(Outcome::read(Reply::json(
        StatusCode::OK,
        &CustomerBody::from(&*customer),
    )))
}

pub(super) fn list_wallets(
    inner: &mut Inner,
    creds: &Credentials,
    call: &Call,
    id: &str,
) -> Result<Outcome, Reply> {
    authorize(creds, call, true)?;
    let customer_id = find_customer(inner, id)?.id.clone();
    let list: Vec<WalletBody> = inner
        .data
        .juspay_wallets
        .iter()
        .filter(|w| w.customer_id == customer_id)
        .map(WalletBody::from)
        .collect();
    let body = WalletList {
        object: "list",
        count: list.len(),
        offset: 0,
        total: list.len(),
        list,
    };
    Ok(Outcome::read(Reply::json(StatusCode::OK, &body)))
}

/// `id` may be Juspay's `cst_...` id or the merchant's `object_reference_id`.
fn find_customer<'a>(inner: &'a mut Inner, id: &str) -> Result<&'a mut JuspayCustomer, Reply> {
    let customers = &mut inner.data.juspay_customers;
    let index = customers
        .iter()
        .position(|c| c.id == id)
        .or_else(|| customers.iter().position(|c| c.object_reference_id == id))
        .ok_or_else(not_found)?;
    Ok(&mut customers[index])
}

#[derive(Serialize)]
struct WalletList<'a> {
    list: Vec<WalletBody<'a>>,
    object: &'static str,
    count: usize,
    offset: usize,
    total: usize,
}

/// Field order follows the docs' sample response.
#[derive(Serialize)]
struct CustomerBody<'a> {
    id: &'a str,
    object: &'static str,
    object_reference_id: &'a str,
    mobile_number: Option<&'a str>,
    date_created: &'a str,
    last_updated: &'a str,
    email_address: Option<&'a str>,
    first_name: Option<&'a str>,
    last_name: Option<&'a str>,
    mobile_country_code: Option<&'a str>,
}

impl<'a> From<&'a JuspayCustomer> for CustomerBody<'a> {
    fn from(c: &'a JuspayCustomer) -> Self {
        CustomerBody {
            id: &c.id,
            object: "customer",
            object_reference_id: &c.object_reference_id,
            mobile_number: c.mobile_number.as_deref(),
            date_created: &c.date_created,
            last_updated: &c.last_updated,
            email_address: c.email_address.as_deref(),
            first_name: c.first_name.as_deref(),
            last_name: c.last_name.as_deref(),
            mobile_country_code: c.mobile_country_code.as_deref(),
        }
    }
}
