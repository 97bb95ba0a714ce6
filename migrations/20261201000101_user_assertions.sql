-- End-user assertions are used once: each jti is remembered until its assertion expires, in the
-- database every replica shares, so a captured assertion cannot be replayed through another pod.
-- A retry of the same change (same caller, user and Idempotency-Key) may present it again.
create table user_assertion_jtis (
    issuer        text not null,
    jti           text not null,
    caller        text not null,
    user_id       text not null,
    idem_key      text,
    expires_at    timestamptz not null,
    first_used_at timestamptz not null default now(),
    primary key (issuer, jti)
);
create index user_assertion_jtis_expiry on user_assertion_jtis (expires_at);

grant select, insert, update, delete on user_assertion_jtis to profile_gateway_app;
