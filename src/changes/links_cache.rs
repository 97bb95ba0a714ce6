//! The links each change is planned against, remembered per replica so the hot path does not read
//! them from the database for every change. A cached entry is only a guess: the statement that
//! records the change compares its version (`profile_links.updated_at`) under the user's row lock
//! and refuses a stale one, and the change is then planned again from a fresh read. A stale entry
//! (links changed through another replica) therefore costs one refused write, never a wrong plan.

use crate::domain::UserId;
use crate::store::batch::LinksRow;
use std::collections::HashMap;
use std::sync::Mutex;

/// Bound on remembered users. Full means forget everything: the next change of each user reads
/// once more, which is cheaper to reason about than an eviction order.
const MAX_ENTRIES: usize = 65_536;

#[derive(Default)]
pub struct LinksCache {
    entries: Mutex<HashMap<UserId, LinksRow>>,
}

impl LinksCache {
    pub fn get(&self, user: &UserId) -> Option<LinksRow> {
        self.lock().get(user).cloned()
    }

    pub fn put(&self, user: &UserId, row: LinksRow) {
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(user) {
            entries.clear();
        }
        entries.insert(user.clone(), row);
    }

    pub fn forget(&self, user: &UserId) {
        self.lock().remove(user);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, LinksRow>> {
        // A panic while holding the lock cannot leave the map half-updated in a way that matters:
        // every entry is re-checked by the database anyway.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ProfileLinks;

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    fn row(customer: &str) -> LinksRow {
        LinksRow {
            links: ProfileLinks::empty(&crate::providers::Registry::standard().link_members())
                .with(crate::domain::Target::JUSPAY_CUSTOMER, &[customer]),
            version: chrono::Utc::now(),
        }
    }

    #[test]
    fn remembers_replaces_and_forgets() {
        let cache = LinksCache::default();
        assert!(cache.get(&user("alice")).is_none());
        cache.put(&user("alice"), row("cst_1"));
        cache.put(&user("alice"), row("cst_2"));
        let got = cache.get(&user("alice")).unwrap();
        assert_eq!(
            got.links.objects(crate::domain::Target::JUSPAY_CUSTOMER),
            ["cst_2"]
        );
        cache.forget(&user("alice"));
        assert!(cache.get(&user("alice")).is_none());
    }

    #[test]
    fn a_full_cache_starts_over_instead_of_growing() {
        let cache = LinksCache::default();
        for i in 0..MAX_ENTRIES {
            cache.put(&user(&format!("u{i}")), row("c"));
        }
        cache.put(&user("one-more"), row("c"));
        assert_eq!(cache.lock().len(), 1);
        assert!(cache.get(&user("one-more")).is_some());
        assert!(cache.get(&user("u0")).is_none());
    }
}
