-- Durable changes: idempotency keys, retry scheduling, and a retry window for failed changes.

-- One row per (caller, user, key): the key maps to the change it created. `fingerprint` is the
-- SHA-256 of method, path and canonical body, so a reused key with another body is refused.
create table idempotency_keys (
    caller           text not null,
    user_id          text not null,
    idem_key         text not null,
    fingerprint      bytea not null,
    -- Deferred: the key is written before the change row, so the audit chain head stays the last lock.
    change_id        uuid not null references changes (id) deferrable initially deferred,
    -- Set while the first request is still being answered; a concurrent duplicate gets 409 until
    -- then. Bounded, so a replica that died mid-request does not block the key forever.
    in_flight_until  timestamptz,
    created_at       timestamptz not null default now(),
    expires_at       timestamptz not null,
    primary key (caller, user_id, idem_key)
);
create index idempotency_keys_expiry on idempotency_keys (expires_at);

-- A change that failed finally keeps its sealed payload for a bounded window so an operator can
-- re-drive it (POST /changes/{id}/retry); an applied change erases it at once.
alter table changes drop constraint changes_check1;
alter table changes add column payload_expires_at timestamptz;
alter table changes add constraint changes_payload_only_while_needed
    check (payload_enc is null or status <> 'applied');

-- Which attempt of a step confirmed its outcome by reading the upstream state back.
alter table change_steps add column confirmed_by_read_back boolean not null default false;

-- The completer scans unfinished changes whose lease ran out, oldest first per user.
create index changes_pending_by_user on changes (user_id, user_seq) where status = 'pending';
