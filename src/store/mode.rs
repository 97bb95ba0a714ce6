//! `gateway_metadata.mode`: whether a production gateway has used this database, so the sandbox
//! can refuse it.

use sqlx::PgPool;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ModeError {
    #[error(
        "database `{0}` has been used by a production gateway; `serve --sandbox` refuses it (it would \
         serve its data to the demo token and seed demo links into it). Point database.url \
         (PROFILE_GATEWAY__DATABASE__URL) at a database of its own"
    )]
    Production(String),
    #[error("cannot check which gateway uses the database: {0}")]
    Db(#[from] sqlx::Error),
}

/// Refuses a database a production gateway has used. Runs before the sandbox applies migrations,
/// so a database from before the metadata table counts as production when it holds changes.
pub async fn check_sandbox(pool: &PgPool) -> Result<(), ModeError> {
    let row = sqlx::query!(
        r#"select current_database() as "db!",
                  to_regclass('gateway_metadata') is not null as "has_meta!",
                  to_regclass('changes') is not null as "has_changes!""#
    )
    .fetch_one(pool)
    .await?;
    let production = if row.has_meta {
        sqlx::query_scalar::<_, bool>(
            "select exists (select 1 from gateway_metadata where key = 'mode' and value = 'production')",
        )
        .fetch_one(pool)
        .await?
    } else if row.has_changes {
        // Used by a gateway that predates the record: only a sandbox database is known to be safe.
        sqlx::query_scalar::<_, bool>("select exists (select 1 from changes)")
            .fetch_one(pool)
            .await?
    } else {
        false
    };
    if production {
        return Err(ModeError::Production(row.db));
    }
    Ok(())
}

/// After migrations: marks the database as the sandbox's, unless a production gateway claimed it
/// meanwhile.
pub async fn record_sandbox(pool: &PgPool) -> Result<(), ModeError> {
    let mode = sqlx::query_scalar!(
        r#"with ins as (
             insert into gateway_metadata (key, value) values ('mode', 'sandbox')
             on conflict (key) do nothing returning value
           )
           select coalesce((select value from ins), (select value from gateway_metadata where key = 'mode')) as "mode!""#
    )
    .fetch_one(pool)
    .await?;
    if mode == "production" {
        let db = sqlx::query_scalar!(r#"select current_database() as "db!""#)
            .fetch_one(pool)
            .await?;
        return Err(ModeError::Production(db));
    }
    Ok(())
}

/// A production gateway claims the database. In the background, retried until it succeeds: a
/// database down at boot must not stop the replica from starting (it serves probes meanwhile), and
/// the table may only appear once the migration Job has run.
pub fn spawn_record_production(pool: PgPool) {
    tokio::spawn(async move {
        loop {
            let done = sqlx::query!(
                "insert into gateway_metadata (key, value) values ('mode', 'production')
                 on conflict (key) do update set value = 'production', updated_at = now()
                  where gateway_metadata.value <> 'production'"
            )
            .execute(&pool)
            .await;
            match done {
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot record the production mode yet; retrying");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    });
}
