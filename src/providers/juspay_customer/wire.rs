//! Juspay "Update Customer" wire types: the update form and the customer object.

use serde::{Deserialize, Serialize};

/// Only the fields being changed are sent: an absent field is left alone by Juspay.
#[derive(Debug, Default, Serialize)]
pub struct UpdateCustomerForm<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mobile_number: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mobile_country_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_address: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
pub struct Customer {
    pub id: Option<String>,
    pub object_reference_id: Option<String>,
    pub mobile_number: Option<String>,
    pub mobile_country_code: Option<String>,
    pub email_address: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
}
