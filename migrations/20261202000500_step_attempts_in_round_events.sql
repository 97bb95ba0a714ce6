-- Issue 12, item 2 (the lean settle): a settle writes ONE audit event per change, not one per
-- step attempt plus the final one. It is `change_completed` when the change is final (as before),
-- else `round` (outcome `pending`), and its `values` hold the round's attempts, without values:
--   {"steps": [{"step_no": 1, "target": "juspay_wallet", "upstream_ref": "wlt_…",
--               "fields": ["mobile_number"], "status": "applied", "attempt": 1,
--               "error_code": null, "confirmed_by_read_back": false}, …]}
-- The masked values an attempt sent are its change's: those of the change's `change_requested`
-- event, which its hash covers as well. Events written before this migration (`step_attempted`,
-- one per attempt, with its values) stay as they are; the views below read both shapes, so the
-- auditor's questions (what was tried where, with what outcome; old and new values) get the
-- same answers across the boundary. Views only: no data moves, no lock beyond the views'.

-- One row per step attempt, from either shape. `attempt` is the attempt's number for its step
-- (counted among the older events; stored in the newer ones). The provider's diagnostics, which
-- the events do not carry, are shown from `change_steps` only beside the step's latest attempt
-- when that attempt itself records the step as failed or unknown (the row holds the latest
-- attempt's): no update of `change_steps` can make an applied attempt look failed.
create view audit_step_attempts as
select a.event_id, a.event_type, a.occurred_at, a.user_id, a.seq, a.caller, a.caller_addr,
       a.request_id, a.trace_id, a.change_id, a.step_no, a.target, a.upstream_ref, a.fields,
       a.status, a.attempt, a.error_code, a.confirmed_by_read_back,
       case when d.diag then s.error_retryable end as error_retryable,
       case when d.diag then s.upstream_status end as upstream_status,
       case when d.diag then s.upstream_code end as upstream_code,
       case when d.diag then s.error_message end as error_message,
       a."values" as masked_values, a.hmac_key_id
  from (
    select e.id as event_id, e.event_type, e.occurred_at, e.user_id, e.seq, e.caller,
           e.caller_addr, e.request_id, e.trace_id, e.change_id, e.step_no, e.target,
           e.upstream_ref, e.fields, e.outcome as status,
           (select count(*) from audit_events p
             where p.user_id = e.user_id and p.change_id = e.change_id
               and p.event_type = 'step_attempted' and p.step_no = e.step_no
               and p.seq <= e.seq)::int as attempt,
           e.error_code, null::boolean as confirmed_by_read_back, e."values", e.hmac_key_id
      from audit_events e
     where e.event_type = 'step_attempted'
    union all
    select e.id, e.event_type, e.occurred_at, e.user_id, e.seq, e.caller, e.caller_addr,
           e.request_id, e.trace_id, e.change_id, (s.v ->> 'step_no')::int, s.v ->> 'target',
           s.v ->> 'upstream_ref',
           array(select jsonb_array_elements_text(s.v -> 'fields')),
           s.v ->> 'status', (s.v ->> 'attempt')::int, s.v ->> 'error_code',
           (s.v ->> 'confirmed_by_read_back')::boolean,
           coalesce((select jsonb_object_agg(k.k, r."values" -> k.k)
                       from jsonb_array_elements_text(s.v -> 'fields') k(k)
                      where r."values" ? k.k), '{}'::jsonb),
           r.hmac_key_id
      from audit_events e
     cross join lateral jsonb_array_elements(
                case when jsonb_typeof(e."values" -> 'steps') = 'array'
                     then e."values" -> 'steps' else '[]'::jsonb end) s(v)
      left join lateral (
          select q."values", q.hmac_key_id from audit_events q
           where q.user_id = e.user_id and q.change_id = e.change_id
             and q.event_type = 'change_requested'
           order by q.seq limit 1) r on true
     where e.event_type in ('round', 'change_completed')
  ) a
  left join change_steps s on s.change_id = a.change_id and s.step_no = a.step_no
 cross join lateral (
     select a.status in ('failed', 'unknown') and s.attempts = a.attempt as diag) d;

-- Same columns as migration 20261202000200. A step attempt's row now comes from either shape:
-- `event_type` is its event's (`step_attempted` for the older ones, `round` or
-- `change_completed` for the newer) and `outcome` the attempt's status. Old values are derived
-- as before: the last earlier applied attempt of the same user (at the same target and object
-- for an attempt, at any for a request).
create or replace view audit_field_changes as
select e.id as event_id, e.occurred_at, e.user_id, e.event_type, e.outcome, e.caller,
       e.caller_addr, e.request_id, e.change_id, e.step_no, e.target, e.upstream_ref,
       f.key as field,
       coalesce(f.value ->> 'old', prev.v ->> 'new') as old_value_masked,
       f.value ->> 'new' as new_value_masked,
       coalesce(f.value ->> 'old_hmac', prev.v ->> 'new_hmac') as old_hmac,
       f.value ->> 'new_hmac' as new_hmac,
       e.hmac_key_id,
       case when f.value ? 'old_hmac' then coalesce(f.value ->> 'old_hmac_key_id', e.hmac_key_id)
            when prev.v ? 'new_hmac' then prev.k end as old_hmac_key_id
  from (
    select e.id, e.occurred_at, e.user_id, e.seq, e.event_type, e.outcome, e.caller,
           e.caller_addr, e.request_id, e.change_id, e.step_no, e.target, e.upstream_ref,
           e."values", e.hmac_key_id
      from audit_events e
     where e.event_type = 'change_requested'
    union all
    select a.event_id, a.occurred_at, a.user_id, a.seq, a.event_type, a.status, a.caller,
           a.caller_addr, a.request_id, a.change_id, a.step_no, a.target, a.upstream_ref,
           a.masked_values, a.hmac_key_id
      from audit_step_attempts a
  ) e
 cross join lateral jsonb_each(e."values") f(key, value)
  left join lateral (
      select p.masked_values -> f.key as v, p.hmac_key_id as k
        from audit_step_attempts p
       where not (f.value ? 'old')
         and p.user_id = e.user_id and p.seq < e.seq
         and p.status = 'applied'
         and p.masked_values -> f.key ? 'new'
         and (e.event_type = 'change_requested'
              or (p.target is not distinct from e.target
                  and p.upstream_ref is not distinct from e.upstream_ref))
       order by p.seq desc
       limit 1) prev on true
 where jsonb_typeof(f.value) = 'object'
union all
select e.id as event_id, e.occurred_at, e.user_id, e.event_type, e.outcome, e.caller,
       e.caller_addr, e.request_id, e.change_id, e.step_no, e.target, e.upstream_ref,
       f.field,
       case when e."values" -> 'old' -> f.field is null or e."values" -> 'old' -> f.field = 'null'
            then null else e."values" -> 'old' ->> f.field end as old_value_masked,
       case when e."values" -> 'new' -> f.field = 'null' then null
            else e."values" -> 'new' ->> f.field end as new_value_masked,
       null::text as old_hmac,
       null::text as new_hmac,
       e.hmac_key_id,
       null::text as old_hmac_key_id
  from audit_events e
 cross join lateral unnest(e.fields) f(field)
 where e.event_type = 'links_updated';

grant select on audit_step_attempts to profile_gateway_app, profile_gateway_auditor;
