//! Razorpay TPAP "Update UPI Number" wire types: the update body, the number entity and lists.

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize)]
pub struct UpdateUpiNumber<'a> {
    pub upi_number: &'a str,
    pub vpa: &'a str,
    pub action: &'a str,
    pub consent: bool,
}

#[derive(Debug, Deserialize)]
pub struct UpiNumberEntity {
    pub entity: Option<String>,
    pub upi_number: Option<String>,
    pub status: Option<String>,
    pub vpa: Option<String>,
}

/// `{"error": {...}}`; any member may be missing, null, `""` or `"NA"`.
#[derive(Debug, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody {
    pub code: Option<serde_json::Value>,
    pub description: Option<serde_json::Value>,
    pub field: Option<serde_json::Value>,
    pub reason: Option<serde_json::Value>,
}

/// `GET /v1/upi/tpap/upi_number`: the customer's UPI numbers.
#[derive(Debug, Deserialize)]
pub struct UpiNumberList {
    pub upi_numbers: Option<Vec<ListedUpiNumber>>,
}

#[derive(Debug, Deserialize)]
pub struct ListedUpiNumber {
    pub number: Option<String>,
    pub vpa: Option<String>,
    pub status: Option<String>,
}
