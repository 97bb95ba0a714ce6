//! SQL, one module per table group. Every statement is a checked `sqlx::query!` (a long one in
//! `sql/`, through `query_file!`) whose offline data lives in `.sqlx/` (regenerate with
//! `scripts/sqlx-prepare`).

pub mod assertions;
pub mod batch;
pub mod changes;
pub mod idempotency;
pub mod links;
pub mod mode;
pub mod webhooks;

/// A user id as a row holds it. Every id was checked on its way in, so one that breaks the
/// character rules is a corrupt or foreign row: an error, never a guess. (A reserved `_` id is
/// not refused here: rows written before the reservation hold some.)
pub(crate) fn recorded_user(text: &str) -> Result<crate::domain::UserId, sqlx::Error> {
    crate::domain::UserId::recorded(text)
        .ok_or_else(|| sqlx::Error::Decode(format!("invalid user id {text:?} in a row").into()))
}

/// Errors that mean "the database cannot be reached or is overloaded" rather than a bug: the
/// caller gets 503 and may retry.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
    ) || matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| {
        // 08: connection exceptions; 53: insufficient resources; 57P: shutdown / cannot connect now.
        c.starts_with("08") || c.starts_with("53") || c.starts_with("57P")
    }))
}

/// The connection itself broke (not the database refusing or the pool running dry): the same
/// statement may succeed at once on another connection.
pub fn connection_lost(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::Protocol(_))
        || matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| {
            // 08: connection exceptions; 57P01/02/05: the server ended this backend (terminated,
            // crash shutdown, idle session timeout).
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P05")
        }))
}
