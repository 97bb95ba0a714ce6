//! The control API under `/__sandbox/`. No authentication: the sandbox is a test tool and must
//! never be reachable from outside the machine or test network that runs it.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::faults::FaultSpec;
use crate::seed::SeedData;
use crate::state::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/__sandbox/faults",
            post(add_fault).get(list_faults).delete(clear_faults),
        )
        .route("/__sandbox/journal", get(journal).delete(clear_journal))
        .route("/__sandbox/counters", get(counters))
        .route("/__sandbox/state", get(get_state).put(put_state))
        .route("/__sandbox/reset", post(reset))
}

async fn add_fault(State(state): State<AppState>, body: Bytes) -> Response {
    let spec: FaultSpec = match parse(&body) {
        Ok(spec) => spec,
        Err(message) => return problem(&message),
    };
    match state.lock().faults.add(spec) {
        Ok(id) => (StatusCode::CREATED, Json(json!({ "id": id }))).into_response(),
        Err(message) => problem(&message),
    }
}

async fn list_faults(State(state): State<AppState>) -> Response {
    Json(state.lock().fault_list()).into_response()
}

async fn clear_faults(State(state): State<AppState>) -> StatusCode {
    state.lock().faults.clear();
    StatusCode::NO_CONTENT
}

async fn journal(State(state): State<AppState>) -> Response {
    Json(state.lock().journal.entries()).into_response()
}

async fn clear_journal(State(state): State<AppState>) -> StatusCode {
    state.lock().journal.clear();
    StatusCode::NO_CONTENT
}

async fn counters(State(state): State<AppState>) -> Response {
    Json(state.lock().counters_by_name()).into_response()
}

async fn get_state(State(state): State<AppState>) -> Response {
    Json(state.lock().snapshot()).into_response()
}

async fn put_state(State(state): State<AppState>, body: Bytes) -> Response {
    let seed: SeedData = match parse(&body).and_then(|s: SeedData| s.validate().map(|()| s)) {
        Ok(seed) => seed,
        Err(message) => return problem(&message),
    };
    state.lock().load(seed);
    StatusCode::NO_CONTENT.into_response()
}

async fn reset(State(state): State<AppState>) -> StatusCode {
    state.reset();
    StatusCode::NO_CONTENT
}

/// Parses JSON whatever the Content-Type says, so a bare `curl -d` works.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

fn problem(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}
