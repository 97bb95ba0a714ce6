-- Issue 12, item 1: a change's idempotency key lives in the change row, under a unique index,
-- instead of in a table of its own. The record writes one row per change instead of two (and no
-- deferred foreign-key check at commit); the settle releases the key in the update of the change
-- row it makes anyway. The old table's rows move here and the name stays readable as a view.
--
-- Not expand-only, as 20261202000200 (which an older build already cannot pass): roll the
-- gateway forward with it.

-- No key may be read or written while they move. ACCESS EXCLUSIVE at once, so that no later
-- statement of this migration has to upgrade a lock while an older build's record, which reads
-- the keys before it inserts one, waits for it (that would deadlock, and abort this migration).
-- The older builds take these tables in different orders (the settle changes first, the record
-- idempotency_keys first), so a deadlock can still happen here, at the LOCK, before any work: the
-- statement aborted is retried (the Job, or the caller with the same key). Bounded, so the Job
-- fails and retries rather than queue every write. A DO block, so that a file applied outside a
-- transaction (scripts/schema.sh) runs too.
set local lock_timeout = '10s';
do $$ begin lock table idempotency_keys, changes in access exclusive mode; end $$;

alter table changes
    add column idem_key             text,
    add column idem_fingerprint     bytea,
    -- Set while the first request is still being answered: a concurrent duplicate gets 409.
    add column idem_in_flight_until timestamptz,
    add column idem_expires_at      timestamptz,
    add constraint changes_idem_key_whole check (
        (idem_key is null) = (idem_fingerprint is null)
        and (idem_key is null) = (idem_expires_at is null));

-- A key names at most one change (a key reused after its expiry was repointed, so each change
-- has at most one key).
update changes c
   set idem_key = k.idem_key, idem_fingerprint = k.fingerprint,
       idem_in_flight_until = k.in_flight_until, idem_expires_at = k.expires_at
  from idempotency_keys k
 where k.change_id = c.id;

-- The record's lookup and its conflict target. A key stays in it until it is released (reaped,
-- or expired and reused by a new change), live or not.
create unique index changes_idem_key on changes (caller, user_id, idem_key)
    where idem_key is not null;
-- The reaper's scan.
create index changes_idem_expiry on changes (idem_expires_at) where idem_key is not null;

drop table idempotency_keys;

-- Queries written against the old table still read it. `created_at` is the change's. The view is
-- simple enough for PostgreSQL to write through, so only reading is granted: a DELETE through it
-- would delete the change.
create view idempotency_keys as
select caller, user_id, idem_key, idem_fingerprint as fingerprint, id as change_id,
       idem_in_flight_until as in_flight_until, created_at, idem_expires_at as expires_at
  from changes
 where idem_key is not null;
revoke all on idempotency_keys from public, profile_gateway_app;
grant select on idempotency_keys to profile_gateway_app;
comment on view idempotency_keys is
    'The idempotency keys, which live in changes since migration 20261202000300.';
