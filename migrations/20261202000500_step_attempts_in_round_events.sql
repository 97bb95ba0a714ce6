-- Issue 12, item 2 (the lean settle): a settle writes ONE audit event per change, not one per
-- step attempt plus the final one. It is `change_completed` when the change is final (as before),
-- else `round` (outcome `pending`), and its `values` hold the round's attempts, without values:
--   {"steps": [{"step_no": 1, "target": "juspay_wallet", "upstream_ref": "wlt_…",
--               "fields": ["mobile_number"], "status": "applied", "attempt": 1,
--               "error_code": null, "confirmed_by_read_back": false}, …]}
-- The masked values an attempt sent are its change's: those of the change's `change_requested`
-- event, which its hash covers as well. Events written before this migration (`step_attempted`,
-- one per attempt, with its values) stay as they are; the views below read both shapes, also
-- within one change (a rollout), so the auditor's questions (what was tried where, with what
-- outcome; old and new values) get the same answers across the boundary. Views, and one partial
-- index for them.
--
-- Every value read from an event's JSON is type-checked before it is cast: the gateway's role can
-- insert events (the verifier names a forged one), and a malformed one must not make the auditor's
-- queries fail.

-- The older shape's attempts, by user and seq: the old-value lookup below finds the last one
-- before an event at once, also when a user has none (every user whose history began after this
-- migration). No event written from now on is in it, so it costs the hot path nothing; it is
-- built on every partition at once, holding writes of audit events meanwhile (docs/operations.md).
create index audit_events_step_attempted on audit_events (user_id, seq)
 where event_type = 'step_attempted';

-- One row per step attempt as the events record it, of either shape (no numbering, no
-- diagnostics: the building block of the two views below).
create view audit_step_attempt_rows as
select e.id as event_id, e.event_type, e.occurred_at, e.user_id, e.seq, e.caller, e.caller_addr,
       e.request_id, e.trace_id, e.change_id, e.step_no, e.target, e.upstream_ref, e.fields,
       e.outcome as status, e.error_code, null::boolean as confirmed_by_read_back,
       e."values", e.hmac_key_id
  from audit_events e
 where e.event_type = 'step_attempted'
union all
select e.id, e.event_type, e.occurred_at, e.user_id, e.seq, e.caller, e.caller_addr,
       e.request_id, e.trace_id, e.change_id,
       case when s.v ->> 'step_no' ~ '^[0-9]{1,9}$' then (s.v ->> 'step_no')::int end,
       case when jsonb_typeof(s.v -> 'target') = 'string' then s.v ->> 'target' end,
       case when jsonb_typeof(s.v -> 'upstream_ref') = 'string' then s.v ->> 'upstream_ref' end,
       f.fields,
       case when jsonb_typeof(s.v -> 'status') = 'string' then s.v ->> 'status' end,
       case when jsonb_typeof(s.v -> 'error_code') = 'string' then s.v ->> 'error_code' end,
       case when jsonb_typeof(s.v -> 'confirmed_by_read_back') = 'boolean'
            then (s.v ->> 'confirmed_by_read_back')::boolean end,
       coalesce((select jsonb_object_agg(k, r."values" -> k) from unnest(f.fields) k
                  where jsonb_typeof(r."values" -> k) = 'object'), '{}'::jsonb),
       r.hmac_key_id
  from audit_events e
 cross join lateral jsonb_array_elements(
            case when jsonb_typeof(e."values" -> 'steps') = 'array'
                 then e."values" -> 'steps' else '[]'::jsonb end) s(v)
 cross join lateral (
     select array(select x from jsonb_array_elements_text(
                                   case when jsonb_typeof(s.v -> 'fields') = 'array'
                                        then s.v -> 'fields' else '[]'::jsonb end) x) as fields) f
  left join lateral (
      select q."values", q.hmac_key_id from audit_events q
       where q.user_id = e.user_id and q.change_id = e.change_id
         and q.event_type = 'change_requested'
       order by q.seq limit 1) r on true
 where e.event_type in ('round', 'change_completed')
   and jsonb_typeof(s.v) = 'object';

