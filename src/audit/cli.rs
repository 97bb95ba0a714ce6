//! `profile-gateway audit ...`: operator and auditor commands.

use crate::settings::Settings;

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Print the keyed HMAC of a PII value read from stdin (to search the audit trail for it).
    Hmac,
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
    }
}
