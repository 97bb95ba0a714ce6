//! Juspay "Update Mobile Number" wire types: the request and answer bodies of Juspay's wallet
//! mobile-number update, as its API documents them.

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
