-- settle_changes (src/store/batch.rs): step outcomes with the audit events the gateway chained
-- (audit::chain) and, for changes that are final, the final state, the user's turn and chain
-- head, the idempotency key's release, the outbox's webhook events and the NOTIFY, in one
-- statement. A user's settles are written all or none (as record_changes.sql's changes): if one
-- is stale (its lease generation moved on) or the head moved, none is, and the result says which.
-- Parameters: one array per column of a row kind, element i of each array is row i.
--   settles, one element per settle in batch order (the order of the result):
--     $1 change id uuid[]        $2 fence bigint[]: the lease generation it was made under
--     $3 user_id text[]
--     $4 final_status text[] (null: the change is not final yet)
--     $5 finished_at timestamptz[] (null when not final)
--   outcomes, one element per attempted step:
--     $6 parent bigint[]: the 1-based position of its settle (a batch may hold a stale and a
--        current settle of the same change)
--     $7 change_id uuid[]        $8 step_no int[]           $9 status text[]
--     $10 error_code text[] (null)   $11 error_retryable bool[] (null)
--     $12 upstream_status int[] (null)   $13 upstream_code text[] (null)
--     $14 error_message text[] (null)    $15 confirmed_by_read_back bool[]
--   webhook events, one element per outbox event:
--     $16 parent bigint[] (as $6)  $17 id uuid[]  $18 caller text[]  $19 event_type text[]
--     $20 body text[]
--   heads, one element per user of the batch:
--     $21 user_id text[]  $22 seq bigint[]  $23 hash text[]  $24 new_seq bigint[]
--     $25 new_hash text[]
--   events (see audit_events; fields joined with ','):
--     $26 parent bigint[] (as $6)  $27 occurred_at  $28 user_id  $29 seq  $30 prev_hash
--     $31 hash  $32 event_type  $33 caller  $34 outcome  $35 change_id  $36 step_no  $37 target
--     $38 upstream_ref  $39 fields  $40 values (jsonb text)  $41 hmac_key_id  $42 error_code
--     $43 request_id  $44 trace_id  $45 caller_addr  $46 actor (jsonb text)
--   scalars:
--     $47 seconds a failed change's payload is kept for a retry (0: erased at once)
--     $48 the NOTIFY channel (store::changes::FINAL_CHANNEL)
with c as (
  select * from unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::timestamptz[])
      with ordinality as t(id, fence, user_id, final_status, finished_at, ord)
),
held as (
  select ch.id, c.ord from changes ch join c on c.id = ch.id and c.fence = ch.fence
   where ch.status = 'pending'
   order by ch.id
     for no key update of ch
),
heads as (
  select * from unnest($21::text[], $22::bigint[], $23::text[], $24::bigint[], $25::text[])
      as t(user_id, seq, hash, new_seq, new_hash)
),
locked as (
  select p.user_id, p.chain_seq, p.chain_hash
    from profile_links p
   where p.user_id = any($21::text[])
   order by p.user_id
     for no key update
),
ok as (
  select h.user_id, h.new_seq, h.new_hash
    from heads h join locked l on l.user_id = h.user_id
   where l.chain_seq = h.seq and l.chain_hash = h.hash
     and not exists (select 1 from c left join held d on d.ord = c.ord
                      where c.user_id = h.user_id and d.id is null)
),
go as (
  select c.* from c join ok on ok.user_id = c.user_id
),
upd as (
  update change_steps s
     set status = o.status, attempts = s.attempts + 1, error_code = o.error_code,
         error_retryable = o.error_retryable, upstream_status = o.upstream_status,
         upstream_code = o.upstream_code, error_message = o.error_message,
         confirmed_by_read_back = o.confirmed, updated_at = now()
    from unnest($6::bigint[], $7::uuid[], $8::int[], $9::text[], $10::text[], $11::bool[],
                $12::int[], $13::text[], $14::text[], $15::bool[])
         as o(parent, change_id, step_no, status, error_code, error_retryable, upstream_status,
              upstream_code, error_message, confirmed)
    join go on go.ord = o.parent
   where s.change_id = o.change_id and s.step_no = o.step_no
returning 1
),
fin as (
  update changes ch
     set status = go.final_status, finished_at = go.finished_at, updated_at = now(),
         payload_enc = case when go.final_status <> 'applied' and $47::float8 > 0 then ch.payload_enc end,
         payload_key_id = case when go.final_status <> 'applied' and $47::float8 > 0 then ch.payload_key_id end,
         payload_expires_at = case when go.final_status <> 'applied' and $47::float8 > 0
                                   then now() + make_interval(secs => $47::float8) end,
         lease_owner = null, lease_expires_at = null, idem_in_flight_until = null
    from go
   where ch.id = go.id and go.final_status is not null
returning ch.id, ch.user_id, ch.user_seq
),
users as (
  update profile_links p
     set finished_seq = greatest(p.finished_seq, coalesce(x.seq, 0)),
         chain_seq = ok.new_seq, chain_hash = ok.new_hash
    from ok left join (select user_id, max(user_seq) as seq from fin group by user_id) x
         on x.user_id = ok.user_id
   where p.user_id = ok.user_id
returning 1
),
ev as (
  insert into audit_events (occurred_at, user_id, seq, prev_hash, hash, format, event_type, caller,
                            outcome, change_id, step_no, target, upstream_ref, fields, "values",
                            hmac_key_id, error_code, request_id, trace_id, caller_addr, actor)
  select e.occurred_at, e.user_id, e.seq, e.prev_hash, e.hash, 3, e.event_type, e.caller,
         e.outcome, e.change_id, e.step_no, e.target, e.upstream_ref,
         string_to_array(e.fields, ','), e.vals::jsonb, e.hmac_key_id, e.error_code,
         e.request_id, e.trace_id, e.caller_addr, e.actor::jsonb
    from unnest($26::bigint[], $27::timestamptz[], $28::text[], $29::bigint[], $30::text[],
                $31::text[], $32::text[], $33::text[], $34::text[], $35::uuid[], $36::int[],
                $37::text[], $38::text[], $39::text[], $40::text[], $41::text[], $42::text[],
                $43::text[], $44::text[], $45::text[], $46::text[])
         as e(parent, occurred_at, user_id, seq, prev_hash, hash, event_type, caller, outcome,
              change_id, step_no, target, upstream_ref, fields, vals, hmac_key_id, error_code,
              request_id, trace_id, caller_addr, actor)
    join go on go.ord = e.parent
  returning 1
),
notes as (
  select pg_notify($48, f.user_seq::text || ' ' || f.user_id) from fin f
),
outbox as (
  insert into webhook_events (id, change_id, caller, event_type, body)
  select w.id, go.id, w.caller, w.event_type, w.body
    from unnest($16::bigint[], $17::uuid[], $18::text[], $19::text[], $20::text[])
         as w(parent, id, caller, event_type, body)
    join go on go.ord = w.parent
  returning 1
)
select c.id as "id!", (h.id is not null) as "held!", (g.ord is not null) as "settled!",
       l.chain_seq as "chain_seq?", l.chain_hash as "chain_hash?",
       (select count(*) from ev) + (select count(*) from notes)
         + (select count(*) from upd) + (select count(*) from users)
         + (select count(*) from outbox) as "n!"
  from c
  left join held h on h.ord = c.ord
  left join go g on g.ord = c.ord
  left join locked l on l.user_id = c.user_id
 order by c.ord
