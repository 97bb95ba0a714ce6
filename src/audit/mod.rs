//! Audit events: who changed what, when, from where, with what outcome. Rows are only ever
//! inserted; values appear masked beside a keyed hash, never in plain text.

use crate::crypto::PiiHasher;
use crate::domain::change::StepOutcome;
use crate::domain::{Field, Origin, ProfilePatch, UserId};
pub mod chain;
pub mod checkpoint;
pub mod cli;
pub mod merkle;
pub mod roles;
pub mod verify;
pub mod witnessed;

use serde_json::{Map, Value, json};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    pub origin: &'a Origin,
    pub user_id: &'a UserId,
    pub event_type: &'static str,
    pub outcome: &'a str,
    pub change_id: Option<Uuid>,
    pub step_no: Option<i32>,
    pub target: Option<&'a str>,
    pub upstream_ref: Option<&'a str>,
    pub fields: Vec<String>,
    pub values: Value,
    pub hmac_key_id: Option<&'a str>,
    pub error_code: Option<&'a str>,
}

impl<'a> AuditEvent<'a> {
    pub fn new(
        origin: &'a Origin,
        user_id: &'a UserId,
        event_type: &'static str,
        outcome: &'a str,
    ) -> Self {
        Self {
            origin,
            user_id,
            event_type,
            outcome,
            change_id: None,
            step_no: None,
            target: None,
            upstream_ref: None,
            fields: Vec::new(),
            values: Value::Object(Map::new()),
            hmac_key_id: None,
            error_code: None,
        }
    }
}

