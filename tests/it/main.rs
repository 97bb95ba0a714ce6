//! The one integration-test binary: real PostgreSQL (a fresh database per test), the real adapters
//! over HTTP against the in-process sandbox, the app on port 0.

mod helpers;

mod api_errors;
mod audit;
mod audit_roles;
mod checkpoints;
mod core_flow;
mod db_tls;
mod dry_run;
mod durability;
mod failures;
mod fourth_provider;
mod lifecycle;
mod limits;
mod pgaudit;
mod sandbox;
mod telemetry;
mod trust;
mod webhooks;
