//! How the service's errors leave: RFC 9457 problem+json bodies with the request's ids, and a
//! `sqlx::Error` becoming an `ApiError` on its way out (counting pool acquire timeouts).

use super::edge::{current_request_id, current_trace_id};
use crate::domain::FieldError;
use crate::error::ApiError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::time::Duration;

pub const PROBLEM_JSON: &str = "application/problem+json";

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        crate::telemetry::metrics::note_db_error(&e);
        if crate::store::is_unavailable(&e) {
            ApiError::DatabaseUnavailable(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    pub code: &'static str,
    pub request_id: String,
    /// The W3C trace id the request's spans are exported under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_id: Option<uuid::Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_status: Option<crate::domain::ChangeStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<crate::domain::StepView>>,
    #[serde(skip)]
    pub location: Option<String>,
}

/// Attached to every error response so the edge middleware logs it once, inside the request span.
#[derive(Debug, Clone)]
pub struct LoggedError {
    pub code: &'static str,
    pub status: u16,
    pub internal: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title, detail) = self.parts();
        let retry_after = self.retry_after();
        let internal = self.to_string();
        // The rest of a slow body may never come: the connection is not reused.
        let close = matches!(self, ApiError::BodyTimeout);
        let (errors, change) = match self {
            ApiError::DuplicateMember(pointer) => (
                vec![FieldError::new(
                    pointer,
                    "duplicate_member",
                    "this member appears more than once in its object",
                )],
                None,
            ),
            ApiError::Validation(e) | ApiError::MissingLink(e) | ApiError::LinkConflict(e) => {
                (e, None)
            }
            ApiError::ChangeFailed(c, _) => (Vec::new(), Some(c)),
            _ => (Vec::new(), None),
        };
        let problem = Problem {
            kind: format!("/problems/{code}"),
            title,
            status: status.as_u16(),
            detail,
            code,
            request_id: current_request_id(),
            trace_id: current_trace_id(),
            errors,
            change_id: change.as_ref().map(|c| c.change_id),
            change_status: change.as_ref().map(|c| c.status),
            location: change.as_ref().map(|c| c.location()),
            steps: change.map(|c| c.steps),
        };
        let mut response = problem_response(
            status,
            &problem,
            retry_after,
            LoggedError {
                code,
                status: status.as_u16(),
                internal,
            },
        );
        if close {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

fn problem_response(
    status: StatusCode,
    problem: &Problem,
    retry_after: Option<Duration>,
    logged: LoggedError,
) -> Response {
    let body = serde_json::to_vec(problem).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    if let Some(d) = retry_after
        && let Ok(v) = HeaderValue::from_str(&d.as_secs().max(1).to_string())
    {
        headers.insert(header::RETRY_AFTER, v);
    }
    if let Some(location) = &problem.location
        && let Ok(v) = HeaderValue::from_str(location)
    {
        headers.insert(header::LOCATION, v);
    }
    response.extensions_mut().insert(logged);
    response
}
