with probing as (
  update webhook_receivers r set paused_until = now() + make_interval(secs => $4),
         updated_at = now()
   where r.failures >= $3 and (r.paused_until is null or r.paused_until <= now())
     and r.caller = any($5)
     and exists (select 1 from webhook_events e
                  where e.caller = r.caller and e.status = 'pending'
                    and e.next_attempt_at <= now()
                    and (e.claimed_until is null or e.claimed_until < now()))
returning r.caller
),
due as (
  select d.id from probing p
   cross join lateral (
     select e.id from webhook_events e
      where e.caller = p.caller and e.status = 'pending' and e.next_attempt_at <= now()
        and (e.claimed_until is null or e.claimed_until < now())
      order by e.next_attempt_at
      limit 1) d
),
-- The conditions again: a row claimed by a commit after this statement's snapshot
-- is re-checked against these only (see claim_due).
picked as (
  select e.id from webhook_events e
   where e.id in (select id from due)
     and e.status = 'pending' and e.next_attempt_at <= now()
     and (e.claimed_until is null or e.claimed_until < now())
     for update of e skip locked
)
update webhook_events e
   set attempts = e.attempts + 1, claimed_by = $1,
       claimed_until = now() + make_interval(secs => $2)
  from picked
 where e.id = picked.id
returning e.id, e.caller, e.event_type, e.body, e.attempts as attempt,
       e.attempts - e.retry_from as "retry!"
