with picked as (
   select c.id, c.lease_owner
     from changes c
    where c.status = 'pending'
      and (c.lease_expires_at is null or c.lease_expires_at < now())
      and exists (select 1 from profile_links p
                   where p.user_id = c.user_id and p.finished_seq >= c.user_seq - 1)
    order by c.lease_expires_at nulls first
    limit 1
      for update skip locked),
 claimed as (
   update changes c
      set lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2),
          fence = c.fence + 1, updated_at = now()
     from picked
    where c.id = picked.id
returning c.id, c.user_id, c.user_seq, c.fence, c.fields, c.created_at, c.caller,
          c.request_id, c.trace_id, c.caller_addr, c.payload_key_id, c.payload_enc,
          picked.lease_owner as previous_owner)
 select k.id as "id!", k.user_id as "user_id!", k.user_seq as "user_seq!",
        k.fence as "fence!", k.fields as "fields!", k.created_at as "created_at!",
        coalesce(w.caller, k.caller) as "caller!",
        coalesce(w.request_id, k.request_id) as "request_id!",
        case when w.found then w.trace_id else k.trace_id end as trace_id,
        case when w.found then w.caller_addr else k.caller_addr end as caller_addr,
        k.payload_key_id, k.payload_enc, k.previous_owner, w.actor
   from claimed k
   left join lateral (
       select true as found, e.caller, e.request_id, e.trace_id, e.caller_addr,
              coalesce(e.actor, case when e.event_type = 'change_retried'
                                     then e."values" -> 'actor' end) as actor
         from audit_events e
        where e.change_id = k.id and e.user_id = k.user_id
          and e.event_type in ('change_requested', 'change_retried')
          and e.occurred_at >= k.created_at - interval '1 day'
        order by e.seq desc
        limit 1) w on true
