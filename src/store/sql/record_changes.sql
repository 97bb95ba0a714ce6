-- record_changes (src/store/batch.rs): new changes with their steps, idempotency keys and
-- "requested" audit events, and each change's per-user sequence number, in one statement.
-- Parameters: one array per column of a row kind, element i of each array is row i. These
-- parallel arrays cost PostgreSQL no more CPU than one array of a composite row type per row
-- kind, and less at 16 changes a batch (bench/README.md, "SQL shape"); they need no row types.
--   changes, one element per new change, in batch order (the order of the result):
--     $1 id uuid[]               $2 user_id text[]          $3 caller text[]
--     $4 request_id text[]       $5 trace_id text[] (null)  $6 caller_addr text[] (null)
--     $7 fields text[]: the change's field names joined with ',' (a ragged text[][] cannot be
--        unnested)
--     $8 payload_key_id text[]   $9 payload_enc bytea[]: the sealed values
--     $10 idem_key text[]        $11 fingerprint bytea[]: of the request, for replays
--     $12 links_version timestamptz[]: profile_links.updated_at the change was planned against
--     $13 audit_values jsonb[]: the masked values of the "requested" event
--     $14 hmac_key_id text[]     $25 actor jsonb[] (null): who acted, hashed into every event
--   steps, one element per planned step of any change of the batch:
--     $19 change_id uuid[]  $20 step_no int[]  $21 target text[]  $22 upstream_ref text[]
--     $23 fields text[] (joined with ',', as $7)
--   scalars:
--     $15 seconds the idempotency key stays in flight   $16 seconds it is remembered
--     $17 lease owner (this replica)                     $18 lease seconds
--     $24 max_pending: unfinished changes a user may have
with input as (
  select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                       $7::text[], $8::text[], $9::bytea[], $10::text[], $11::bytea[],
                       $12::timestamptz[], $13::jsonb[], $14::text[], $25::jsonb[])
      with ordinality as t(id, user_id, caller, request_id, trace_id, caller_addr, fields,
                           payload_key_id, payload_enc, idem_key, fingerprint, links_version,
                           audit_values, hmac_key_id, actor, ord)
),
locked as (
  select p.user_id, p.updated_at, p.last_change_seq - p.finished_seq as pending
    from profile_links p
   where p.user_id in (select user_id from input)
   order by p.user_id
     for update
),
ranked as (
  select i.*,
         l.pending + row_number() over (partition by i.user_id order by i.ord) > $24 as over_limit,
         exists (select 1 from idempotency_keys k
                  where k.caller = i.caller and k.user_id = i.user_id and k.idem_key = i.idem_key
                    and k.expires_at > now()) as known_key
    from input i join locked l on l.user_id = i.user_id and l.updated_at = i.links_version
),
fresh as (
  select * from ranked where not over_limit or known_key
),
keys as (
  insert into idempotency_keys (caller, user_id, idem_key, fingerprint, change_id,
                                in_flight_until, expires_at)
  select caller, user_id, idem_key, fingerprint, id,
         now() + make_interval(secs => $15), now() + make_interval(secs => $16)
    from fresh
  on conflict (caller, user_id, idem_key) do update
     set fingerprint = excluded.fingerprint, change_id = excluded.change_id,
         in_flight_until = excluded.in_flight_until, created_at = now(),
         expires_at = excluded.expires_at
   where idempotency_keys.expires_at <= now()
  returning change_id
),
counts as (
  select f.user_id, count(*) as n from fresh f join keys k on k.change_id = f.id group by f.user_id
),
seqs as (
  update profile_links p set last_change_seq = p.last_change_seq + c.n
    from counts c
   where p.user_id = c.user_id
returning p.user_id, p.last_change_seq as last, p.finished_seq, c.n
),
numbered as (
  select f.*, s.last - s.n + row_number() over (partition by f.user_id order by f.ord) as seq,
         s.finished_seq
    from fresh f join keys k on k.change_id = f.id join seqs s on s.user_id = f.user_id
),
ch as (
  insert into changes (id, user_id, user_seq, caller, request_id, trace_id, caller_addr, fields,
                       payload_key_id, payload_enc, lease_owner, lease_expires_at, actor)
  select id, user_id, seq, caller, request_id, trace_id, caller_addr,
         string_to_array(fields, ','), payload_key_id, payload_enc, $17,
         now() + make_interval(secs => $18), actor
    from numbered
  returning id, created_at
),
st as (
  insert into change_steps (change_id, step_no, target, upstream_ref, fields)
  select s.change_id, s.step_no, s.target, s.upstream_ref, string_to_array(s.fields, ',')
    from unnest($19::uuid[], $20::int[], $21::text[], $22::text[], $23::text[])
         as s(change_id, step_no, target, upstream_ref, fields)
    join ch on ch.id = s.change_id
  returning change_id
),
au as (
  select audit_append(array_agg(row(n.user_id, 'change_requested', n.caller, 'accepted', n.id,
                                    null, null, null, string_to_array(n.fields, ','), n.audit_values,
                                    n.hmac_key_id, null, n.request_id, n.trace_id,
                                    n.caller_addr, n.actor)::audit_event_input_v2
                                order by n.user_id, n.ord)) as n
    from numbered n join ch on ch.id = n.id
)
select i.id as "id!", n.seq as "seq?", n.finished_seq as "finished_seq?",
       ch.created_at as "created_at?", (f.id is not null) as "fresh!",
       coalesce(r.over_limit and not r.known_key, false) as "over_limit!",
       (select n from au) + (select count(*) from st) as "written!"
  from input i
  left join ranked r on r.id = i.id
  left join fresh f on f.id = i.id
  left join numbered n on n.id = i.id
  left join ch on ch.id = i.id
 order by i.ord
