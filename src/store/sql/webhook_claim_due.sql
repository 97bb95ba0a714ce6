with open as (
  select c.caller from unnest($5::text[]) as c (caller)
   where not exists (select 1 from webhook_receivers r
                      where r.caller = c.caller
                        and (r.paused_until > now() or r.failures >= $4))
),
due as (
  select d.id, d.next_attempt_at from open o
   cross join lateral (
     select e.id, e.next_attempt_at from webhook_events e
      where e.caller = o.caller and e.status = 'pending' and e.next_attempt_at <= now()
        and (e.claimed_until is null or e.claimed_until < now())
      order by e.next_attempt_at
      limit greatest($6 - (select count(*) from webhook_events b
                            where b.caller = o.caller and b.claimed_until >= now()
                              and b.status = 'pending'), 0)) d
),
picked as (
  select e.id from webhook_events e join due on due.id = e.id
   where e.status = 'pending' and e.next_attempt_at <= now()
     and (e.claimed_until is null or e.claimed_until < now())
   order by due.next_attempt_at
   limit $2
     for update of e skip locked
)
update webhook_events e
   set attempts = e.attempts + 1, claimed_by = $1,
       claimed_until = now() + make_interval(secs => $3)
  from picked
 where e.id = picked.id
returning e.id, e.caller, e.event_type, e.body, e.attempts as attempt,
       e.attempts - e.retry_from as "retry!"
