-- record_changes (src/store/batch.rs): new changes (each with its idempotency key and its steps
-- document), the "requested" audit events the gateway chained (audit::chain), each change's per-user sequence
-- number, and each user's chain head moved by compare-and-set, in one statement.
-- A user's changes are written all or none: the events were chained one after the other, so if
-- one of them cannot be written (a known key, the pending bound, stale links) or the head moved,
-- none is, and the result says why per change (the gateway chains the rest again).
-- No CTE locks rows ahead of the writes: every condition for writing a user's changes is in the
-- WHERE of the one UPDATE of the user's row, so that when a concurrent transaction wrote that row
-- first, PostgreSQL re-checks them on its latest version before it writes (EvalPlanQual). Lock
-- order (src/store/batch.rs): the users' rows in the heads' order (sorted by user), then a
-- released key's change, as `reopen` takes them.
-- Parameters: one array per column of a row kind, element i of each array is row i (parallel
-- arrays: bench/README.md, "SQL shape").
--   changes, one element per new change, in batch order (the order of the result):
--     $1 id uuid[]               $2 user_id text[]          $3 caller text[]
--     $4 request_id text[]       $5 trace_id text[] (null)  $6 caller_addr text[] (null)
--     $7 fields text[]: the change's field names joined with ','
--     $8 payload_key_id text[]   $9 payload_enc bytea[]: the sealed values
--     $10 idem_key text[]        $11 fingerprint bytea[]: of the request, for replays
--     $12 links_version timestamptz[]: profile_links.updated_at the change was planned against
--     $13 actor jsonb[] (null)
--     $14 steps jsonb[]: the change's planned steps (changes.steps, migration 20261202000400)
--   heads, one element per user of the batch:
--     $15 user_id text[]  $16 seq bigint[]  $17 hash text[]: the head the events extend
--     $18 new_seq bigint[]  $19 new_hash text[]: the head after them
--   events, one per change (see audit_events; fields joined with ','):
--     $20 occurred_at  $21 user_id  $22 seq  $23 prev_hash  $24 hash  $25 change_id
--     $26 fields  $27 values (jsonb text)  $28 hmac_key_id
--   scalars:
--     $29 seconds the idempotency key stays in flight   $30 seconds it is remembered
--     $31 lease owner (this replica)                     $32 lease seconds
--     $33 max_pending: unfinished changes a user may have
--   computed by the gateway from the batch, so that no window or count runs per statement:
--     $34 n bigint[]: per head, the user's changes in the batch
--     $35 links_version timestamptz[]: per head, the version all of them were planned against
--         (null when they differ: then none is written, and the answer says which are stale)
--     $36 rank bigint[]: per change, its place among its user's changes in the batch, from 1
with input as (
  select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                       $7::text[], $8::text[], $9::bytea[], $10::text[], $11::bytea[],
                       $12::timestamptz[], $13::jsonb[], $14::jsonb[], $36::bigint[])
      with ordinality as t(id, user_id, caller, request_id, trace_id, caller_addr, fields,
                           payload_key_id, payload_enc, idem_key, fingerprint, links_version,
                           actor, steps, rank, ord)
),
-- The key's unique index only (the expiry is read, not searched): no plan can take the expiry
-- index and scan every live key. A key is live until its expiry and while its change is
-- unfinished. Read from the statement's snapshot: a key recorded since is caught by the insert.
keyed as (
  select i.id, i.user_id, i.caller, i.idem_key, coalesce(s.live, false) as known_key,
         coalesce(not s.live, false) as expired_key
    from input i
    left join lateral (select k.idem_expires_at > now() or k.status = 'pending' as live
                         from changes k
                        where k.caller = i.caller and k.user_id = i.user_id
                          and k.idem_key = i.idem_key) s on true
),
heads as (
  select * from unnest($15::text[], $16::bigint[], $17::text[], $18::bigint[], $19::text[],
                       $34::bigint[], $35::timestamptz[])
      as t(user_id, seq, hash, new_seq, new_hash, n, links_version)
),
users as (
  update profile_links p
     set last_change_seq = p.last_change_seq + h.n, chain_seq = h.new_seq,
         chain_hash = h.new_hash
    from heads h
   where p.user_id = h.user_id and p.chain_seq = h.seq and p.chain_hash = h.hash
     and p.updated_at = h.links_version and p.last_change_seq - p.finished_seq + h.n <= $33
     and not exists (select 1 from keyed k where k.user_id = h.user_id and k.known_key)
  returning p.user_id, p.last_change_seq - h.n as base_seq, p.finished_seq
),
-- An expired key is released from its finished change, so that the insert below can take it;
-- only for users whose row the update above holds (the lock order), and before any insert. Only
-- keys found expired are looked up again: most changes bring a new key, and then no plan touches
-- `changes` here.
released as (
  update changes k
     set idem_key = null, idem_fingerprint = null, idem_in_flight_until = null,
         idem_expires_at = null
    from keyed x join users u on u.user_id = x.user_id
   where x.expired_key
     and k.caller = x.caller and k.user_id = x.user_id and k.idem_key = x.idem_key
     and k.idem_expires_at <= now() and k.status <> 'pending'
  returning 1
),
numbered as (
  select i.*, u.base_seq + i.rank as seq, u.finished_seq
    from input i join users u on u.user_id = i.user_id
   where (select count(*) from released) >= 0
),
ch as (
  insert into changes (id, user_id, user_seq, caller, request_id, trace_id, caller_addr, fields,
                       payload_key_id, payload_enc, lease_owner, lease_expires_at, actor,
                       idem_key, idem_fingerprint, idem_in_flight_until, idem_expires_at, steps)
  select id, user_id, seq, caller, request_id, trace_id, caller_addr,
         string_to_array(fields, ','), payload_key_id, payload_enc, $31,
         now() + make_interval(secs => $32), actor,
         idem_key, fingerprint, now() + make_interval(secs => $29),
         now() + make_interval(secs => $30), steps
    from numbered
  on conflict (caller, user_id, idem_key) where idem_key is not null do nothing
  returning id, created_at
),
ev as (
  insert into audit_events (occurred_at, user_id, seq, prev_hash, hash, format, event_type, caller,
                            outcome, change_id, fields, "values", hmac_key_id, request_id,
                            trace_id, caller_addr, actor)
  select e.occurred_at, e.user_id, e.seq, e.prev_hash, e.hash, 3, 'change_requested', n.caller,
         'accepted', e.change_id, string_to_array(e.fields, ','), e.vals::jsonb, e.hmac_key_id,
         n.request_id, n.trace_id, n.caller_addr, n.actor
    from unnest($20::timestamptz[], $21::text[], $22::bigint[], $23::text[], $24::text[],
                $25::uuid[], $26::text[], $27::text[], $28::text[])
         as e(occurred_at, user_id, seq, prev_hash, hash, change_id, fields, vals, hmac_key_id)
    join numbered n on n.id = e.change_id
  returning 1
),
-- Why a user's changes were not written, from the rows as the statement's snapshot saw them
-- (unlocked: a reason read before a concurrent write only sends the change to the next round,
-- whose statement sees that write).
seen as (
  select p.user_id, p.updated_at, p.last_change_seq, p.finished_seq, p.chain_seq, p.chain_hash
    from profile_links p
   where p.user_id = any($15::text[])
)
select i.id as "id!", n.seq as "seq?", n.finished_seq as "finished_seq?",
       ch.created_at as "created_at?", coalesce(k.known_key, false) as "known_key!",
       coalesce(s.last_change_seq - s.finished_seq + i.rank > $33, false) as "over_limit!",
       coalesce(i.links_version = s.updated_at, false) as "links_ok!",
       s.chain_seq as "chain_seq?", s.chain_hash as "chain_hash?",
       -- Every change the events were chained for was inserted (another replica may have
       -- recorded one of the keys since this statement's snapshot), or nothing of the batch
       -- commits.
       case when (select count(*) from ch) <> (select count(*) from numbered)
            then pgw_abort('an idempotency key of this batch was recorded concurrently')
       end as "aborted?"
  from input i
  left join keyed k on k.id = i.id
  left join seen s on s.user_id = i.user_id
  left join numbered n on n.id = i.id
  left join ch on ch.id = i.id
 order by i.ord
