//! The sandbox's data set: what it starts with, what `GET /__sandbox/state` returns and what a
//! seed file or `PUT /__sandbox/state` replaces it with. One serde shape for all of them so a
//! state dump can be edited and loaded back.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::faults::FaultSpec;

/// Every object the simulated upstreams know, plus faults to install on load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedData {
    #[serde(default)]
    pub juspay_customers: Vec<JuspayCustomer>,
    #[serde(default)]
    pub juspay_wallets: Vec<JuspayWallet>,
    #[serde(default)]
    pub razorpay_customers: Vec<RazorpayCustomer>,
    /// Faults installed when this seed is loaded; `state()` reports the active ones here.
    #[serde(default)]
    pub faults: Vec<FaultSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JuspayCustomer {
    /// Juspay's own id, `cst_...`.
    pub id: String,
    /// The merchant's id for the customer; the API accepts it wherever `id` is accepted.
    pub object_reference_id: String,
    #[serde(default)]
    pub mobile_number: Option<String>,
    #[serde(default)]
    pub mobile_country_code: Option<String>,
    #[serde(default)]
    pub email_address: Option<String>,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default = "juspay_now")]
    pub date_created: String,
    #[serde(default = "juspay_now")]
    pub last_updated: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JuspayWallet {
    /// `wlt_...`.
    pub id: String,
    /// The owning customer's `cst_...` id.
    pub customer_id: String,
    /// Wallet provider as Juspay names it, e.g. `PAYTM`.
    pub wallet: String,
    /// Served as `metadata.mobile_number`.
    #[serde(default)]
    pub mobile_number: Option<String>,
    #[serde(default)]
    pub linked: bool,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub current_balance: Option<f64>,
    #[serde(default)]
    pub last_refreshed: Option<String>,
    #[serde(default)]
    pub gateway_reference_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RazorpayCustomer {
    /// The value callers send in `x-customer-reference`.
    pub customer_reference: String,
    #[serde(default)]
    pub upi_numbers: Vec<UpiNumber>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpiNumber {
    pub number: String,
    #[serde(rename = "type")]
    pub kind: UpiNumberType,
    pub vpa: String,
    pub status: UpiStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpiNumberType {
    Mobile,
    Numeric,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpiStatus {
    Active,
    Inactive,
    Deregistered,
}

/// Juspay's timestamp format, as in the docs' sample (`2016-08-02T08:07:52+0000`).
pub(crate) fn juspay_now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%z").to_string()
}

const DEMO_CREATED: &str = "2024-01-15T10:00:00+0000";

impl SeedData {
    /// The documented demo data set (see the module docs); `serve --sandbox` links demo users to it.
    pub fn demo() -> Self {
        let customer =
            |id: &str, reference: &str, mobile: &str, email: &str, first: &str, last: &str| {
                JuspayCustomer {
                    id: id.into(),
                    object_reference_id: reference.into(),
                    mobile_number: Some(mobile.into()),
                    mobile_country_code: Some("91".into()),
                    email_address: Some(email.into()),
                    first_name: Some(first.into()),
                    last_name: Some(last.into()),
                    date_created: DEMO_CREATED.into(),
                    last_updated: DEMO_CREATED.into(),
                }
            };
        let wallet = |id: &str, customer_id: &str, provider: &str, mobile: &str| JuspayWallet {
            id: id.into(),
            customer_id: customer_id.into(),
            wallet: provider.into(),
            mobile_number: Some(mobile.into()),
            linked: false,
            token: None,
            current_balance: None,
            last_refreshed: None,
            gateway_reference_id: None,
        };
        let upi =
            |reference: &str, number: &str, kind: UpiNumberType, vpa: &str| RazorpayCustomer {
                customer_reference: reference.into(),
                upi_numbers: vec![UpiNumber {
                    number: number.into(),
                    kind,
                    vpa: vpa.into(),
                    status: UpiStatus::Active,
                }],
            };
        SeedData {
            juspay_customers: vec![
                customer(
                    "cst_demo_alice",
                    "alice",
                    "9876543210",
                    "alice@example.com",
                    "Alice",
                    "Liddell",
                ),
                customer(
                    "cst_demo_bob",
                    "bob",
                    "9123456780",
                    "bob@example.com",
                    "Bob",
                    "Builder",
                ),
            ],
            juspay_wallets: vec![
                wallet(
                    "wlt_demo_alice_paytm",
                    "cst_demo_alice",
                    "PAYTM",
                    "9876543210",
                ),
                wallet(
                    "wlt_demo_alice_mobikwik",
                    "cst_demo_alice",
                    "MOBIKWIK",
                    "9876543210",
                ),
                wallet("wlt_demo_bob_paytm", "cst_demo_bob", "PAYTM", "9123456780"),
            ],
            razorpay_customers: vec![
                upi(
                    "cref_demo_alice",
                    "9876543210",
                    UpiNumberType::Mobile,
                    "alice@okaxis",
                ),
                upi(
                    "cref_demo_bob",
                    "912345678",
                    UpiNumberType::Numeric,
                    "bob@okhdfc",
                ),
            ],
            faults: Vec::new(),
        }
    }

    /// Reads a seed file (JSON, this type's shape) and checks it.
    pub fn from_json_file(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let seed: SeedData = serde_json::from_str(&text).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?;
        seed.validate().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?;
        Ok(seed)
    }

    /// Rejects data the lookups would treat ambiguously: duplicate ids, a customer reference
    /// equal to another customer's id, wallets without an owner, and invalid faults.
    pub fn validate(&self) -> Result<(), String> {
        let mut keys = HashSet::new();
        for c in &self.juspay_customers {
            if !keys.insert(c.id.as_str()) {
                return Err(format!(
                    "duplicate juspay customer id or reference {:?}",
                    c.id
                ));
            }
            if c.object_reference_id != c.id && !keys.insert(c.object_reference_id.as_str()) {
                return Err(format!(
                    "duplicate juspay customer id or reference {:?}",
                    c.object_reference_id
                ));
            }
        }
        let customer_ids: HashSet<&str> = self
            .juspay_customers
            .iter()
            .map(|c| c.id.as_str())
            .collect();
        let mut wallet_ids = HashSet::new();
        for w in &self.juspay_wallets {
            if !wallet_ids.insert(w.id.as_str()) {
                return Err(format!("duplicate juspay wallet id {:?}", w.id));
            }
            if !customer_ids.contains(w.customer_id.as_str()) {
                return Err(format!(
                    "wallet {:?} names unknown customer {:?}",
                    w.id, w.customer_id
                ));
            }
        }
        let mut references = HashSet::new();
        for r in &self.razorpay_customers {
            if !references.insert(r.customer_reference.as_str()) {
                return Err(format!(
                    "duplicate razorpay customer reference {:?}",
                    r.customer_reference
                ));
            }
            let mut numbers = HashSet::new();
            for n in &r.upi_numbers {
                if !numbers.insert(n.number.as_str()) {
                    return Err(format!(
                        "duplicate UPI number {:?} for {:?}",
                        n.number, r.customer_reference
                    ));
                }
            }
        }
        for f in &self.faults {
            f.validate().map_err(|e| format!("fault: {e}"))?;
        }
        Ok(())
    }
}
