//! The one integration-test binary: real PostgreSQL (a fresh database per test), the real adapters
//! over HTTP against the in-process sandbox, the app on port 0.
//!
//! They run `serve --sandbox` and seed the demo users, so a build without the `sandbox` feature
//! (the production build) has none of them.
#![cfg(feature = "sandbox")]

mod helpers;

mod api_errors;
mod audit;
mod audit_chain;
mod audit_roles;
mod change_answers;
mod checkpoints;
mod core_flow;
mod db_tls;
mod decoding;
mod dry_run;
mod durability;
mod failures;
mod fourth_provider;
mod lifecycle;
mod limits;
mod pgaudit;
mod telemetry;
mod trust;
mod webhooks;
