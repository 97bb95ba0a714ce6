//! What the webhook receiver got, oldest first, bounded.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// Oldest receipts are dropped beyond this.
const CAPACITY: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookReceipt {
    /// Arrival order, starting at 1.
    pub seq: u64,
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// `content-type`, `profile-gateway-event` and the `webhook-*` headers, lower-case.
    pub headers: BTreeMap<String, String>,
    /// The body as it arrived (lossy UTF-8).
    pub body: String,
    /// Whether the signature matches the sandbox's webhook secret (within 5 minutes of the
    /// timestamp); `None` when the sandbox has no secret to check with.
    pub signature_valid: Option<bool>,
}

#[derive(Debug, Default)]
pub(crate) struct Inbox {
    next_seq: u64,
    receipts: VecDeque<WebhookReceipt>,
}

impl Inbox {
    pub(crate) fn push(&mut self, mut r: WebhookReceipt) {
        self.next_seq += 1;
        r.seq = self.next_seq;
        if self.receipts.len() == CAPACITY {
            self.receipts.pop_front();
        }
        self.receipts.push_back(r);
    }

    pub(crate) fn entries(&self) -> Vec<WebhookReceipt> {
        self.receipts.iter().cloned().collect()
    }

    pub(crate) fn clear(&mut self) {
        self.receipts.clear();
    }
}
