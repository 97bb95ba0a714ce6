with claimed as (
  insert into user_assertion_jtis (issuer, jti, caller, user_id, idem_key, expires_at)
  values ($1, $2, $3, $4, $5, $6)
  on conflict (issuer, jti) do update
     set caller = excluded.caller, user_id = excluded.user_id,
         idem_key = excluded.idem_key, expires_at = excluded.expires_at, first_used_at = now()
   where user_assertion_jtis.expires_at < now()
  returning true as ok
)
select coalesce(
         (select ok from claimed),
         (select caller = $3 and user_id = $4 and idem_key = $5
            from user_assertion_jtis where issuer = $1 and jti = $2),
         false) as "ok!"
