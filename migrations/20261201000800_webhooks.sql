-- Outcome webhooks (Standard Webhooks): an outbox written by the settle statement in the same
-- transaction that records a change's outcome, so no outcome is recorded without its event and no
-- event is sent for an outcome that was not recorded. Every replica's dispatcher claims due events
-- with FOR UPDATE SKIP LOCKED and sends them; bodies are the change as GET /changes/{id} showed it
-- at that commit (masked like every answer: no PII values), stored as the exact signed bytes.
create table webhook_events (
    -- The Standard Webhooks `webhook-id`: the same on every attempt and redelivery of the event.
    id              uuid primary key,
    change_id       uuid not null references changes (id),
    -- The change's caller, whose webhook receives the event.
    caller          text not null,
    event_type      text not null check (event_type in ('change.applied', 'change.partially_applied',
                                                        'change.failed', 'change.step_unknown')),
    body            text not null,
    status          text not null default 'pending' check (status in ('pending', 'delivered', 'failed')),
    -- Attempts claimed so far; an attempt's result is recorded only under the count it claimed.
    attempts        int not null default 0,
    next_attempt_at timestamptz not null default now(),
    -- While a replica sends: which one, and until when its claim holds (then another may resend).
    claimed_by      text,
    claimed_until   timestamptz,
    created_at      timestamptz not null default now(),
    -- Retries go on until webhooks.max_age_hours after this (an operator redelivery restarts it).
    window_start    timestamptz not null default now(),
    delivered_at    timestamptz,
    check ((status = 'delivered') = (delivered_at is not null))
);

create index webhook_events_due on webhook_events (next_attempt_at) where status = 'pending';
create index webhook_events_by_change on webhook_events (change_id);

-- Every attempt that went out, for GET /changes/{id}/deliveries and operators.
create table webhook_attempts (
    id              bigint generated always as identity primary key,
    event_id        uuid not null references webhook_events (id),
    attempt_no      int not null,
    started_at      timestamptz not null,
    duration_ms     int not null,
    -- The receiver's HTTP status; null when none arrived (`error` says why).
    status_code     int,
    error           text check (error in ('timeout', 'connect', 'broken', 'redirect', 'status')),
    replica         text not null,
    -- When the event is due again after this attempt; null when it is not (delivered or failed).
    next_attempt_at timestamptz
);

create index webhook_attempts_by_event on webhook_attempts (event_id, id);

-- Each receiver's health: consecutive failed attempts, and until when it is paused (no attempts at
-- all; after the pause one probe decides whether it resumes).
create table webhook_receivers (
    caller       text primary key,
    failures     int not null default 0,
    paused_until timestamptz,
    updated_at   timestamptz not null default now()
);

grant select, insert, update on webhook_events, webhook_attempts, webhook_receivers to profile_gateway_app;
-- Auditors may see whether and when callers were told (docs/auditing.md): no PII is in them.
grant select on webhook_events, webhook_attempts to profile_gateway_auditor;
