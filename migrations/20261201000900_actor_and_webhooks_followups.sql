-- What the reviews of migrations 20261201000700 (actor in the chain) and 20261201000800
-- (webhooks) found, as a migration of its own: an applied migration never changes (sqlx checksums
-- each file, and a database that ran the first text would refuse to start on an edited one).
-- Every statement tolerates a database that already has its effect.
--
-- After this migration, verify with this build or a later one: an older `audit verify` knows only
-- the v1 encoding and reports every event with an actor as altered (docs/operations.md,
-- "Rollback").

set local lock_timeout = '10s';

-- `fields` is a flat list of names. The gateway's role could insert an event whose `fields` has
-- a NULL element or two dimensions; `audit verify` reports such an event as altered, and new ones
-- are refused here. (The CASE because array_position refuses a multidimensional array, and an AND
-- does not promise to evaluate its left side first.) NOT VALID: checking the existing rows would
-- scan the whole audit history under the exclusive lock this statement takes, stopping every
-- gateway write meanwhile. Validate it at a quiet time (docs/operations.md, "Rollback"), which
-- takes only a lock that lets writes through.
do $$
begin
    if not exists (select 1 from pg_constraint where conname = 'audit_events_fields_flat'
                      and conrelid = 'audit_events'::regclass) then
        alter table audit_events add constraint audit_events_fields_flat
            check (case when array_ndims(fields) > 1 then false
                        else array_position(fields, null) is null end) not valid;
    end if;
end $$;

-- `attempts` when the retry window began (an operator redelivery): the backoff starts over.
alter table webhook_events add column if not exists retry_from int not null default 0;

-- A receiver's due events, oldest first: each claim reads at most a few rows of each receiver that
-- is not paused, and none of a paused one's backlog.
drop index if exists webhook_events_due;
create index webhook_events_due on webhook_events (caller, next_attempt_at) where status = 'pending';
-- The claims held now, counted per receiver against webhooks.max_in_flight_per_receiver.
create index if not exists webhook_events_claimed on webhook_events (caller)
    where claimed_until is not null;

-- The default privileges of 20261122000004 gave the app role everything on new tables: take it
-- back, then grant only what the dispatcher and the settle use. Nothing is ever deleted, and an
-- attempt, once recorded, is never changed.
revoke all on webhook_events, webhook_attempts, webhook_receivers from profile_gateway_app;
grant select, insert, update on webhook_events, webhook_receivers to profile_gateway_app;
grant select, insert on webhook_attempts to profile_gateway_app;
