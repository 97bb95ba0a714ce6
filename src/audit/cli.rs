//! `profile-gateway audit ...`: operator and auditor commands.

use crate::audit::verify::{self, Filter};
use crate::settings::Settings;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::Connection;

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Print the keyed HMAC of a PII value read from stdin (to search the audit trail for it).
    Hmac,
    /// Re-walk the audit chains, recomputing every hash; report the first broken link, gap or
    /// reordered row of each chain (exit code 1), and print the digest of all chain heads.
    Verify {
        /// Only this user's chain.
        #[arg(long)]
        user: Option<String>,
        /// Only events from this time on (RFC 3339, or a date YYYY-MM-DD meaning 00:00 UTC).
        #[arg(long)]
        since: Option<String>,
        /// Fail unless the chain heads still produce this digest (printed by an earlier run).
        #[arg(long)]
        against: Option<String>,
        /// Compute the digest as of this time instead of now (RFC 3339 or YYYY-MM-DD).
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Create the coming months' audit partitions and detach those past the retention period.
    Maintain {
        /// Overrides audit.retention_months.
        #[arg(long)]
        retention_months: Option<u32>,
    },
}

fn parse_time(key: &str, s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            format!("--{key}: expected an RFC 3339 time such as 2026-11-01T00:00:00Z or a date")
        })
}

pub async fn run(command: AuditCommand, settings: &Settings) -> Result<(), String> {
    match command {
        AuditCommand::Hmac => {
            let key = settings
                .audit
                .hmac_key
                .as_ref()
                .ok_or("audit.hmac_key is not set")?;
            let key = crate::crypto::decode_key(key).map_err(|e| e.to_string())?;
            let mut value = String::new();
            std::io::stdin()
                .read_line(&mut value)
                .map_err(|e| e.to_string())?;
            println!(
                "{}",
                crate::crypto::hmac_hex(&key, value.trim_end_matches(['\n', '\r']))
            );
            Ok(())
        }
        AuditCommand::Verify {
            user,
            since,
            against,
            as_of,
        } => {
            let mut filter = Filter {
                user,
                since: since
                    .as_deref()
                    .map(|s| parse_time("since", s))
                    .transpose()?,
                as_of: as_of
                    .as_deref()
                    .map(|s| parse_time("as-of", s))
                    .transpose()?,
            };
            if let Some(d) = &against {
                let t = verify::digest_as_of(d)
                    .ok_or("--against: not a digest printed by `audit verify`")?;
                filter.as_of = Some(t);
            }
            let mut conn = connect(settings).await?;
            let report = verify::verify(&mut conn, &filter)
                .await
                .map_err(|e| format!("cannot read the audit trail: {e}"))?;
            for p in &report.problems {
                println!("PROBLEM {p}");
            }
            println!(
                "checked {} events in {} chains: {} problem(s)",
                report.events,
                report.chains,
                report.problems.len()
            );
            println!(
                "digest as of {}: {}",
                report.as_of.to_rfc3339(),
                report.digest
            );
            let mut failures = Vec::new();
            if !report.is_ok() {
                failures.push(format!(
                    "the audit trail failed verification ({} problem(s))",
                    report.problems.len()
                ));
            }
            if let Some(d) = against {
                if d.trim() == report.digest {
                    println!("digest matches the one given with --against");
                } else {
                    failures.push(
                        "the chain heads no longer produce the digest given with --against: \
                         events were changed or removed"
                            .to_string(),
                    );
                }
            }
            if failures.is_empty() {
                Ok(())
            } else {
                Err(failures.join("; "))
            }
        }
        AuditCommand::Maintain { retention_months } => {
            let months = retention_months.unwrap_or(settings.audit.retention_months);
            let pool = sqlx::PgPool::connect_with(
                crate::startup::connect_options(settings).map_err(|e| e.to_string())?,
            )
            .await
            .map_err(|e| format!("cannot connect to database.url: {e}"))?;
            let report = crate::audit::maintain(&pool, months)
                .await
                .map_err(|e| format!("audit maintenance failed: {e}"))?;
            println!("created {} partition(s)", report.created);
            for p in &report.detached {
                println!("detached {p} into audit_archive (archive it, then drop it)");
            }
            Ok(())
        }
    }
}

async fn connect(settings: &Settings) -> Result<sqlx::PgConnection, String> {
    let options = crate::startup::connect_options(settings).map_err(|e| e.to_string())?;
    sqlx::PgConnection::connect_with(&options)
        .await
        .map_err(|e| format!("cannot connect to database.url: {e}"))
}
