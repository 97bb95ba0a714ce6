//! What a simulated provider is to the exchange, and what it is handed and hands back: the
//! exchange journals, counts and faults every call the same way, and asks the provider only who
//! the call's credentials say it is and what to answer.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

use crate::state::{Credentials, Inner};

/// One simulated upstream API.
pub(crate) trait Provider: Send + Sync {
    /// Checked on arrival, before any fault fires, so the journal records every call's
    /// principal; the handler decides what a failed check answers.
    fn check_auth(&self, creds: &Credentials, headers: &HeaderMap) -> AuthInfo;
}

/// A request as the provider handlers see it.
pub(crate) struct Call {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub auth: AuthInfo,
}

#[derive(Debug, Clone)]
pub(crate) struct AuthInfo {
    pub principal: Option<String>,
    pub ok: bool,
}

/// A complete answer, kept as data so a fault can still cut or replace it.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Reply {
    pub(crate) fn json(status: StatusCode, value: &impl Serialize) -> Reply {
        // Serializing our own response types cannot fail; an empty body is the safe fallback.
        let body = serde_json::to_vec(value).unwrap_or_default();
        Reply {
            status,
            content_type: Some("application/json".into()),
            body: body.into(),
        }
    }

    pub(crate) fn empty(status: StatusCode) -> Reply {
        Reply {
            status,
            content_type: None,
            body: Bytes::new(),
        }
    }

    pub(crate) fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        // `Bytes` makes axum add `application/octet-stream`; the reply decides instead.
        response.headers_mut().remove(header::CONTENT_TYPE);
        if let Some(ct) = self
            .content_type
            .and_then(|ct| HeaderValue::from_str(&ct).ok())
        {
            response.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        response
    }
}

/// What a handler did: the answer, and whether it changed state.
pub(crate) struct Outcome {
    pub reply: Reply,
    pub applied: bool,
}

impl Outcome {
    pub(crate) fn read(reply: Reply) -> Outcome {
        Outcome {
            reply,
            applied: false,
        }
    }

    pub(crate) fn applied(reply: Reply) -> Outcome {
        Outcome {
            reply,
            applied: true,
        }
    }
}

pub(crate) type Handler = Box<dyn FnOnce(&mut Inner, &Credentials, &Call) -> Outcome + Send>;

/// Decodes `Authorization: Basic base64(user:password)`. Razorpay wants the scheme word exactly
/// `Basic`; HTTP itself (and Juspay, as far as anyone knows) treats it case-insensitively.
pub(crate) fn basic_credentials(
    value: &HeaderValue,
    exact_scheme: bool,
) -> Option<(String, String)> {
    let (scheme, encoded) = value.to_str().ok()?.split_once(' ')?;
    let scheme_ok = if exact_scheme {
        scheme == "Basic"
    } else {
        scheme.eq_ignore_ascii_case("basic")
    };
    if !scheme_ok {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}
