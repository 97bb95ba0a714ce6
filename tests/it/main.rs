//! The one integration-test binary: real PostgreSQL (a fresh database per test), the real adapters
//! over HTTP against the in-process sandbox, the app on port 0.

mod helpers;

mod api_errors;
mod core_flow;
mod failures;
mod sandbox;
