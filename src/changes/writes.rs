//! The group-commit writers of the hot path (see `batcher`): the links read, the record and the
//! settle, each batching what concurrent changes write into one statement.

use super::{Limits, batcher, links_cache};
use crate::domain::change;
use crate::store::batch;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

pub struct Writes {
    pub links: batcher::Batcher<String, Option<batch::LinksRow>>,
    pub links_cache: links_cache::LinksCache,
    pub record: batcher::Batcher<change::NewChange, batch::Recorded>,
    pub settle: batcher::Batcher<change::Settle, batch::Settled>,
}

impl Writes {
    pub fn spawn(
        pool: &PgPool,
        limits: &Limits,
        owner: &str,
        max_batch: usize,
        linger: Duration,
        metrics: &Arc<crate::telemetry::metrics::Metrics>,
        members: &[crate::domain::LinkMember],
    ) -> Self {
        let observe = |statement| batcher::Observe {
            statement,
            retry_lost_connection: statement != "settle",
            metrics: Some(Arc::clone(metrics)),
        };
        // One set of chain slots for the record and the settle (both write a user's chain),
        // filled by the links read that precedes a record.
        let heads = Arc::new(crate::audit::chain::ChainHeads::default());
        let p = pool.clone();
        let offered = Arc::clone(&heads);
        let members: Arc<[crate::domain::LinkMember]> = members.into();
        let links = batcher::Batcher::spawn_observed(
            observe("links"),
            max_batch,
            linger,
            move |users: Arc<[String]>| {
                let (p, members, heads) = (p.clone(), Arc::clone(&members), Arc::clone(&offered));
                async move {
                    let found = batch::read_links(&p, &heads, &users, &members).await?;
                    Ok(users.iter().map(|u| found.get(u).cloned()).collect())
                }
            },
        );
        let p = pool.clone();
        let chain = Arc::clone(&heads);
        let (owner, lease, in_flight, retention, max_pending) = (
            owner.to_string(),
            limits.lease,
            limits.deadline + Duration::from_secs(5),
            limits.idempotency_retention,
            limits.max_pending_per_user,
        );
        let record = batcher::Batcher::spawn_observed(
            observe("record"),
            max_batch,
            linger,
            move |items: Arc<[change::NewChange]>| {
                let (p, owner, chain) = (p.clone(), owner.clone(), Arc::clone(&chain));
                async move {
                    let params = batch::RecordParams {
                        lease_owner: &owner,
                        lease,
                        key_in_flight: in_flight,
                        key_retention: retention,
                        max_pending,
                    };
                    // Two requests with one key in one batch: one statement cannot insert a key twice,
                    // so the later copies are answered as duplicates of the first.
                    let mut seen = std::collections::HashSet::new();
                    let mut unique = Vec::with_capacity(items.len());
                    let mut slot = Vec::with_capacity(items.len());
                    for item in items.iter() {
                        let key = (
                            item.origin.caller.as_str(),
                            item.user_id.as_str(),
                            item.idem_key.as_str(),
                        );
                        if seen.insert(key) {
                            slot.push(Some(unique.len()));
                            unique.push(item);
                        } else {
                            slot.push(None);
                        }
                    }
                    let recorded = batch::record_changes(&p, &chain, &unique, &params).await?;
                    Ok(slot
                        .into_iter()
                        .map(|s| match s {
                            Some(i) => recorded[i].clone(),
                            None => batch::Recorded::DuplicateKey,
                        })
                        .collect())
                }
            },
        );
        let p = pool.clone();
        let keep = limits.failed_payload_retention;
        let settle = batcher::Batcher::spawn_observed(
            observe("settle"),
            max_batch,
            linger,
            move |items: Arc<[change::Settle]>| {
                let (p, heads) = (p.clone(), Arc::clone(&heads));
                async move { batch::settle_changes(&p, &heads, &items, keep).await }
            },
        );
        Self {
            links,
            links_cache: links_cache::LinksCache::default(),
            record,
            settle,
        }
    }
}
