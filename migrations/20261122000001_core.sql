-- The gateway's own records: who a user is at each provider, and every change with its steps.
-- Values of PII fields never appear here: steps name fields, and the values a pending change still
-- has to send sit in changes.payload_enc, sealed with AES-256-GCM and erased once the change is final.

create table profile_links (
    user_id                     text primary key,
    juspay_customer_id          text,
    juspay_wallet_ids           text[] not null default '{}',
    razorpay_customer_reference text,
    -- Per-user change counter: taking the next value locks this row, which orders a user's changes.
    last_change_seq             bigint not null default 0,
    created_at                  timestamptz not null default now(),
    updated_at                  timestamptz not null default now()
);

create table changes (
    id                  uuid primary key,
    user_id             text not null references profile_links (user_id),
    user_seq            bigint not null,
    caller              text not null,
    request_id          text not null,
    trace_id            text,
    caller_addr         text,
    fields              text[] not null,
    status              text not null default 'pending'
                        check (status in ('pending', 'applied', 'partially_applied', 'failed')),
    payload_key_id      text,
    payload_enc         bytea,
    -- Which replica drives the change, until when, and a fencing counter bumped at every takeover so a
    -- replica that lost its lease cannot record outcomes any more.
    lease_owner         text,
    lease_expires_at    timestamptz,
    fence               bigint not null default 1,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    finished_at         timestamptz,
    unique (user_id, user_seq),
    check ((status = 'pending') = (finished_at is null)),
    check (status = 'pending' or payload_enc is null)
);

create index changes_by_user on changes (user_id, user_seq desc);
create index changes_unfinished on changes (lease_expires_at) where status = 'pending';

create table change_steps (
    change_id        uuid not null references changes (id),
    step_no          int not null,
    target           text not null check (target in ('juspay_customer', 'juspay_wallet', 'razorpay_upi')),
    upstream_ref     text not null,
    fields           text[] not null,
    status           text not null default 'pending'
                     check (status in ('pending', 'applied', 'failed', 'unknown')),
    attempts         int not null default 0,
    error_code       text,
    error_retryable  boolean,
    upstream_status  int,
    upstream_code    text,
    error_message    text,
    updated_at       timestamptz not null default now(),
    primary key (change_id, step_no)
);

-- Append-only audit trail (hardened and chained by the audit migrations that follow).
create table audit_events (
    id           bigint generated always as identity primary key,
    occurred_at  timestamptz not null default now(),
    user_id      text not null,
    event_type   text not null,
    caller       text not null,
    outcome      text not null,
    change_id    uuid,
    step_no      int,
    target       text,
    upstream_ref text,
    fields       text[] not null default '{}',
    -- Masked values and keyed hashes only: {"mobile_number": {"new": "******7766", "new_hmac": "..."}}.
    "values"     jsonb not null default '{}',
    hmac_key_id  text,
    error_code   text,
    request_id   text,
    trace_id     text,
    caller_addr  text
);

create index audit_events_by_user on audit_events (user_id, id);
create index audit_events_by_change on audit_events (change_id);
