//! The Razorpay TPAP UPI-number routes: JSON bodies, Basic `key_id:key_secret`, device headers
//! on every call, and Razorpay's habit of reporting "not found" as a 400.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::patch;
use rand::Rng;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::exchange::{self, wrong_method};
use crate::provider::{AuthInfo, Call, Handler, Outcome, Provider, Reply, basic_credentials};
use crate::route::Route;
use crate::seed::{UpiNumber, UpiNumberType, UpiStatus};
use crate::state::{AppState, Credentials, Inner};
use crate::validate;

const PATH: &str = "/v1/upi/tpap/upi_number";

pub(crate) fn router() -> Router<AppState> {
    Router::new().route(PATH, patch(upi_update).get(upi_get).fallback(wrong_method))
}

async fn upi_update(State(state): State<AppState>, req: Request) -> Response {
    let handler: Handler =
        Box::new(|inner, creds, call| update(inner, creds, call).unwrap_or_else(Outcome::read));
    exchange::serve(state, &Razorpay, Route::RazorpayUpiUpdate, req, handler).await
}

async fn upi_get(State(state): State<AppState>, req: Request) -> Response {
    let handler: Handler =
        Box::new(|inner, creds, call| list(inner, creds, call).unwrap_or_else(Outcome::read));
    exchange::serve(state, &Razorpay, Route::RazorpayUpiGet, req, handler).await
}

struct Razorpay;

impl Provider for Razorpay {
    /// The key id is not a secret, so the journal names it; a wrong scheme word counts as no
    /// credentials at all.
    fn check_auth(&self, creds: &Credentials, headers: &HeaderMap) -> AuthInfo {
        match headers
            .get(header::AUTHORIZATION)
            .and_then(|v| basic_credentials(v, true))
        {
            Some((key_id, secret)) => AuthInfo {
                ok: key_id == creds.razorpay_key_id && secret == creds.razorpay_key_secret,
                principal: Some(key_id),
            },
            None => AuthInfo {
                principal: None,
                ok: false,
            },
        }
    }
}

#[derive(Clone, Copy)]
enum Action {
    ChangeVpa,
    Inactivate,
    Deregister,
    Activate,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        match s {
            "change_vpa" => Some(Action::ChangeVpa),
            "inactivate" => Some(Action::Inactivate),
            "deregister" => Some(Action::Deregister),
            "activate" => Some(Action::Activate),
            _ => None,
        }
    }
}

fn update(inner: &mut Inner, _creds: &Credentials, call: &Call) -> Result<Outcome, Reply> {
    let customer_reference = authorize(call)?;
    let body = json_object(call)?;
    let upi_number = string_field(&body, "upi_number")?;
    let vpa = string_field(&body, "vpa")?;
    let action = string_field(&body, "action")?;
    let consent = match body.get("consent") {
        None | Some(Value::Null) => return Err(required("consent")),
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(bad_request(
                "The consent field must be a boolean.",
                Some("consent"),
                "input_validation_failed",
            ));
        }
    };
    if !consent {
        return Err(bad_request(
            "Customer consent is required to update the UPI number.",
            Some("consent"),
            "consent_not_given",
        ));
    }
    let Some(action) = Action::parse(action) else {
        return Err(bad_request(
            "The selected action is invalid.",
            Some("action"),
            "input_validation_failed",
        ));
    };
    if validate::vpa(vpa).is_err() {
        return Err(bad_request(
            "Invalid VPA. Please enter a valid Virtual Payment Address.",
            Some("vpa"),
            "invalid_vpa",
        ));
    }

    let number = inner
        .data
        .razorpay_customers
        .iter_mut()
        .find(|c| c.customer_reference == customer_reference)
        .and_then(|c| c.upi_numbers.iter_mut().find(|n| n.number == upi_number))
        .ok_or_else(|| {
            bad_request(
                "UPI number does not exist",
                Some("upi_number"),
                "upi_number_not_found",
            )
        })?;
    // Deregistration is final: the number is released and only a new registration revives it.
    if number.status == UpiStatus::Deregistered {
        return Err(bad_request(
            "UPI number is deregistered; no further action is possible.",
            Some("action"),
            "upi_number_deregistered",
        ));
    }
    match action {
        Action::ChangeVpa => {
            vpa.clone_into(&mut number.vpa);
            number.status = UpiStatus::Active;
        }
        Action::Inactivate => number.status = UpiStatus::Inactive,
        Action::Deregister => number.status = UpiStatus::Deregistered,
        Action::Activate => number.status = UpiStatus::Active,
    }
    let body = UpdateBody {
        entity: "upi_number",
        upi_transaction_id: transaction_id(),
        upi_number: &number.number,
        kind: number.kind,
        status: number.status,
        vpa: &number.vpa,
    };
    Ok(Outcome::applied(Reply::json(StatusCode::OK, &body)))
}

