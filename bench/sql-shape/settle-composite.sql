with c as (
  select * from unnest($1::change_settle_row[])
      with ordinality as t(id, fence, user_id, caller, request_id, trace_id, caller_addr,
                           final_status, final_fields, actor, finished_at, ord)
),
o as (
  select * from unnest($2::change_outcome_row[])
      with ordinality as t(parent, step_no, status, error_code, error_retryable,
                           upstream_status, upstream_code, error_message, confirmed, target,
                           upstream_ref, fields, audit_values, hmac_key_id, change_id, ord)
),
held as (
  select ch.id, c.ord from changes ch join c on c.id = ch.id and c.fence = ch.fence
   where ch.status = 'pending'
   order by ch.id
     for no key update of ch
),
upd as (
  update change_steps s
     set status = o.status, attempts = s.attempts + 1, error_code = o.error_code,
         error_retryable = o.error_retryable, upstream_status = o.upstream_status,
         upstream_code = o.upstream_code, error_message = o.error_message,
         confirmed_by_read_back = o.confirmed, updated_at = now()
    from o join held h on h.ord = o.parent
   where s.change_id = o.change_id and s.step_no = o.step_no
returning o.parent, s.step_no
),
fin as (
  update changes ch
     set status = c.final_status, finished_at = coalesce(c.finished_at, now()), updated_at = now(),
         payload_enc = case when c.final_status <> 'applied' and $4::float8 > 0 then ch.payload_enc end,
         payload_key_id = case when c.final_status <> 'applied' and $4::float8 > 0 then ch.payload_key_id end,
         payload_expires_at = case when c.final_status <> 'applied' and $4::float8 > 0
                                   then now() + make_interval(secs => $4::float8) end,
         lease_owner = null, lease_expires_at = null
    from c join held h on h.ord = c.ord
   where ch.id = c.id and c.final_status is not null
returning ch.id, ch.user_id, ch.user_seq, c.ord
),
locked as (
  select p.user_id from profile_links p
   where p.user_id in (select user_id from fin)
   order by p.user_id
     for update
),
turns as (
  update profile_links p set finished_seq = greatest(p.finished_seq, x.seq)
    from (select f.user_id, max(f.user_seq) as seq from fin f join locked l using (user_id)
           group by f.user_id) x
   where p.user_id = x.user_id
returning p.user_id
),
keys as (
  update idempotency_keys k set in_flight_until = null
    from fin where k.change_id = fin.id and k.in_flight_until is not null
returning 1
),
events as (
  select c.user_id, 'step_attempted' as event_type, c.caller, o.status as outcome, c.id as change_id,
         o.step_no, o.target, o.upstream_ref, string_to_array(o.fields, ',') as fields,
         o.audit_values as "values", o.hmac_key_id, o.error_code, c.request_id, c.trace_id,
         c.caller_addr, c.actor, 0 as phase, o.ord
    from o join c on c.ord = o.parent
    join upd u on u.parent = o.parent and u.step_no = o.step_no
  union all
  select c.user_id, 'change_completed', c.caller, c.final_status, c.id, null, null, null,
         string_to_array(c.final_fields, ','), '{}'::jsonb, null, null, c.request_id, c.trace_id,
         c.caller_addr, c.actor, 1, c.ord
    from c join fin f on f.ord = c.ord join turns t on t.user_id = f.user_id
),
au as (
  select audit_append(array_agg(row(user_id, event_type, caller, outcome, change_id, step_no, target,
                                    upstream_ref, fields, "values", hmac_key_id, error_code,
                                    request_id, trace_id, caller_addr, actor)::audit_event_input_v2
                                order by user_id, phase, ord)) as n
    from events
),
notes as (
  select pg_notify($5, f.user_seq::text || ' ' || f.user_id) from fin f
),
hooks as (
  select * from unnest($3::webhook_outbox_row[])
      as t(parent, id, caller, event_type, body)
),
outbox as (
  insert into webhook_events (id, change_id, caller, event_type, body)
  select w.id, c.id, w.caller, w.event_type, w.body
    from hooks w join c on c.ord = w.parent join held h on h.ord = w.parent
  returning 1
)
select c.id as "id!", (h.id is not null) as "settled!",
       (select n from au) + (select count(*) from notes) + (select count(*) from keys) as "n!"
  from c left join held h on h.ord = c.ord
 order by c.ord