pub async fn insert<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    e: &AuditEvent<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"insert into audit_events
             (user_id, event_type, caller, outcome, change_id, step_no, target, upstream_ref,
              fields, "values", hmac_key_id, error_code, request_id, trace_id, caller_addr, actor)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"#,
        e.user_id.as_str(),
        e.event_type,
        e.origin.caller,
        e.outcome,
        e.change_id,
        e.step_no,
        e.target,
        e.upstream_ref,
        &e.fields,
        e.values,
        e.hmac_key_id,
        e.error_code,
        e.origin.request_id,
        e.origin.trace_id,
        e.origin.caller_addr,
        e.origin.actor_json(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// `values` of a settle's event (`round` or `change_completed`): the round's attempts, in
/// jsonb's text form, the text the chain hashes. Written straight into one string: the
/// `serde_json::Value` tree per attempt it replaced was built, printed and dropped for every
/// change (bench/README.md, "Where the gateway's CPU goes"). The test below holds it to
/// [`verify::jsonb_text`] of the same object.
pub fn steps_values_text(outcomes: &[StepOutcome]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(16 + 224 * outcomes.len());
    out.push_str("{\"steps\": [");
    for (i, o) in outcomes.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        // jsonb's key order: shorter keys first, then bytewise.
        out.push_str("{\"fields\": ");
        verify::write_jsonb_text_array(&mut out, &o.fields);
        out.push_str(", \"status\": ");
        verify::jsonb_string(&mut out, o.status.as_str());
        out.push_str(", \"target\": ");
        verify::jsonb_string(&mut out, &o.target);
        let _ = write!(
            out,
            ", \"attempt\": {}, \"step_no\": {}",
            o.attempt, o.step_no
        );
        out.push_str(", \"error_code\": ");
        match &o.error {
            Some(e) => verify::jsonb_string(&mut out, e.code.as_str()),
            None => out.push_str("null"),
        }
        out.push_str(", \"upstream_ref\": ");
        verify::jsonb_string(&mut out, &o.upstream_ref);
        out.push_str(", \"confirmed_by_read_back\": ");
        out.push_str(if o.confirmed_by_read_back {
            "true"
        } else {
            "false"
        });
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// `{"mobile_number": {"new": "******7766", "new_hmac": "..."}, ...}` for the fields a patch sets,
/// restricted to `only` when given (a step's own fields). Masked by [`Field::mask`], as a dry run's
/// current values are.
pub fn masked_values(patch: &ProfilePatch, hasher: &PiiHasher, only: Option<&[Field]>) -> Value {
    let mut out = Map::new();
    for field in patch.fields() {
        if only.is_some_and(|o| !o.contains(&field)) {
            continue;
        }
        let Some(raw) = field.value(patch) else {
            continue;
        };
        let masked = field.mask(raw);
        let v = if field.is_pii() {
            json!({"new": masked, "new_hmac": hasher.hash(raw)})
        } else {
            json!({"new": masked})
        };
        out.insert(field.name().to_string(), v);
    }
    Value::Object(out)
}

/// Monthly partitions created ahead of the current month by [`maintain`].
pub const PARTITIONS_AHEAD: i32 = 2;

/// PCI DSS 10.5.1: audit history is kept for at least 12 months.
pub const MIN_RETENTION_MONTHS: u32 = 12;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintainReport {
    /// How many monthly partitions were created.
    pub created: i32,
    /// The partitions detached into the `audit_archive` schema.
    pub detached: Vec<String>,
}

/// Creates the audit partitions of this month and the next [`PARTITIONS_AHEAD`] months, and
/// detaches those older than `retention_months` (each detach is itself an audit event). Safe to
/// run concurrently; runs as the maintenance role (`profile_gateway_maintenance`, migration
/// 20261201000501), never as the gateway's, and the SQL refuses fewer than 12 months too.
pub async fn maintain(
    pool: &sqlx::PgPool,
    retention_months: u32,
) -> Result<MaintainReport, sqlx::Error> {
    if retention_months < MIN_RETENTION_MONTHS {
        return Err(sqlx::Error::Configuration(
            format!(
                "audit.retention_months must be at least {MIN_RETENTION_MONTHS} (PCI DSS 10.5.1)"
            )
            .into(),
        ));
    }
    let months = i32::try_from(retention_months).unwrap_or(i32::MAX);
    let mut tx = pool.begin().await?;
    // One maintainer at a time: replicas run this on the same schedule.
    sqlx::query!("select pg_advisory_xact_lock(hashtext('profile_gateway.audit_maintain'))")
        .execute(&mut *tx)
        .await?;
    let created = sqlx::query_scalar!(
        r#"select audit_ensure_partitions($1) as "created!""#,
        PARTITIONS_AHEAD
    )
    .fetch_one(&mut *tx)
    .await?;
    let detached = sqlx::query_scalar!(
        r#"select name as "name!" from audit_detach_expired($1) as name"#,
        months
    )
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query!(
        "select audit_record_maintenance($1, $2)",
        created,
        &detached
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(MaintainReport { created, detached })
}

/// When `audit maintain` last succeeded (its `maintenance_ran` event), for the
/// `profile_gateway_audit_maintenance_last_success_timestamp_seconds` gauge now that the gateway
/// no longer runs maintenance itself.
pub async fn last_maintenance(
    pool: &sqlx::PgPool,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, sqlx::Error> {
    sqlx::query_scalar!(
        "select max(occurred_at) from audit_events where user_id = '_system' and event_type = 'maintenance_ran'"
    )
    .fetch_one(pool)
    .await
}

/// Runs [`maintain`] now and then every `every` (a day in production), until the task is
/// dropped. Failures are logged and retried at the next tick.
pub async fn maintenance_loop(
    pool: sqlx::PgPool,
    retention_months: u32,
    every: std::time::Duration,
    on_success: impl Fn() + Send,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let done = maintain(&pool, retention_months).await;
        if done.is_ok() {
            on_success();
        }
        match done {
            Ok(r) if r.created > 0 || !r.detached.is_empty() => tracing::info!(
                created = r.created,
                detached = ?r.detached,
                "audit partitions maintained"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "audit partition maintenance failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::change::StepStatus;
    use crate::domain::step_error::{StepError, StepErrorCode};

    fn outcome(step_no: i32, status: StepStatus, error: Option<StepErrorCode>) -> StepOutcome {
        StepOutcome {
            step_no,
            attempt: 3,
            status,
            error: error.map(|code| StepError {
                code,
                retryable: true,
                outcome_unknown: false,
                upstream_status: Some(503),
                upstream_code: None,
                message: "down".into(),
                retry_after: None,
            }),
            confirmed_by_read_back: step_no == 2,
            target: "juspay_wallet".into(),
            upstream_ref: "wlt_\"odd\"\\\n\u{1}é".into(),
            fields: vec!["mobile_number".into(), "email\tx".into()],
        }
    }

    #[test]
    fn a_settles_values_are_the_jsonb_text_of_its_attempts() {
        let outcomes = [
            outcome(1, StepStatus::Applied, None),
            outcome(2, StepStatus::Unknown, Some(StepErrorCode::UpstreamTimeout)),
            outcome(3, StepStatus::Failed, Some(StepErrorCode::UpstreamRejected)),
        ];
        for n in 0..=outcomes.len() {
            let steps: Vec<Value> = outcomes[..n]
                .iter()
                .map(|o| {
                    json!({
                        "step_no": o.step_no,
                        "target": o.target,
                        "upstream_ref": o.upstream_ref,
                        "fields": o.fields,
                        "status": o.status.as_str(),
                        "attempt": o.attempt,
                        "error_code": o.error.as_ref().map(|e| e.code.as_str()),
                        "confirmed_by_read_back": o.confirmed_by_read_back,
                    })
                })
                .collect();
            assert_eq!(
                steps_values_text(&outcomes[..n]),
                verify::jsonb_text(&json!({ "steps": steps })),
                "{n} attempts"
            );
        }
    }
}
