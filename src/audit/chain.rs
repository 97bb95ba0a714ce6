//! The hash chain as the gateway writes it (encoding v3, `verify::canonical`): the hot path's
//! events are hashed here, under the user's chain slot, and written with the head they extend.
//! The statement that writes them advances the head in the user's `profile_links` row only if it
//! still is the head they were chained to (compare-and-set), so a writer that raced (another
//! replica, a links update chained by the database) costs a retry, never a fork.
//!
//! A slot serializes this replica's writes of one user's events (the record and the settle run in
//! different tasks) and remembers the head its last write left, so a write needs no read first.

use super::verify::{self, EventRow, GENESIS};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

/// The last event of a user's chain: its seq and hash (`GENESIS` at seq 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
}

impl Head {
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }
}

/// Appends `row` to the chain at `head`: fills in seq, prev_hash, format and hash, and moves
/// `head` to it.
pub fn append(head: &mut Head, mut row: EventRow) -> EventRow {
    row.seq = head.seq + 1;
    row.prev_hash = std::mem::take(&mut head.hash);
    row.format = Some(3);
    row.id = 0;
    row.hash = verify::event_hash(&row);
    head.seq = row.seq;
    head.hash = row.hash.clone();
    row
}

/// An event's time as the database stores it (microseconds).
pub fn now() -> DateTime<Utc> {
    chrono::SubsecRound::trunc_subsecs(Utc::now(), 6)
}

type Slot = Arc<tokio::sync::Mutex<Option<Head>>>;

/// Slots kept before idle ones are dropped (a dropped slot only costs a read of the head).
const MAX_SLOTS: usize = 100_000;

/// Every user's chain slot in this replica.
#[derive(Default)]
pub struct ChainHeads {
    slots: Mutex<HashMap<String, Slot>>,
}

impl ChainHeads {
    /// Takes the slots of `users`, in user order (so two writers holding several cannot
    /// deadlock), waiting for a write of the same user in flight.
    pub async fn hold<'a>(&self, users: impl IntoIterator<Item = &'a str>) -> Held {
        let mut users: Vec<&str> = users.into_iter().collect();
        users.sort_unstable();
        users.dedup();
        let slots: Vec<(String, Slot)> = {
            let mut map = self.slots.lock().expect("chain slots");
            if map.len() >= MAX_SLOTS {
                map.retain(|_, s| Arc::strong_count(s) > 1);
            }
            users
                .iter()
                .map(|u| {
                    let slot = map.entry((*u).to_string()).or_default();
                    ((*u).to_string(), Arc::clone(slot))
                })
                .collect()
        };
        let mut held = HashMap::with_capacity(slots.len());
        for (user, slot) in slots {
            held.insert(user, slot.lock_owned().await);
        }
        Held { slots: held }
    }
}

impl ChainHeads {
    /// A head read elsewhere (with the links): kept if this replica knows none for the user and
    /// no write holds the slot.
    pub fn offer(&self, user: &str, head: Head) {
        let slot = {
            let map = self.slots.lock().expect("chain slots");
            map.get(user).cloned()
        };
        let slot = match slot {
            Some(s) => s,
            None => {
                let mut map = self.slots.lock().expect("chain slots");
                if map.len() >= MAX_SLOTS {
                    return;
                }
                Arc::clone(map.entry(user.to_string()).or_default())
            }
        };
        if let Ok(mut known) = slot.try_lock()
            && known.is_none()
        {
            *known = Some(head);
        }
    }
}

/// The slots one write holds: the heads it chains from.
pub struct Held {
    slots: HashMap<String, OwnedMutexGuard<Option<Head>>>,
}

impl Held {
    /// Users whose head this replica does not know (first write since start, or after a failed
    /// write): read them before chaining.
    pub fn unknown(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|(_, h)| h.is_none())
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// The head `user`'s next event extends; `None` when unknown or not held.
    pub fn head(&self, user: &str) -> Option<&Head> {
        self.slots.get(user).and_then(|h| h.as_ref())
    }

    pub fn set(&mut self, user: &str, head: Head) {
        if let Some(slot) = self.slots.get_mut(user) {
            **slot = Some(head);
        }
    }

    /// `user`'s head is to be read again before the next write (the row's head was not the one
    /// this replica chained from, and the write did not say which it is).
    pub fn forget_user(&mut self, user: &str) {
        if let Some(slot) = self.slots.get_mut(user) {
            **slot = None;
        }
    }

    /// After a write whose outcome is unknown (the connection broke): read every head again.
    pub fn forget(&mut self) {
        for slot in self.slots.values_mut() {
            **slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> EventRow {
        EventRow {
            id: 7,
            occurred_at: DateTime::from_timestamp_micros(1_767_225_600_123_456).unwrap(),
            user_id: "alice".into(),
            seq: 0,
            prev_hash: String::new(),
            hash: String::new(),
            event_type: "change_requested".into(),
            caller: "app".into(),
            outcome: "accepted".into(),
            change_id: None,
            step_no: None,
            target: None,
            upstream_ref: None,
            fields: vec!["mobile_number".into()],
            fields_malformed: false,
            values_text: "{}".into(),
            hmac_key_id: None,
            error_code: None,
            request_id: Some("r".into()),
            trace_id: None,
            caller_addr: None,
            actor_text: None,
            format: None,
        }
    }

    #[test]
    fn appended_events_link_and_verify() {
        let mut head = Head::genesis();
        let a = append(&mut head, row());
        let b = append(&mut head, row());
        assert_eq!((a.seq, b.seq), (1, 2));
        assert_eq!(a.prev_hash, GENESIS);
        assert_eq!(b.prev_hash, a.hash);
        assert_eq!(
            head,
            Head {
                seq: 2,
                hash: b.hash.clone()
            }
        );
        assert_eq!(verify::event_hash(&b), b.hash);
        // v3 leaves the id out: the database assigns it after the hash.
        let mut c = b.clone();
        c.id = 12345;
        assert_eq!(verify::event_hash(&c), b.hash);
        // ...but nothing else.
        c.caller = "other".into();
        assert_ne!(verify::event_hash(&c), b.hash);
    }

    #[tokio::test]
    async fn a_slot_is_held_by_one_writer_at_a_time_and_keeps_its_head() {
        let heads = Arc::new(ChainHeads::default());
        let mut first = heads.hold(["bob", "alice", "bob"]).await;
        assert_eq!(first.unknown().len(), 2);
        first.set(
            "alice",
            Head {
                seq: 3,
                hash: "h".into(),
            },
        );
        let waiting = {
            let heads = Arc::clone(&heads);
            tokio::spawn(async move { heads.hold(["alice"]).await.head("alice").cloned() })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        assert_eq!(
            waiting.await.unwrap(),
            Some(Head {
                seq: 3,
                hash: "h".into()
            })
        );
    }
}
