//! Audit events: who changed what, when, from where, with what outcome. Rows are only ever
//! inserted; values appear masked beside a keyed hash, never in plain text.

use crate::crypto::PiiHasher;
use crate::domain::ProfilePatch;
pub mod cli;

use serde_json::{Map, Value, json};
use uuid::Uuid;

/// Where a request came from; copied into every event it causes.
#[derive(Debug, Clone, Default)]
pub struct AuditContext {
    pub caller: String,
    pub request_id: String,
    pub trace_id: Option<String>,
    pub caller_addr: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    pub ctx: &'a AuditContext,
    pub user_id: &'a str,
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
        ctx: &'a AuditContext,
        user_id: &'a str,
        event_type: &'static str,
        outcome: &'a str,
    ) -> Self {
        Self {
            ctx,
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
              fields, "values", hmac_key_id, error_code, request_id, trace_id, caller_addr)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"#,
        e.user_id,
        e.event_type,
        e.ctx.caller,
        e.outcome,
        e.change_id,
        e.step_no,
        e.target,
        e.upstream_ref,
        &e.fields,
        e.values,
        e.hmac_key_id,
        e.error_code,
        e.ctx.request_id,
        e.ctx.trace_id,
        e.ctx.caller_addr,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// `{"mobile_number": {"new": "******7766", "new_hmac": "..."}, ...}` for the fields a patch sets,
/// restricted to `only` when given (a step's own fields).
pub fn masked_values(patch: &ProfilePatch, hasher: &PiiHasher, only: Option<&[String]>) -> Value {
    let mut out = Map::new();
    let wanted = |f: &str| only.is_none_or(|o| o.iter().any(|x| x == f));
    let mut put = |name: &str, masked: String, raw: &str, pii: bool| {
        if wanted(name) {
            let v = if pii {
                json!({"new": masked, "new_hmac": hasher.hash(raw)})
            } else {
                json!({"new": masked})
            };
            out.insert(name.to_string(), v);
        }
    };
    if let Some(v) = &patch.mobile_number {
        put("mobile_number", v.masked(), v.as_str(), true);
    }
    if let Some(v) = &patch.mobile_country_code {
        put("mobile_country_code", v.masked(), v.as_str(), false);
    }
    if let Some(v) = &patch.email_address {
        put("email_address", v.masked(), v.as_str(), true);
    }
    if let Some(v) = &patch.first_name {
        put("first_name", v.masked(), v.as_str(), true);
    }
    if let Some(v) = &patch.last_name {
        put("last_name", v.masked(), v.as_str(), true);
    }
    if let Some(u) = &patch.upi {
        put(
            "upi_number",
            u.upi_number.masked(),
            u.upi_number.as_str(),
            true,
        );
        put("vpa", u.vpa.masked(), u.vpa.as_str(), true);
        put(
            "action",
            u.action.as_str().to_string(),
            u.action.as_str(),
            false,
        );
    }
    Value::Object(out)
}
