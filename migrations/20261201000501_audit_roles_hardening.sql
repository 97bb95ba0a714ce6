-- Roles that cannot rewrite history (docs/auditing.md "Roles and grants").
--
-- 1. Retention runs as its own role. profile_gateway_maintenance (NOLOGIN; grant it to the login
--    role of the `audit maintain` CronJob) may create partitions and detach expired ones; the
--    gateway's role no longer may.
-- 2. The 12-month minimum (PCI DSS 10.5.1) is enforced here, not only in Rust: the old function
--    is kept under another name that nobody but its owner may call, behind a checking wrapper.
-- 3. Reads through the gateway's CLI are recorded as `audit_read` events (PCI DSS 10.2.1.3), with
--    the login role as the caller, which the reader cannot choose; maintenance runs as
--    `maintenance_ran` events.
-- 4. The auditor's `audit_log` view takes status and outcome from the audit events alone, never
--    from `changes` or `change_steps`, which the gateway's role may update.

do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'profile_gateway_maintenance') then
        begin
            create role profile_gateway_maintenance nologin;
        exception when duplicate_object or unique_violation then
            null; -- created concurrently by another database's migration
        end;
    end if;
end
$$;

grant usage on schema public to profile_gateway_maintenance;

alter function audit_detach_expired(int) rename to audit_detach_expired_unchecked;
revoke all on function audit_detach_expired_unchecked(int) from public, profile_gateway_app;

create function audit_detach_expired(retention_months int) returns setof text
language plpgsql security definer set search_path = public, pg_temp
as $$
begin
    if retention_months is null or retention_months < 12 then
        raise exception 'audit retention must be at least 12 months (PCI DSS 10.5.1), not %', retention_months
            using errcode = 'insufficient_privilege';
    end if;
    return query select * from audit_detach_expired_unchecked(retention_months);
end
$$;

revoke all on function audit_detach_expired(int), audit_ensure_partitions(int) from public;
revoke all on function audit_detach_expired(int), audit_ensure_partitions(int) from profile_gateway_app;
grant execute on function audit_detach_expired(int), audit_ensure_partitions(int)
    to profile_gateway_maintenance;

create function audit_record_read(command text, subject_user text) returns void
language sql security definer set search_path = public, pg_temp
as $$
    insert into audit_events (user_id, event_type, caller, outcome, "values")
    values ('_system', 'audit_read', session_user, 'read',
            jsonb_strip_nulls(jsonb_build_object('command', command, 'user', subject_user)))
$$;
revoke all on function audit_record_read(text, text) from public;
grant execute on function audit_record_read(text, text)
    to profile_gateway_auditor, profile_gateway_app, profile_gateway_maintenance;
grant select on audit_chain_heads, audit_chain_anchors, audit_checkpoints
    to profile_gateway_maintenance;

-- Each `audit maintain` run is an event too: when retention last ran, as whom, and what it did,
-- is then in the record (and the gateway can export it without running maintenance itself).
create function audit_record_maintenance(created int, detached text[]) returns void
language sql security definer set search_path = public, pg_temp
as $$
    insert into audit_events (user_id, event_type, caller, outcome, "values")
    values ('_system', 'maintenance_ran', session_user, 'ok',
            jsonb_build_object('partitions_created', created, 'detached', to_jsonb(coalesce(detached, '{}'))))
$$;
revoke all on function audit_record_maintenance(int, text[]) from public;
grant execute on function audit_record_maintenance(int, text[]) to profile_gateway_maintenance;

-- Same columns as before (those of 20261201000102 included). Status, outcome, times and attempts come from the change's own events;
-- the provider's diagnostics (upstream status, code, message, retryable) are not in the events,
-- so they are shown from change_steps only beside an event that itself records the step as not
-- applied: no update of change_steps can make an applied step look failed.
create or replace view audit_log as
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
       case when e.change_id is null then null
            else coalesce(fin.outcome, 'pending') end as change_status,
       req.occurred_at                          as change_created_at,
       fin.occurred_at                          as change_finished_at,
       e.step_no,
       coalesce(e.target, st.target)            as target,
       coalesce(e.upstream_ref, st.upstream_ref) as upstream_ref,
       e.fields,
       e.error_code,
       st.outcome                               as step_status,
       case when e.step_no is not null then st.attempts::int end as step_attempts,
       case when diag then s.error_retryable end as step_error_retryable,
       case when diag then s.upstream_status end as step_upstream_status,
       case when diag then s.upstream_code end   as step_upstream_code,
       case when diag then s.error_message end   as step_error_message,
       e."values"                               as masked_values,
       e.hmac_key_id,
       e.prev_hash,
       e.hash,
       -- Who acted (migration 20261201000102): from the event's own values when it carries them
       -- (link events, operator retries), else from its change's record.
       coalesce(e."values" -> 'actor' ->> 'auth', c.actor ->> 'auth')                 as auth_method,
       coalesce(e."values" -> 'actor' ->> 'subject', c.actor ->> 'subject')           as caller_subject,
       coalesce(e."values" -> 'actor' ->> 'assertion_subject', c.actor ->> 'assertion_subject')
                                                                                      as end_user_subject,
       coalesce(e."values" -> 'actor' ->> 'assertion_jti', c.actor ->> 'assertion_jti') as end_user_assertion_jti,
       coalesce(e."values" -> 'actor' ->> 'gateway_request_id', c.actor ->> 'gateway_request_id')
                                                                                      as gateway_request_id
  from audit_events e
  left join changes c on c.id = e.change_id
  left join lateral (
      select r.occurred_at from audit_events r
       where e.change_id is not null and r.change_id = e.change_id
         and r.user_id = e.user_id and r.event_type = 'change_requested'
       order by r.seq limit 1) req on true
  left join lateral (
      select f.outcome, f.occurred_at from audit_events f
       where e.change_id is not null and f.change_id = e.change_id
         and f.user_id = e.user_id and f.event_type = 'change_completed'
       order by f.seq desc limit 1) fin on true
  left join lateral (
      select (array_agg(a.outcome order by a.seq desc))[1] as outcome,
             (array_agg(a.target order by a.seq desc))[1] as target,
             (array_agg(a.upstream_ref order by a.seq desc))[1] as upstream_ref,
             count(*) as attempts
        from audit_events a
       where e.step_no is not null and a.change_id = e.change_id
         and a.user_id = e.user_id and a.step_no = e.step_no and a.event_type = 'step_attempted') st on true
  left join change_steps s on s.change_id = e.change_id and s.step_no = e.step_no
  cross join lateral (select e.event_type = 'step_attempted' and e.outcome in ('failed', 'unknown') as diag) d;
