//! The database as the binary carries it: how to connect (one set of connection options for the
//! pool, the LISTEN connection and the one-shot commands) and the embedded migrations.

use crate::settings::Settings;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database.url: {0}")]
    DatabaseUrl(String),
    #[error("cannot prepare the database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub fn connect_options(settings: &Settings) -> Result<PgConnectOptions, DbError> {
    PgConnectOptions::from_str(settings.database.url.expose())
        .map(|o| {
            o.application_name("profile-gateway")
                // The hot-path statements take arrays of any length; one generic plan per
                // statement spares re-planning the CTEs on every small batch.
                .options([("plan_cache_mode", "force_generic_plan")])
        })
        .map_err(|e| DbError::DatabaseUrl(e.to_string()))
}

/// Creates the database named in the URL when it does not exist (sandbox and tests).
pub async fn ensure_database(settings: &Settings) -> Result<(), DbError> {
    use sqlx::migrate::MigrateDatabase;
    let url = settings.database.url.expose();
    if !sqlx::Postgres::database_exists(url).await? {
        sqlx::Postgres::create_database(url).await?;
    }
    Ok(())
}

pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    migrator().run(pool).await?;
    Ok(())
}

/// The embedded migrations, tolerant of a schema ahead of them: an older binary (a rollback after
/// an expand-only migration) must neither refuse to start nor fail its migration Job. sqlx holds
/// a PostgreSQL advisory lock while it migrates, so two pods running `migrate` at once take turns.
fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("./migrations");
    m.set_ignore_missing(true);
    m
}

/// `profile-gateway migrate`: one connection of its own (no pool retries to hide a wrong URL),
/// then the migrations. Returns the newest version now applied.
pub async fn migrate_once(settings: &Settings) -> Result<i64, String> {
    use sqlx::Connection;
    let mut conn =
        sqlx::PgConnection::connect_with(&connect_options(settings).map_err(|e| e.to_string())?)
            .await
            .map_err(|e| format!("cannot connect to database.url: {e}"))?;
    migrator()
        .run_direct(&mut conn)
        .await
        .map_err(|e| format!("cannot apply migrations: {e}"))?;
    let newest = sqlx::query_scalar::<_, i64>(
        "select coalesce(max(version), 0) from _sqlx_migrations where success",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(|e| format!("cannot read the applied migrations: {e}"))?;
    let _ = conn.close().await;
    Ok(newest)
}
