select count(*) as "pending!",
       coalesce(extract(epoch from now() - min(created_at)), 0)::float8 as "oldest_age!",
       coalesce((select extract(epoch from now() - min(e.next_attempt_at))
                   from webhook_events e
                  where e.status = 'pending' and e.next_attempt_at <= now()
                    and (e.claimed_until is null or e.claimed_until < now())
                    and not exists (select 1 from webhook_receivers r
                                     where r.caller = e.caller
                                       and r.paused_until > now())), 0)::float8
         as "oldest_overdue!",
       (select count(*) from webhook_receivers where paused_until > now()) as "paused!"
  from webhook_events where status = 'pending'
