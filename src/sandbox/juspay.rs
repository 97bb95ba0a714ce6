//! The Juspay routes: wallets and customers, form-encoded writes, Basic auth with the API key
//! as username and an empty password.

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use chrono::NaiveDate;
use serde::Serialize;

use super::exchange::{
    self, AuthInfo, Call, Handler, Outcome, Reply, basic_credentials, wrong_method,
};
use super::seed::{JuspayCustomer, JuspayWallet, juspay_now};
use super::state::{AppState, Credentials, Inner, Route};
use super::validate;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/wallets/{id}",
            post(wallet_update).get(wallet_get).fallback(wrong_method),
        )
        .route(
            "/customers/{id}",
            post(customer_update)
                .get(customer_get)
                .fallback(wrong_method),
        )
        .route(
            "/customers/{id}/wallets",
            get(customer_wallets).fallback(wrong_method),
        )
}

macro_rules! route_handler {
    ($name:ident, $route:expr, $logic:ident) => {
        async fn $name(
            State(state): State<AppState>,
            Path(id): Path<String>,
            req: Request,
        ) -> Response {
            let handler: Handler = Box::new(move |inner, creds, call| {
                $logic(inner, creds, call, &id).unwrap_or_else(Outcome::read)
            });
            exchange::serve(state, $route, req, handler).await
        }
    };
}

route_handler!(wallet_update, Route::JuspayWalletUpdate, update_wallet);
route_handler!(wallet_get, Route::JuspayWalletGet, get_wallet);
route_handler!(
    customer_update,
    Route::JuspayCustomerUpdate,
    update_customer
);
route_handler!(customer_get, Route::JuspayCustomerGet, get_customer);
route_handler!(customer_wallets, Route::JuspayCustomerWallets, list_wallets);

/// Juspay reports only whether the key was right; the key itself is a secret, so the journal's
/// principal is a marker rather than the username.
pub(crate) fn check_auth(creds: &Credentials, headers: &HeaderMap) -> AuthInfo {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return AuthInfo {
            principal: None,
            ok: false,
        };
    };
    let ok = basic_credentials(value, false)
        .is_some_and(|(user, password)| user == creds.juspay_api_key && password.is_empty());
    AuthInfo {
        principal: Some(if ok { "juspay_api_key_ok" } else { "invalid" }.to_owned()),
        ok,
    }
}

/// Wallet mobile updates are documented as needing `version` >= this date.
const MIN_WALLET_UPDATE_VERSION: (i32, u32, u32) = (2019, 9, 17);

fn update_wallet(
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

fn get_wallet(
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

const CUSTOMER_FIELDS: [&str; 5] = [
    "mobile_number",
    "mobile_country_code",
    "email_address",
    "first_name",
    "last_name",
];

fn update_customer(
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

fn get_customer(
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

fn list_wallets(
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

/// Auth first, then the merchant header: a wrong merchant id is an access problem (401), a
/// missing one on the customer API a malformed request (400).
fn authorize(creds: &Credentials, call: &Call, merchant_required: bool) -> Result<(), Reply> {
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

fn check_version(headers: &HeaderMap) -> Result<(), Reply> {
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

fn form(call: &Call) -> Result<Vec<(String, String)>, Reply> {
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
fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn find_wallet<'a>(inner: &'a mut Inner, id: &str) -> Result<&'a mut JuspayWallet, Reply> {
    inner
        .data
        .juspay_wallets
        .iter_mut()
        .find(|w| w.id == id)
        .ok_or_else(not_found)
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
struct ErrorBody {
    status: &'static str,
    error_code: &'static str,
    error_message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_info: Option<ErrorInfo>,
}

#[derive(Serialize)]
struct ErrorInfo {
    code: &'static str,
    category: &'static str,
    user_message: String,
    developer_message: String,
    fields: Vec<FieldError>,
}

#[derive(Serialize)]
struct FieldError {
    field_name: String,
    reason: String,
}

fn error(status: StatusCode, error_code: &'static str, message: String) -> Reply {
    let body = ErrorBody {
        status: "invalid_request_error",
        error_code,
        error_message: message,
        error_info: None,
    };
    Reply::json(status, &body)
}

fn access_denied(message: &str) -> Reply {
    error(
        StatusCode::UNAUTHORIZED,
        "access_denied",
        message.to_owned(),
    )
}

fn bad_request(message: impl Into<String>) -> Reply {
    error(StatusCode::BAD_REQUEST, "invalid_request", message.into())
}

fn not_found() -> Reply {
    error(
        StatusCode::NOT_FOUND,
        "object_not_found",
        "Cannot find what you are looking for".to_owned(),
    )
}

fn invalid_input(fields: Vec<(&str, &str)>) -> Reply {
    let names: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
    let message = format!("Invalid value for {}", names.join(", "));
    let body = ErrorBody {
        status: "invalid_request_error",
        error_code: "invalid_input",
        error_message: message.clone(),
        error_info: Some(ErrorInfo {
            code: "INVALID_INPUT",
            category: "USER_ERROR",
            user_message: "Please check the details you entered.".to_owned(),
            developer_message: message,
            fields: fields
                .into_iter()
                .map(|(name, reason)| FieldError {
                    field_name: name.to_owned(),
                    reason: reason.to_owned(),
                })
                .collect(),
        }),
    };
    Reply::json(StatusCode::BAD_REQUEST, &body)
}

/// Field order follows the docs' sample response.
#[derive(Serialize)]
struct WalletBody<'a> {
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
