-- Issue 12, item 1 (the lean record): a change's steps live in its own row, as one JSONB object
-- keyed by step number (`changes.steps`), not as rows of `change_steps`. The record writes one row
-- per change instead of one plus one per step, and a settle one update of that row (its attempted
-- steps' elements merged in with `||`) instead of one per step and one more for the final state:
--   {"0": {"step_no": 0, "target": "juspay_customer", "upstream_ref": "cst_…",
--          "fields": ["first_name"], "status": "applied", "attempts": 1, "error_code": null,
--          "error_retryable": null, "upstream_status": null, "upstream_code": null,
--          "error_message": null, "confirmed_by_read_back": false}, "1": {…}}
-- A view named `change_steps` keeps the old table's columns for reading (its `updated_at` is the
-- change's). Not expand-only: an old build's record and settle write the table and fail (503, safe
-- to retry with the same key) until the rollout replaces them (docs/operations.md).

set local lock_timeout = '10s';
-- At once the strongest lock each relation needs below (an upgrade mid-way could deadlock with a
-- record of an old build, as migration 20261202000300 found), `audit_log` first: a query of it
-- holds the view and then waits for the tables, so locking the view last deadlocked with one.
-- Reads wait too. A DO block, so that a file applied outside a transaction (scripts/schema.sh)
-- runs too.
do $$ begin lock table audit_log, changes, change_steps in access exclusive mode; end $$;

alter table changes add column steps jsonb not null default '{}'
    constraint changes_steps_object check (jsonb_typeof(steps) = 'object');

update changes c
   set steps = s.doc
  from (select change_id,
               jsonb_object_agg(step_no::text, jsonb_build_object(
                   'step_no', step_no, 'target', target, 'upstream_ref', upstream_ref,
                   'fields', to_jsonb(fields), 'status', status, 'attempts', attempts,
                   'error_code', error_code, 'error_retryable', error_retryable,
                   'upstream_status', upstream_status, 'upstream_code', upstream_code,
                   'error_message', error_message,
                   'confirmed_by_read_back', confirmed_by_read_back)) as doc
          from change_steps
         group by change_id) s
 where s.change_id = c.id;

-- audit_log reads the diagnostics of change_steps: it is created again below, unchanged, over the
-- view.
drop view audit_log;
drop table change_steps;

-- Every value is type-checked before a cast, and an element counts only under its own step
-- number: the gateway's role may update `changes`, and a malformed or duplicated element must
-- neither fail the auditor views that read this one nor add rows to them.
create view change_steps as
select c.id as change_id,
       -- Guarded here too: a caller's condition on step_no may be evaluated before the WHERE.
       case when s.k ~ '^[0-9]{1,9}$' then s.k::int end as step_no,
       case when jsonb_typeof(s.v -> 'target') = 'string' then s.v ->> 'target' end as target,
       case when jsonb_typeof(s.v -> 'upstream_ref') = 'string' then s.v ->> 'upstream_ref' end
         as upstream_ref,
       array(select jsonb_array_elements_text(
                        case when jsonb_typeof(s.v -> 'fields') = 'array' then s.v -> 'fields'
                             else '[]'::jsonb end)) as fields,
       case when jsonb_typeof(s.v -> 'status') = 'string' then s.v ->> 'status' end as status,
       case when s.v ->> 'attempts' ~ '^[0-9]{1,9}$' then (s.v ->> 'attempts')::int else 0 end
         as attempts,
       case when jsonb_typeof(s.v -> 'error_code') = 'string' then s.v ->> 'error_code' end
         as error_code,
       case when jsonb_typeof(s.v -> 'error_retryable') = 'boolean'
            then (s.v ->> 'error_retryable')::boolean end as error_retryable,
       case when s.v ->> 'upstream_status' ~ '^[0-9]{1,9}$'
            then (s.v ->> 'upstream_status')::int end as upstream_status,
       case when jsonb_typeof(s.v -> 'upstream_code') = 'string' then s.v ->> 'upstream_code' end
         as upstream_code,
       case when jsonb_typeof(s.v -> 'error_message') = 'string' then s.v ->> 'error_message' end
         as error_message,
       c.updated_at,
       coalesce(case when jsonb_typeof(s.v -> 'confirmed_by_read_back') = 'boolean'
                     then (s.v ->> 'confirmed_by_read_back')::boolean end, false)
         as confirmed_by_read_back
  from changes c
 cross join lateral jsonb_each(c.steps) s(k, v)
 where s.k ~ '^[0-9]{1,9}$' and jsonb_typeof(s.v) = 'object' and s.v ->> 'step_no' = s.k;
-- Read only (the default privileges of migration 20261122000004 give the app role write
-- privileges on every new relation, views included).
-- The auditor role reads steps through the audit views only, as before.
revoke insert, update, delete, truncate on change_steps from profile_gateway_app;
grant select on change_steps to profile_gateway_app;

-- As migration 20261201000700 created it.
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
       who.actor ->> 'auth'                     as auth_method,
       who.actor ->> 'subject'                  as caller_subject,
       who.actor ->> 'assertion_subject'        as end_user_subject,
       who.actor ->> 'assertion_jti'            as end_user_assertion_jti,
       who.actor ->> 'gateway_request_id'       as gateway_request_id,
       who.source                               as actor_source
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
  cross join lateral (select e.event_type = 'step_attempted' and e.outcome in ('failed', 'unknown') as diag) d
  cross join lateral (
      select case when e.actor is not null then e.actor
                  when e."values" ? 'actor' then e."values" -> 'actor'
                  else c.actor end as actor,
             case when e.actor is not null then 'event'
                  when e."values" ? 'actor' then 'event_values'
                  when c.actor is not null then 'change_record' end as source) who;
revoke insert, update, delete, truncate on audit_log from profile_gateway_app;
grant select on audit_log to profile_gateway_app, profile_gateway_auditor;
