//! The call journal: what each upstream call looked like on the wire, so tests can assert the
//! exact request an adapter sent without the sandbox ever keeping a secret.

use std::collections::{BTreeMap, VecDeque};

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::faults::FiredFault;

/// Oldest entries are dropped beyond this, so a long benchmark cannot exhaust memory.
const CAPACITY: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Arrival order, starting at 1; never reused within one sandbox, not even after a clear.
    pub seq: u64,
    /// Route name, or `None` for a path (or method) no upstream serves.
    pub route: Option<String>,
    pub method: String,
    /// Path plus `?query` when there was one.
    pub path: String,
    /// Lower-case names; repeated headers joined with `, `; `authorization` masked.
    pub headers: BTreeMap<String, String>,
    /// Razorpay: the Basic username (key id). Juspay: `juspay_api_key_ok` or `invalid`.
    /// `None` when no usable credentials were sent.
    pub auth_principal: Option<String>,
    pub auth_ok: bool,
    /// Request body (lossy UTF-8).
    pub body: String,
    /// Status sent; `None` while the call is in flight or when no response was sent
    /// (reset, hang).
    pub status: Option<u16>,
    pub fault: Option<FiredFault>,
}

#[derive(Debug, Default)]
pub(crate) struct Journal {
    next_seq: u64,
    entries: VecDeque<JournalEntry>,
}

impl Journal {
    /// Records a call on arrival (so hung calls are visible) and returns its `seq`.
    pub(crate) fn open(&mut self, mut entry: JournalEntry) -> u64 {
        self.next_seq += 1;
        entry.seq = self.next_seq;
        if self.entries.len() == CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
        self.next_seq
    }

    pub(crate) fn set_status(&mut self, seq: u64, status: u16) {
        // Entries are in seq order, and recent ones are the ones still being answered.
        if let Some(e) = self.entries.iter_mut().rev().find(|e| e.seq == seq) {
            e.status = Some(status);
        }
    }

    pub(crate) fn entries(&self) -> Vec<JournalEntry> {
        self.entries.iter().cloned().collect()
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

pub(crate) fn headers_for_journal(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = if name == axum::http::header::AUTHORIZATION {
            mask_authorization(value.as_bytes())
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        };
        out.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    out
}

/// Keeps the scheme word (tests assert it is exactly `Basic`) and hides the credentials.
fn mask_authorization(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    match text.split_once(' ') {
        Some((scheme, _)) => format!("{scheme} ****"),
        None => "****".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_is_masked_but_keeps_its_scheme() {
        assert_eq!(mask_authorization(b"Basic dXNlcjpwYXNz"), "Basic ****");
        assert_eq!(mask_authorization(b"basic x"), "basic ****");
        assert_eq!(mask_authorization(b"secret"), "****");
    }
}
