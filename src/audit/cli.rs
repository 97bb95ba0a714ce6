//! `profile-gateway audit ...`: operator and auditor commands.

use crate::audit::checkpoint::{self, CheckpointSigner};
use crate::audit::verify::{self, Filter};
use crate::audit::witnessed;
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
        /// The checkpoint signers' public key (SPKI PEM, `openssl pkey -pubout`); with
        /// --checkpoints, checks the database against the witness's signed checkpoints.
        #[arg(long, requires = "checkpoints")]
        public_key: Option<std::path::PathBuf>,
        /// The witness directory (audit.witness_dir, or a copy fetched from the witness).
        #[arg(long, requires = "public_key")]
        checkpoints: Option<std::path::PathBuf>,
    },
    /// Sign a checkpoint of every chain now (besides the gateway's interval checkpoints), and
    /// write the witness backlog.
    Checkpoint,
    /// Print an inclusion proof of a user's chain head in a signed checkpoint.
    Prove {
        #[arg(long)]
        user: String,
        /// The earliest checkpoint in which the chain reached this seq (default: the latest).
        #[arg(long)]
        seq: Option<i64>,
    },
    /// Check a proof from `audit prove` offline, with the public key alone.
    VerifyProof {
        /// SPKI PEM public key.
        #[arg(long)]
        public_key: std::path::PathBuf,
        /// The proof file (default: stdin).
        #[arg(long)]
        proof: Option<std::path::PathBuf>,
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
            public_key,
            checkpoints,
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
            let key = public_key.as_deref().map(read_public_key).transpose()?;
            record_read(&mut conn, "verify", &filter.user).await?;
            let report = verify::verify(&mut conn, &filter)
                .await
                .map_err(|e| format!("cannot read the audit trail: {e}"))?;
            for p in &report.problems {
                println!("PROBLEM {p}");
            }
            let mut findings = 0;
            if let (Some(key), Some(dir)) = (key, checkpoints.as_deref()) {
                let dir_report = witnessed::check_dir(dir, &key)?;
                let mut all = dir_report.findings;
                all.extend(
                    witnessed::check_database(&mut conn, &dir_report.checkpoints)
                        .await
                        .map_err(|e| format!("cannot read the audit trail: {e}"))?,
                );
                for f in &all {
                    println!("PROBLEM {f}");
                }
                findings = all.len();
                match dir_report.checkpoints.iter().next_back() {
                    Some((seq, w)) => println!(
                        "checked {} signed checkpoint(s), the last {seq} at {}: {findings} problem(s)",
                        dir_report.checkpoints.len(),
                        w.note.body.time.to_rfc3339()
                    ),
                    None => println!("no valid checkpoint in {}", dir.display()),
                }
                if dir_report.checkpoints.is_empty() && findings == 0 {
                    findings = 1;
                    println!("PROBLEM no_checkpoints: the witness directory holds no checkpoint");
                }
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
            if findings > 0 {
                failures.push(format!(
                    "the database contradicts the signed checkpoints ({findings} problem(s))"
                ));
            }
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
        AuditCommand::Checkpoint => {
            let path = settings
                .audit
                .signing_key_file
                .as_deref()
                .ok_or("audit.signing_key_file is not set")?;
            let signer = CheckpointSigner::from_file(std::path::Path::new(path))?;
            let pool = pool(settings).await?;
            let seq = checkpoint::take(&pool, &signer, None)
                .await
                .map_err(|e| format!("checkpoint failed: {e}"))?
                .expect("an on-demand checkpoint is always taken");
            println!("checkpoint {seq} signed with key {}", signer.key_id());
            if let Some(dir) = &settings.audit.witness_dir {
                let left = checkpoint::flush_witness(&pool, std::path::Path::new(dir))
                    .await
                    .map_err(|e| e.to_string())?;
                println!("witness {dir}: {left} checkpoint(s) still to write");
            }
            Ok(())
        }
        AuditCommand::Prove { user, seq } => {
            let mut conn = connect(settings).await?;
            record_read(&mut conn, "prove", &Some(user.clone())).await?;
            let proof =
                witnessed::prove(&mut conn, &user, seq)
                    .await?
                    .ok_or_else(|| match seq {
                        Some(s) => format!("no checkpoint has seen seq {s} of {user}'s chain yet"),
                        None => format!("no checkpoint has seen {user}'s chain yet"),
                    })?;
            print!("{}", proof.text());
            Ok(())
        }
        AuditCommand::VerifyProof { public_key, proof } => {
            let key = read_public_key(&public_key)?;
            let text = match proof {
                Some(p) => std::fs::read_to_string(&p)
                    .map_err(|e| format!("--proof {}: {e}", p.display()))?,
                None => std::io::read_to_string(std::io::stdin()).map_err(|e| e.to_string())?,
            };
            let proven = witnessed::verify_proof(&text, &key)
                .map_err(|e| format!("the proof does not hold: {e}"))?;
            println!(
                "OK user={} length={} head={} in checkpoint {} at {}",
                proven.leaf.user,
                proven.leaf.len,
                proven.leaf.head,
                proven.checkpoint,
                proven.time.to_rfc3339()
            );
            Ok(())
        }
        AuditCommand::Maintain { retention_months } => {
            let months = retention_months.unwrap_or(settings.audit.retention_months);
            let pool = sqlx::PgPool::connect_with(
                crate::db::connect_options(settings).map_err(|e| e.to_string())?,
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

fn read_public_key(path: &std::path::Path) -> Result<ed25519_dalek::VerifyingKey, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("--public-key {}: {e}", path.display()))?;
    checkpoint::public_key_from_pem(&pem)
        .map_err(|e| format!("--public-key {}: {e}", path.display()))
}

/// PCI DSS 10.2.1.3: reading the audit trail through this tool is itself an audit event.
async fn record_read(
    conn: &mut sqlx::PgConnection,
    command: &str,
    user: &Option<String>,
) -> Result<(), String> {
    sqlx::query!(
        "select audit_record_read($1, $2)",
        format!("audit {command}"),
        user.as_deref()
    )
    .execute(&mut *conn)
    .await
    .map_err(|e| format!("cannot record this read of the audit trail: {e}"))?;
    Ok(())
}

async fn pool(settings: &Settings) -> Result<sqlx::PgPool, String> {
    sqlx::PgPool::connect_with(crate::db::connect_options(settings).map_err(|e| e.to_string())?)
        .await
        .map_err(|e| format!("cannot connect to database.url: {e}"))
}

async fn connect(settings: &Settings) -> Result<sqlx::PgConnection, String> {
    let options = crate::db::connect_options(settings).map_err(|e| e.to_string())?;
    sqlx::PgConnection::connect_with(&options)
        .await
        .map_err(|e| format!("cannot connect to database.url: {e}"))
}