fn list(inner: &mut Inner, _creds: &Credentials, call: &Call) -> Result<Outcome, Reply> {
    let customer_reference = authorize(call)?;
    // A reference the sandbox has never seen simply has no numbers yet.
    let numbers: &[UpiNumber] = inner
        .data
        .razorpay_customers
        .iter()
        .find(|c| c.customer_reference == customer_reference)
        .map_or(&[], |c| c.upi_numbers.as_slice());
    let body = Collection {
        entity: "collection",
        count: numbers.len(),
        upi_numbers: numbers,
    };
    Ok(Outcome::read(Reply::json(StatusCode::OK, &body)))
}

/// Credentials, then the device headers every TPAP call carries; returns the customer reference.
fn authorize(call: &Call) -> Result<String, Reply> {
    if !call.auth.ok {
        return Err(error_reply(
            StatusCode::UNAUTHORIZED,
            "The api key provided is invalid",
            None,
            "NA",
        ));
    }
    let header_value = |name: &'static str| {
        let mut values = call.headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(value), None) => value
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| required(name)),
            (None, _) => Err(required(name)),
            // Which copy a server would pick is unknowable, so refuse rather than guess.
            (Some(_), Some(_)) => Err(bad_request(
                &format!("{name} must be sent once."),
                Some(name),
                "input_validation_failed",
            )),
        }
    };
    header_value("x-device-fingerprint")?;
    let timestamp = header_value("x-device-fingerprint-timestamp")?;
    if timestamp.len() > 16 || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_request(
            "x-device-fingerprint-timestamp must be a UNIX timestamp in milliseconds.",
            Some("x-device-fingerprint-timestamp"),
            "input_validation_failed",
        ));
    }
    Ok(header_value("x-customer-reference")?.to_owned())
}

fn json_object(call: &Call) -> Result<Map<String, Value>, Reply> {
    let not_json = || {
        bad_request(
            "The request body must be a JSON object.",
            None,
            "input_validation_failed",
        )
    };
    let is_json = call
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(not_json());
    }
    match serde_json::from_slice(&call.body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(not_json()),
    }
}

fn string_field<'a>(body: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, Reply> {
    match body.get(name) {
        None | Some(Value::Null) => Err(required(name)),
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(bad_request(
            &format!("The {name} field must be a non-empty string."),
            Some(name),
            "input_validation_failed",
        )),
    }
}

fn transaction_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..14)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'static str,
    description: &'a str,
    field: Option<&'a str>,
    source: &'static str,
    step: &'static str,
    reason: &'a str,
    metadata: Map<String, Value>,
}

fn error_reply(status: StatusCode, description: &str, field: Option<&str>, reason: &str) -> Reply {
    let body = ErrorEnvelope {
        error: ErrorDetail {
            code: "BAD_REQUEST_ERROR",
            description,
            field,
            source: "NA",
            step: "NA",
            reason,
            metadata: Map::new(),
        },
    };
    Reply::json(status, &body)
}

fn bad_request(description: &str, field: Option<&str>, reason: &str) -> Reply {
    error_reply(StatusCode::BAD_REQUEST, description, field, reason)
}

fn required(name: &str) -> Reply {
    bad_request(
        &format!("{name} is required."),
        Some(name),
        "input_validation_failed",
    )
}

#[derive(Serialize)]
struct UpdateBody<'a> {
    entity: &'static str,
    upi_transaction_id: String,
    upi_number: &'a str,
    #[serde(rename = "type")]
    kind: UpiNumberType,
    status: UpiStatus,
    vpa: &'a str,
}

#[derive(Serialize)]
struct Collection<'a> {
    entity: &'static str,
    count: usize,
    upi_numbers: &'a [UpiNumber],
}
