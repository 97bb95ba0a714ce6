//! Juspay "Update Mobile Number" wire types: the wallet update form and the wallet account answer.

use serde::{Deserialize, Serialize};

/// `command=update&mobile_number=...`, form-urlencoded.
#[derive(Debug, Serialize)]
pub struct UpdateMobileForm<'a> {
    pub command: &'static str,
    pub mobile_number: &'a str,
}

#[derive(Debug, Deserialize)]
pub struct WalletAccount {
    pub id: Option<String>,
    pub object: Option<String>,
    pub metadata: Option<WalletMetadata>,
}

#[derive(Debug, Deserialize)]
pub struct WalletMetadata {
    pub mobile_number: Option<String>,
}
