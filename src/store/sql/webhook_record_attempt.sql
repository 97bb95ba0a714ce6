with ev as (
  update webhook_events e
     set status = case when $3 then 'delivered'
                       when now() >= e.window_start + make_interval(secs => $9) then 'failed'
                       else 'pending' end,
         delivered_at = case when $3 then now() end,
         next_attempt_at = case when $3 then e.next_attempt_at
                                else least(now() + make_interval(secs => $8),
                                           e.window_start + make_interval(secs => $9)) end,
         claimed_by = null, claimed_until = null
   where e.id = $1 and e.attempts = $2 and e.claimed_by = $4 and e.status = 'pending'
returning e.id, e.status, e.next_attempt_at
),
att as (
  insert into webhook_attempts (event_id, attempt_no, started_at, duration_ms, status_code,
                                error, replica, next_attempt_at)
  select $1, $2, $5, $6, $7, $10, $4,
         (select next_attempt_at from ev where status = 'pending')
  returning 1
),
-- A success at a healthy receiver changes nothing of it: no write, no row lock that
-- every attempt at that receiver would queue on.
healed as (
  update webhook_receivers r set failures = 0, paused_until = null, updated_at = now()
   where $3 and r.caller = $11 and (r.failures > 0 or r.paused_until is not null)
  returning 1
),
hurt as (
  insert into webhook_receivers as r (caller, failures, paused_until)
  select $11, 1, case when 1 >= $12 then now() + make_interval(secs => $13) end
   where not $3
  on conflict (caller) do update
     set failures = r.failures + 1,
         paused_until = case when r.failures + 1 >= $12 then now() + make_interval(secs => $13)
                             else r.paused_until end,
         updated_at = now()
  returning 1
)
select (select status from ev) as status
