//! The Juspay routes: wallets and customers, form-encoded writes, Basic auth with the API key
//! as username and an empty password.

mod customers;
mod errors;
mod request;
mod wallets;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use axum::routing::{get, post};

use crate::exchange::{self, wrong_method};
use crate::provider::{AuthInfo, Handler, Outcome, Provider, basic_credentials};
use crate::route::Route;
use crate::state::{AppState, Credentials};
use customers::{get_customer, list_wallets, update_customer};
use wallets::{get_wallet, update_wallet};

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
            exchange::serve(state, &Juspay, $route, req, handler).await
        }
    };
}

struct Juspay;

impl Provider for Juspay {
    /// Juspay reports only whether the key was right; the key itself is a secret, so the journal's
    /// principal is a marker rather than the username.
    fn check_auth(&self, creds: &Credentials, headers: &HeaderMap) -> AuthInfo {
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
