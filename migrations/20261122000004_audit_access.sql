-- Audit trail, part 3: what each role may do, the auditor's HMAC lookup function and the views
-- documented in docs/auditing.md.

-- The auditor's lookup: the same keyed HMAC-SHA-256 the gateway stores beside each masked value,
-- computed from a value and the base64 key (audit.hmac_key) the auditor supplies. The value must be
-- normalized as the gateway normalizes it (see audit_pii_normalize and docs/auditing.md).
create function audit_pii_hmac(value text, key_base64 text) returns text
language sql immutable strict
set search_path = public, pg_temp
as $$ select encode(hmac(convert_to(value, 'UTF8'), decode(key_base64, 'base64'), 'sha256'), 'hex') $$;

-- The gateway's normalization of a PII value before hashing: email domains and VPAs lower-cased;
-- numbers and names as given.
create function audit_pii_normalize(field text, value text) returns text
language sql immutable strict
as $$
select case
    when field = 'email_address' and position('@' in value) > 0 then
        regexp_replace(value, '@([^@]*)$', '') || '@' || lower(regexp_replace(value, '^.*@', ''))
    when field = 'vpa' then lower(value)
    else value
end
$$;

-- One row per event, with the change and step it belongs to.
create view audit_log as
select e.id                                     as event_id,
       e.occurred_at,
       e.user_id,
       e.seq                                    as user_event_seq,
       e.event_type,
       e.outcome,
       e.caller,
       e.caller_addr,
       e.request_id,
       e.trace_id,
       e.change_id,
       c.user_seq                               as change_seq,
       c.status                                 as change_status,
       c.created_at                             as change_created_at,
       c.finished_at                            as change_finished_at,
       e.step_no,
       coalesce(e.target, s.target)             as target,
       coalesce(e.upstream_ref, s.upstream_ref) as upstream_ref,
       e.fields,
       e.error_code,
       s.status                                 as step_status,
       s.attempts                               as step_attempts,
       s.error_retryable                        as step_error_retryable,
       s.upstream_status                        as step_upstream_status,
       s.upstream_code                          as step_upstream_code,
       s.error_message                          as step_error_message,
       e."values"                               as masked_values,
       e.hmac_key_id,
       e.prev_hash,
       e.hash
  from audit_events e
  left join changes c on c.id = e.change_id
  left join change_steps s on s.change_id = e.change_id and s.step_no = e.step_no;

-- One row per field an event touches, with old and new values (masked) and their HMACs.
create view audit_field_changes as
select e.id            as event_id,
       e.occurred_at,
       e.user_id,
       e.event_type,
       e.outcome,
       e.caller,
       e.caller_addr,
       e.request_id,
       e.change_id,
       e.step_no,
       e.target,
       e.upstream_ref,
       f.key           as field,
       f.value ->> 'old'      as old_value_masked,
       f.value ->> 'new'      as new_value_masked,
       f.value ->> 'old_hmac' as old_hmac,
       f.value ->> 'new_hmac' as new_hmac,
       e.hmac_key_id
  from audit_events e
 cross join lateral jsonb_each(e."values") as f
 where e.event_type in ('change_requested', 'step_attempted')
   and jsonb_typeof(f.value) = 'object'
union all
select e.id,
       e.occurred_at,
       e.user_id,
       e.event_type,
       e.outcome,
       e.caller,
       e.caller_addr,
       e.request_id,
       e.change_id,
       e.step_no,
       e.target,
       e.upstream_ref,
       f.field,
       case when e."values" -> 'old' -> f.field is null or e."values" -> 'old' -> f.field = 'null'
            then null else e."values" -> 'old' ->> f.field end,
       case when e."values" -> 'new' -> f.field = 'null'
            then null else e."values" -> 'new' ->> f.field end,
       null,
       null,
       e.hmac_key_id
  from audit_events e
 cross join lateral unnest(e.fields) as f(field)
 where e.event_type = 'links_updated';

-- Privileges. The gateway's role: full DML on its own tables, INSERT and SELECT only on the audit
-- trail (and nothing on the chain bookkeeping, which only the SECURITY DEFINER trigger touches).
grant usage on schema public to profile_gateway_app, profile_gateway_auditor;
grant select, insert, update, delete on profile_links, changes, change_steps to profile_gateway_app;
grant select, insert on audit_events to profile_gateway_app;
grant select on audit_log, audit_field_changes to profile_gateway_app;
-- Tables that later migrations create get the gateway's DML by default (audit tables revoke it).
alter default privileges in schema public
    grant select, insert, update, delete on tables to profile_gateway_app;
alter default privileges in schema public
    grant usage, select on sequences to profile_gateway_app;

-- The auditor: read-only on the audit trail, its bookkeeping, its views and the archive.
grant select on audit_events, audit_chain_heads, audit_chain_anchors, audit_log, audit_field_changes
    to profile_gateway_auditor;
grant usage on schema audit_archive to profile_gateway_auditor;
alter default privileges in schema audit_archive grant select on tables to profile_gateway_auditor;
grant execute on function audit_pii_hmac(text, text), audit_pii_normalize(text, text)
    to profile_gateway_auditor, profile_gateway_app;
-- Nobody but the owner computes chains or manages partitions by hand.
revoke execute on function audit_events_chain(), audit_create_partition(date),
    audit_ensure_partitions(int), audit_detach_expired(int) from public;
grant execute on function audit_ensure_partitions(int), audit_detach_expired(int)
    to profile_gateway_app;
