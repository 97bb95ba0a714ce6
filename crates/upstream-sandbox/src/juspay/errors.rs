//! Juspay's error bodies: `status`/`error_code`/`error_message`, and for field problems the
//! `error_info` block with one entry per field.

use axum::http::StatusCode;
use serde::Serialize;

use crate::provider::Reply;

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

pub(super) fn access_denied(message: &str) -> Reply {
    error(
        StatusCode::UNAUTHORIZED,
        "access_denied",
        message.to_owned(),
    )
}

pub(super) fn bad_request(message: impl Into<String>) -> Reply {
    error(StatusCode::BAD_REQUEST, "invalid_request", message.into())
}

pub(super) fn not_found() -> Reply {
    error(
        StatusCode::NOT_FOUND,
        "object_not_found",
        "Cannot find what you are looking for".to_owned(),
    )
}

pub(super) fn invalid_input(fields: Vec<(&str, &str)>) -> Reply {
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
