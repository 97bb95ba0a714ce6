with starts as (
  select user_id,
         case when $2::timestamptz is null then 0
              else min(seq) filter (where occurred_at >= $2) - 1 end as from_seq
    from audit_events
   where ($1::text is null or user_id = $1)
   group by user_id)
select e.id, e.occurred_at, e.user_id, e.seq, e.prev_hash, e.hash, e.event_type,
       e.caller, e.outcome, e.change_id, e.step_no, e.target, e.upstream_ref,
       -- NULL (the column never is) for what the decoder would refuse; see EventRow.
       case when array_ndims(e.fields) > 1 then null
            when array_position(e.fields, null) is not null then null
            else e.fields end as "fields?",
       e."values"::text as "values_text!", e.hmac_key_id, e.error_code, e.request_id,
       e.trace_id, e.caller_addr, e.actor::text as actor_text, e.format, s.from_seq as "from_seq!"
  from audit_events e
  join starts s on s.user_id = e.user_id and e.seq >= s.from_seq
 order by e.user_id, e.seq, e.id