-- With each attempt's number and the provider's diagnostics.
-- - `attempt`: the attempt's number for its step, counted in the events of both shapes since the
--   change's last operator retry (`change_retried`), which starts the count again as it resets
--   `attempts` in the change's steps.
-- - The provider's diagnostics, which the events do not carry, come from the change's steps
--   document (which the gateway's role may update), shown only beside the step's last attempt
--   in the events and only when that attempt itself records the step as failed or unknown: no
--   update can make an applied attempt look failed, nor put them beside an earlier attempt.
create view audit_step_attempts as
select a.event_id, a.event_type, a.occurred_at, a.user_id, a.seq, a.caller, a.caller_addr,
       a.request_id, a.trace_id, a.change_id, a.step_no, a.target, a.upstream_ref, a.fields,
       a.status, n.attempt, a.error_code, a.confirmed_by_read_back,
       case when d.diag then s.error_retryable end as error_retryable,
       case when d.diag then s.upstream_status end as upstream_status,
       case when d.diag then s.upstream_code end as upstream_code,
       case when d.diag then s.error_message end as error_message,
       a."values" as masked_values, a.hmac_key_id
  from audit_step_attempt_rows a
 cross join lateral (
     select count(*)::int as attempt
       from audit_step_attempt_rows p
      where p.user_id = a.user_id and p.change_id = a.change_id and p.step_no = a.step_no
        and p.seq <= a.seq
        and p.seq > coalesce((select max(r.seq) from audit_events r
                               where r.user_id = a.user_id and r.change_id = a.change_id
                                 and r.event_type = 'change_retried' and r.seq < a.seq), 0)) n
  left join lateral (
      select s.error_retryable, s.upstream_status, s.upstream_code, s.error_message
        from change_steps s
       where s.change_id = a.change_id and s.step_no = a.step_no) s on true
 cross join lateral (
     select a.status in ('failed', 'unknown')
            and not exists (select 1 from audit_step_attempt_rows l
                             where l.user_id = a.user_id and l.change_id = a.change_id
                               and l.step_no = a.step_no and l.seq > a.seq) as diag) d;

-- Same columns as migration 20261202000200. A step attempt's row now comes from either shape:
-- `event_type` is its event's (`step_attempted` for the older ones, `round` or
-- `change_completed` for the newer) and `outcome` the attempt's status. Old values are derived
-- as before: the value of the last earlier applied attempt of the same user (at the same target
-- and object for an attempt, at any for a request), looked up in each shape by the user's
-- (user_id, seq) index from the event backwards, so that a lookup stops at its first match.
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
           a."values", a.hmac_key_id
      from audit_step_attempt_rows a
  ) e
 cross join lateral jsonb_each(case when jsonb_typeof(e."values") = 'object'
                                    then e."values" else '{}'::jsonb end) f(key, value)
  left join lateral (
      select x.v, x.k from (
          (select p.seq, p."values" -> f.key as v, p.hmac_key_id as k
             from audit_events p
            where p.user_id = e.user_id and p.seq < e.seq
              and p.event_type = 'step_attempted' and p.outcome = 'applied'
              and p."values" -> f.key ? 'new'
              and (e.event_type = 'change_requested'
                   or (p.target is not distinct from e.target
                       and p.upstream_ref is not distinct from e.upstream_ref))
            order by p.seq desc
            limit 1)
          union all
          (select p.seq, r."values" -> f.key, r.hmac_key_id
             from audit_events p
             join lateral (
                 select r."values", r.hmac_key_id from audit_events r
                  where r.user_id = p.user_id and r.change_id = p.change_id
                    and r.event_type = 'change_requested'
                  order by r.seq limit 1) r on true
            where p.user_id = e.user_id and p.seq < e.seq
              and p.event_type in ('round', 'change_completed')
              and jsonb_typeof(p."values" -> 'steps') = 'array'
              and exists (
                  select 1 from jsonb_array_elements(p."values" -> 'steps') s(v)
                   where jsonb_typeof(s.v) = 'object' and s.v ->> 'status' = 'applied'
                     and jsonb_typeof(s.v -> 'fields') = 'array' and s.v -> 'fields' ? f.key
                     and (e.event_type = 'change_requested'
                          or (s.v ->> 'target' is not distinct from e.target
                              and s.v ->> 'upstream_ref' is not distinct from e.upstream_ref)))
              and r."values" -> f.key ? 'new'
            order by p.seq desc
            limit 1)
      ) x
      where not (f.value ? 'old')
      order by x.seq desc
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

-- Read only: the default privileges (migration 20261122000004) also give the app role the
-- write privileges on every new relation, views included.
revoke insert, update, delete, truncate on audit_step_attempt_rows, audit_step_attempts
  from profile_gateway_app;
grant select on audit_step_attempt_rows, audit_step_attempts
  to profile_gateway_app, profile_gateway_auditor;
