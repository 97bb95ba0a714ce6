-- settle_changes (src/store/batch.rs): step outcomes (in the change's steps document) with the
-- round's audit event the gateway chained (audit::chain) and, for changes that are final, the
-- final state, the user's turn and chain head, the idempotency key's release, the outbox's
-- webhook events and the NOTIFY, in one statement. A user's settles are written all or none (as
-- record_changes.sql's changes): if one is stale (its lease generation moved on) or the head
-- moved, none is, and the result says which.
-- No CTE locks rows ahead of the writes (as record_changes.sql): the user's row is updated first,
-- its head by compare-and-set, only if every settle of the user is of the change's current lease
-- generation as the statement's snapshot saw it; then each change's row, the generation
-- re-checked on the row it writes (EvalPlanQual). If a generation moved in between (a completer
-- claimed the change since the snapshot), nothing of the batch commits, and the gateway writes it
-- again at once (src/store/batch.rs, lease_generation_moved): that settle is then stale. Lock order
-- (src/store/batch.rs): the users' rows in the heads' order (sorted by user), then the changes'.
-- Parameters: one array per column of a row kind, element i of each array is row i.
--   settles, one element per settle in batch order (the order of the result):
--     $1 change id uuid[]        $2 fence bigint[]: the lease generation it was made under
--     $3 user_id text[]
--     $4 final_status text[] (null: the change is not final yet)
--     $5 finished_at timestamptz[] (null when not final)
--     $6 steps_patch jsonb[]: the new elements of the steps it attempted, keyed by step
--        number (changes.steps, migration 20261202000400)
--   webhook events, one element per outbox event:
--     $7 parent bigint[]: the 1-based position of its settle (a batch may hold a stale and a
--        current settle of the same change)
--     $8 id uuid[]  $9 caller text[]  $10 event_type text[]  $11 body text[]
--   heads, one element per user of the batch:
--     $12 user_id text[]  $13 seq bigint[]  $14 hash text[]  $15 new_seq bigint[]
--     $16 new_hash text[]
--   events (see audit_events; fields joined with ','):
--     $17 parent bigint[] (as $7)  $18 occurred_at  $19 user_id  $20 seq  $21 prev_hash
--     $22 hash  $23 event_type  $24 caller  $25 outcome  $26 change_id  $27 step_no  $28 target
--     $29 upstream_ref  $30 fields  $31 values (jsonb text)  $32 hmac_key_id  $33 error_code
--     $34 request_id  $35 trace_id  $36 caller_addr  $37 actor (jsonb text)
--   scalars:
--     $38 seconds a failed change's payload is kept for a retry (0: erased at once)
--     $39 the NOTIFY channel (store::changes::FINAL_CHANNEL)
with c as (
  select * from unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::timestamptz[],
                       $6::jsonb[])
      with ordinality as t(id, fence, user_id, final_status, finished_at, steps_patch, ord)
),
-- Whether each settle's lease generation is current, and its change's place in the user's order.
-- "Unfinished" is `finished_at is null` (the same, by changes_check) rather than the status, which
-- would let a generic plan built while few changes were pending scan changes_pending_by_user
-- (every unfinished change) instead of the primary key.
cur as (
  select c.ord, c.user_id, c.final_status, k.user_seq, k.id is not null as held
    from c left join changes k on k.id = c.id and k.fence = c.fence and k.finished_at is null
),
heads as (
  select * from unnest($12::text[], $13::bigint[], $14::text[], $15::bigint[], $16::text[])
      as t(user_id, seq, hash, new_seq, new_hash)
),
users as (
  update profile_links p
     set finished_seq = greatest(p.finished_seq,
                                 coalesce((select max(x.user_seq) from cur x
                                            where x.user_id = h.user_id
                                              and x.final_status is not null), 0)),
         chain_seq = h.new_seq, chain_hash = h.new_hash
    from heads h
   where p.user_id = h.user_id and p.chain_seq = h.seq and p.chain_hash = h.hash
     and not exists (select 1 from cur x where x.user_id = h.user_id and not x.held)
  returning p.user_id
),
go as (
  select c.* from c join users u on u.user_id = c.user_id
),
-- One update of each settled change's row: its attempted steps' new elements replace theirs in its
-- steps document (an object keyed by step number: a merge, not a rebuild), and when the change is
-- final, its final state, its payload erased (a failed one's kept for the retry window), its
-- lease and in-flight mark cleared.
upd as (
  update changes ch
     set steps = ch.steps || coalesce(go.steps_patch, '{}'::jsonb),
         status = coalesce(go.final_status, ch.status),
         finished_at = case when go.final_status is null then ch.finished_at else go.finished_at end,
         updated_at = now(),
         payload_enc = case when go.final_status is null
                                 or (go.final_status <> 'applied' and $38::float8 > 0)
                            then ch.payload_enc end,
         payload_key_id = case when go.final_status is null
                                    or (go.final_status <> 'applied' and $38::float8 > 0)
                               then ch.payload_key_id end,
         payload_expires_at = case when go.final_status is null then ch.payload_expires_at
                                   when go.final_status <> 'applied' and $38::float8 > 0
                                   then now() + make_interval(secs => $38::float8) end,
         lease_owner = case when go.final_status is null then ch.lease_owner end,
         lease_expires_at = case when go.final_status is null then ch.lease_expires_at end,
         idem_in_flight_until = case when go.final_status is null then ch.idem_in_flight_until end
    from go
   where ch.id = go.id and ch.fence = go.fence and ch.finished_at is null
returning ch.id, ch.user_id, ch.user_seq, go.final_status
),
ev as (
  insert into audit_events (occurred_at, user_id, seq, prev_hash, hash, format, event_type, caller,
                            outcome, change_id, step_no, target, upstream_ref, fields, "values",
                            hmac_key_id, error_code, request_id, trace_id, caller_addr, actor)
  select e.occurred_at, e.user_id, e.seq, e.prev_hash, e.hash, 3, e.event_type, e.caller,
         e.outcome, e.change_id, e.step_no, e.target, e.upstream_ref,
         string_to_array(e.fields, ','), e.vals::jsonb, e.hmac_key_id, e.error_code,
         e.request_id, e.trace_id, e.caller_addr, e.actor::jsonb
    from unnest($17::bigint[], $18::timestamptz[], $19::text[], $20::bigint[], $21::text[],
                $22::text[], $23::text[], $24::text[], $25::text[], $26::uuid[], $27::int[],
                $28::text[], $29::text[], $30::text[], $31::text[], $32::text[], $33::text[],
                $34::text[], $35::text[], $36::text[], $37::text[])
         as e(parent, occurred_at, user_id, seq, prev_hash, hash, event_type, caller, outcome,
              change_id, step_no, target, upstream_ref, fields, vals, hmac_key_id, error_code,
              request_id, trace_id, caller_addr, actor)
    join go on go.ord = e.parent
  returning 1
),
notes as (
  select pg_notify($39, f.user_seq::text || ' ' || f.user_id) from upd f
   where f.final_status is not null
),
outbox as (
  insert into webhook_events (id, change_id, caller, event_type, body)
  select w.id, go.id, w.caller, w.event_type, w.body
    from unnest($7::bigint[], $8::uuid[], $9::text[], $10::text[], $11::text[])
         as w(parent, id, caller, event_type, body)
    join go on go.ord = w.parent
  returning 1
),
-- The heads of the users not written, as the statement's snapshot saw them (as in
-- record_changes.sql: a stale one only costs the next round).
seen as (
  select p.user_id, p.chain_seq, p.chain_hash from profile_links p
   where p.user_id = any($12::text[])
)
select c.id as "id!", coalesce(k.held, false) as "held!", (g.ord is not null) as "settled!",
       s.chain_seq as "chain_seq?", s.chain_hash as "chain_hash?",
       -- One settle per change and batch (a drive awaits each of its settles; a stale one is not
       -- `held`): the update above would apply only one of two, so two fail the batch instead.
       -- Every settle of a user whose head moved was written (its generation was still current on
       -- the row), or nothing of the batch commits.
       case when (select count(*) from go) <> (select count(distinct id) from go)
            then pgw_abort('two settles of one change in one batch')
            when (select count(*) from upd) <> (select count(*) from go)
            then pgw_abort('a lease generation moved during the settle')
       end as "aborted?",
       (select count(*) from notes) as "notified!"
  from c
  left join cur k on k.ord = c.ord
  left join go g on g.ord = c.ord
  left join seen s on s.user_id = c.user_id
 order by c.ord
