-- The row types of the composite variant (what a migration would add if it were kept).
create type change_record_row as (
    id uuid, user_id text, caller text, request_id text, trace_id text, caller_addr text,
    fields text, payload_key_id text, payload_enc bytea, idem_key text, fingerprint bytea,
    links_version timestamptz, audit_values jsonb, hmac_key_id text, actor jsonb);
create type change_step_row as (
    change_id uuid, step_no int, target text, upstream_ref text, fields text);
create type change_settle_row as (
    id uuid, fence bigint, user_id text, caller text, request_id text, trace_id text,
    caller_addr text, final_status text, final_fields text, actor jsonb, finished_at timestamptz);
create type change_outcome_row as (
    parent bigint, step_no int, status text, error_code text, error_retryable bool,
    upstream_status int, upstream_code text, error_message text, confirmed bool, target text,
    upstream_ref text, fields text, audit_values jsonb, hmac_key_id text, change_id uuid);
create type webhook_outbox_row as (
    parent bigint, id uuid, caller text, event_type text, body text);
