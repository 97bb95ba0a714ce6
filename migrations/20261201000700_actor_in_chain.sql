-- Who acted, covered by the hash chain (issue 13 item 5).
--
-- Until now a change's events (change_requested, step_attempted, change_completed) did not carry
-- who acted: the audit_log view took it from `changes.actor`, which the gateway's role may update,
-- so whoever controlled the database could rewrite it without `audit verify` noticing. Now every
-- event the gateway writes carries its actor in its own column, `audit_events.actor`, and the
-- hash covers it:
--
--   * events with a NULL actor (every event written before this migration, by an older gateway
--     during the rollout, or by the database's own functions as a login role) keep the
--     `pgw-audit-v1` encoding of migration 0003, so every existing chain stays valid untouched;
--   * events with an actor are hashed with `pgw-audit-v2` (audit_event_hash_v2 below, documented
--     in docs/auditing.md and re-implemented in src/audit/verify.rs). It is v1's fields in v1's
--     order with two differences: `fields` is encoded as the jsonb text of the array (instead of
--     its count and elements) and the actor's jsonb text comes last. The first is what lets the
--     hash be one SQL expression without a sub-select, which PostgreSQL inlines: v1's
--     audit_event_hash has one (to walk the array), is therefore NOT inlined, and cost a function
--     call per event in audit_append (about 24 us against 1.5 us inlined, measured on 20,000 rows).
--
-- audit_event_input keeps its 15 members: a gateway of the older build casts 15 values to it, and
-- adding a member would make every one of its record and settle statements fail ("Input has too
-- few columns") during the rollout. The actor comes with audit_event_input_v2 and
-- audit_append(audit_event_input_v2[]); the old audit_append(audit_event_input[]) hands its events
-- to the new one with no actor (v1), so there is one implementation of the chaining.
--
-- Link events and operator retries carried their actor inside their hashed `values` (migration
-- 20261201000102); new ones carry it in the column only, and the view reads `values.actor` only
-- for events without one.
--
-- Deploy: the pre-rollout migration Job, like 0016. Adding a nullable column is a catalog change,
-- but it takes a brief exclusive lock on audit_events and its partitions; lock_timeout makes the
-- Job fail (and be retried) rather than queue every gateway write behind a long auditor query.

set local lock_timeout = '10s';

alter table audit_events add column actor jsonb;

-- The v2 encoding. STABLE, not IMMUTABLE: to_jsonb and convert_to are stable, and PostgreSQL
-- inlines a function only if its body is no more volatile than it declares. Keep the body ONE
-- expression without sub-selects (no FROM, no aggregate), or it stops being inlined.
create function audit_event_hash_v2(
    p_id bigint, p_occurred_at timestamptz, p_user_id text, p_seq bigint, p_prev_hash text,
    p_event_type text, p_caller text, p_outcome text, p_change_id uuid, p_step_no int,
    p_target text, p_upstream_ref text, p_fields text[], p_values jsonb, p_hmac_key_id text,
    p_error_code text, p_request_id text, p_trace_id text, p_caller_addr text, p_actor jsonb
) returns text
language sql stable
as $$
select encode(sha256(convert_to(
       'pgw-audit-v2'
    || audit_f(p_id::text)
    || audit_f(((extract(epoch from p_occurred_at) * 1000000)::bigint)::text)
    || audit_f(p_user_id)
    || audit_f(p_seq::text)
    || audit_f(p_prev_hash)
    || audit_f(p_event_type)
    || audit_f(p_caller)
    || audit_f(p_outcome)
    || audit_f(p_change_id::text)
    || audit_f(p_step_no::text)
    || audit_f(p_target)
    || audit_f(p_upstream_ref)
    || audit_f(to_jsonb(p_fields)::text)
    || audit_f(p_values::text)
    || audit_f(p_hmac_key_id)
    || audit_f(p_error_code)
    || audit_f(p_request_id)
    || audit_f(p_trace_id)
    || audit_f(p_caller_addr)
    || audit_f(p_actor::text),
    'UTF8')), 'hex')
$$;

-- The hash a stored event must have, whichever encoding it was written with: v1 without an
-- actor, v2 with one. For auditors' in-database checks (docs/auditing.md, `chain_check`); the
-- writers call the two functions directly.
create function audit_event_row_hash(e audit_events) returns text
language sql stable
as $$
select case when e.actor is null
            then audit_event_hash(e.id, e.occurred_at, e.user_id, e.seq, e.prev_hash, e.event_type,
                                  e.caller, e.outcome, e.change_id, e.step_no, e.target,
                                  e.upstream_ref, e.fields, e."values", e.hmac_key_id, e.error_code,
                                  e.request_id, e.trace_id, e.caller_addr)
            else audit_event_hash_v2(e.id, e.occurred_at, e.user_id, e.seq, e.prev_hash, e.event_type,
                                     e.caller, e.outcome, e.change_id, e.step_no, e.target,
                                     e.upstream_ref, e.fields, e."values", e.hmac_key_id,
                                     e.error_code, e.request_id, e.trace_id, e.caller_addr, e.actor)
       end
$$;

-- The chaining trigger (latest: migration 0015), unchanged but for the hash: v1 as before for an
-- event without an actor, audit_event_hash_v2 for one with (PL/pgSQL plans the call once per
-- session and the planner inlines it, so it costs no function call per event).
create or replace function audit_events_chain() returns trigger
language plpgsql security definer set search_path = public, pg_temp
as $$
declare
    head record;
    k text;
    v jsonb;
    prev jsonb;
    prev_v jsonb;
    prev_key text;
    v_scope text;
    scoped jsonb;
    vals jsonb;
    changed boolean := false;
    applied jsonb := '{}';
    f text;
    enc_fields text;
begin
    -- The database clock dates events. Only the table owner (migrations) and superusers may
    -- insert an event with another time, e.g. when rows are copied into a new table.
    if new.occurred_at is distinct from now()
       and not exists (select 1 from pg_roles where rolname = session_user and rolsuper)
       and not pg_has_role(session_user,
                           (select relowner from pg_class where oid = 'audit_events'::regclass),
                           'MEMBER') then
        raise exception 'audit_events.occurred_at is set by the database'
            using errcode = 'insufficient_privilege';
    end if;

    -- The scope whose last values this event reads: '' (any target) for a request, the target and
    -- upstream object for a step; none for other events.
    if new.event_type in ('change_requested', 'step_attempted')
       and jsonb_typeof(new."values") = 'object' then
        v_scope := case when new.event_type = 'change_requested' then ''
                      else coalesce(new.target, '') || ':' || coalesce(new.upstream_ref, '') end;
    end if;

    -- Take the user's chain head lock (creating the head on the first event). This must stay the
    -- last lock of the transaction: callers lock profile_links / changes / change_steps first.
    -- Only the one scope is read out of last_values (nothing when v_scope is null: `->` is strict).
    select h.seq, h.hash, h.last_values -> v_scope as scoped into head
      from audit_chain_heads h where h.user_id = new.user_id for update;
    if not found then
        insert into audit_chain_heads (user_id, seq, hash)
        values (new.user_id, 0, repeat('0', 64))
        on conflict (user_id) do nothing;
        select h.seq, h.hash, h.last_values -> v_scope as scoped into head
          from audit_chain_heads h where h.user_id = new.user_id for update;
    end if;

    new.seq := head.seq + 1;

    -- Old values: for each masked field without one, the last value the gateway applied for this
    -- user (at the same target and upstream object for a step; at any target for a request).
    if v_scope is not null then
        scoped := head.scoped;
        vals := new."values";
        for k, v in select e.key, e.value from jsonb_each(vals) as e loop
            continue when jsonb_typeof(v) <> 'object' or not (v ? 'new');
            if scoped is not null and not (v ? 'old') then
                prev := scoped -> k;
                prev_v := prev -> 'v';
                if prev_v is not null and prev_v ? 'new' then
                    v := v || jsonb_build_object('old', prev_v -> 'new');
                    if prev_v ? 'new_hmac' then
                        v := v || jsonb_build_object('old_hmac', prev_v -> 'new_hmac');
                        prev_key := prev ->> 'k';
                        if prev_key is distinct from new.hmac_key_id then
                            v := v || jsonb_build_object('old_hmac_key_id', prev_key);
                        end if;
                    end if;
                    vals := vals || jsonb_build_object(k, v);
                    changed := true;
                end if;
            end if;
            -- An applied step makes this the value to show as "old" next time, at its own scope
            -- and at any target.
            if new.event_type = 'step_attempted' and new.outcome = 'applied' then
                applied := applied || jsonb_build_object(k, jsonb_build_object(
                    'v', v - 'old' - 'old_hmac' - 'old_hmac_key_id', 'k', new.hmac_key_id));
            end if;
        end loop;
        if changed then
            new."values" := vals;
        end if;
    end if;

    new.prev_hash := head.hash;
    if new.actor is not null then
        new.hash := audit_event_hash_v2(
            new.id, new.occurred_at, new.user_id, new.seq, new.prev_hash, new.event_type,
            new.caller, new.outcome, new.change_id, new.step_no, new.target, new.upstream_ref,
            new.fields, new."values", new.hmac_key_id, new.error_code, new.request_id,
            new.trace_id, new.caller_addr, new.actor);
    else
        -- v1, the same canonical encoding as audit_event_hash() (migration 0003), evaluated
        -- inline because that function is not inlined.
        if new.fields is null then
            enc_fields := '~';
        else
            enc_fields := audit_f(cardinality(new.fields)::text);
            foreach f in array new.fields loop
                enc_fields := enc_fields || audit_f(f);
            end loop;
        end if;
        new.hash := encode(sha256(convert_to(
               'pgw-audit-v1'
            || audit_f(new.id::text)
            || audit_f(((extract(epoch from new.occurred_at) * 1000000)::bigint)::text)
            || audit_f(new.user_id)
            || audit_f(new.seq::text)
            || audit_f(new.prev_hash)
            || audit_f(new.event_type)
            || audit_f(new.caller)
            || audit_f(new.outcome)
            || audit_f(new.change_id::text)
            || audit_f(new.step_no::text)
            || audit_f(new.target)
            || audit_f(new.upstream_ref)
            || enc_fields
            || audit_f(new."values"::text)
            || audit_f(new.hmac_key_id)
            || audit_f(new.error_code)
            || audit_f(new.request_id)
            || audit_f(new.trace_id)
            || audit_f(new.caller_addr),
            'UTF8')), 'hex');
    end if;
    -- Only an applied step changes last_values, computed from the row itself: the trigger never
    -- holds the user's whole last values, only the scope it reads.
    if applied <> '{}' then
        update audit_chain_heads h
           set seq = new.seq, hash = new.hash, updated_at = now(),
               last_values = h.last_values || jsonb_build_object(
                   '', coalesce(h.last_values -> '', '{}') || applied,
                   v_scope, coalesce(h.last_values -> v_scope, '{}') || applied)
         where h.user_id = new.user_id;
    else
        update audit_chain_heads set seq = new.seq, hash = new.hash, updated_at = now()
         where user_id = new.user_id;
    end if;
    return new;
end
$$;

-- An event as the gateway hands it to audit_append: audit_event_input and who acted.
create type audit_event_input_v2 as (
    user_id      text,
    event_type   text,
    caller       text,
    outcome      text,
    change_id    uuid,
    step_no      int,
    target       text,
    upstream_ref text,
    fields       text[],
    "values"     jsonb,
    hmac_key_id  text,
    error_code   text,
    request_id   text,
    trace_id     text,
    caller_addr  text,
    -- audit::Actor as JSON; NULL for an event without one (it is then hashed with v1).
    actor        jsonb
);

-- As migration 0016: the role the triggers trust must own the new function.
do $$
begin
    if not pg_has_role(current_user, 'profile_gateway_audit_writer', 'MEMBER') then
        execute format('grant profile_gateway_audit_writer to %I', current_user);
    end if;
end
$$;

do $migration$
declare
    owner text := 'profile_gateway_audit_writer';
    id_seq text := pg_get_serial_sequence('audit_events', 'id');
begin
    -- audit_append of migration 0016 with the actor: carried into the row, and hashed with v2
    -- when present. Seq, locks, old values and the v1 hash are as there.
    execute format($f$
create function audit_append(p_events audit_event_input_v2[]) returns bigint
language plpgsql security definer set search_path = public, pg_temp
-- See migration 0016: a generic plan on a young table's statistics scanned every chain head.
set enable_seqscan = off
as $body$
declare
    n bigint;
begin
    -- The triggers above trust this function's statement only when it runs as their owner.
    if current_user <> %1$L then
        raise exception 'audit_append must be owned by %%, the role the audit triggers trust (migration 0016)', %1$L;
    end if;
    if coalesce(cardinality(p_events), 0) = 0 then
        return 0;
    end if;

    -- Lock every user's chain head, in user order like every lock on the heads, creating the ones
    -- a first event needs in the same pass (migration 0016 says why this shape).
    insert into audit_chain_heads (user_id, seq, hash)
    select distinct e.user_id, 0::bigint, repeat('0', 64) from unnest(p_events) e order by 1
    on conflict (user_id) do update set seq = audit_chain_heads.seq where false;

    perform set_config('pgw.audit_append', 'on', true);
    with recursive
    ev as (
        -- k: the event's place in its user's part of the batch, in the order given.
        -- fields and values as the columns' defaults would make them.
        select e.user_id, e.event_type, e.caller, e.outcome, e.change_id, e.step_no, e.target,
               e.upstream_ref, coalesce(e.fields, '{}') as fields, coalesce(e."values", '{}') as "values",
               e.hmac_key_id, e.error_code, e.request_id, e.trace_id, e.caller_addr, e.actor,
               row_number() over (partition by e.user_id order by e.o) as k,
               nextval(%2$L::regclass) as id
          from unnest(p_events) with ordinality as e(user_id, event_type, caller, outcome, change_id,
               step_no, target, upstream_ref, fields, "values", hmac_key_id, error_code, request_id,
               trace_id, caller_addr, actor, o)
    ),
    -- Locked above; this statement's snapshot, taken after the locks, sees their latest versions.
    heads as (
        select h.user_id, h.seq, h.hash, h.last_values
          from audit_chain_heads h
         where h.user_id in (select user_id from ev)
    ),
    -- One row per user per step: after step k, the user's seq, hash and last applied values, and
    -- event k as written.
    chain as (
        select h.user_id, 0::bigint as k, h.seq, h.hash, h.last_values,
               null::bigint as id, null::jsonb as vals, null::text as prev_hash
          from heads h
        union all
        select c.user_id, c.k + 1, c.seq + 1, x.hash,
               case when m.applied is null then c.last_values
                    else c.last_values || jsonb_build_object(
                        '', coalesce(c.last_values -> '', '{}') || m.applied,
                        s.scope, coalesce(c.last_values -> s.scope, '{}') || m.applied)
               end,
               e.id, m.vals, c.hash
          from chain c
          join ev e on e.user_id = c.user_id and e.k = c.k + 1
          -- The scope of last values the event reads: '' (any target) for a request, its target
          -- and upstream object for a step, none otherwise (then `->` yields null).
          cross join lateral (
              select case when e.event_type in ('change_requested', 'step_attempted')
                               and jsonb_typeof(e."values") = 'object'
                          then case when e.event_type = 'change_requested' then ''
                                    else coalesce(e.target, '') || ':' || coalesce(e.upstream_ref, '') end
                     end as scope
          ) s
          -- The old-value rules of audit_events_chain(), field by field.
          cross join lateral (
              select coalesce(jsonb_object_agg(f.key, f.nv), e."values") as vals,
                     jsonb_object_agg(f.key, jsonb_build_object(
                         'v', f.nv - 'old' - 'old_hmac' - 'old_hmac_key_id', 'k', e.hmac_key_id))
                         filter (where f.masked and e.event_type = 'step_attempted' and e.outcome = 'applied')
                         as applied
                from (select j.key, j.masked,
                             case when j.masked and p.prev_v is not null and p.prev_v ? 'new'
                                       and not (j.value ? 'old')
                                  then j.value || jsonb_build_object('old', p.prev_v -> 'new')
                                       || case when p.prev_v ? 'new_hmac'
                                               then jsonb_build_object('old_hmac', p.prev_v -> 'new_hmac')
                                                    || case when p.prev ->> 'k' is distinct from e.hmac_key_id
                                                            then jsonb_build_object('old_hmac_key_id', p.prev ->> 'k')
                                                            else '{}' end
                                               else '{}' end
                                  else j.value
                             end as nv
                        from (select d.key, d.value,
                                     jsonb_typeof(d.value) = 'object' and d.value ? 'new' as masked
                                from jsonb_each(e."values") d) j
                        cross join lateral (
                            select (c.last_values -> s.scope) -> j.key as prev,
                                   ((c.last_values -> s.scope) -> j.key) -> 'v' as prev_v
                        ) p
                       where s.scope is not null) f
          ) m
          -- The canonical encoding: v2 (inlined, no call per event) with an actor, v1 (migration
          -- 0003, a call per event) for the events an older gateway hands over without one.
          cross join lateral (
              select case when e.actor is not null
                          then audit_event_hash_v2(e.id, now(), e.user_id, c.seq + 1, c.hash, e.event_type,
                                                   e.caller, e.outcome, e.change_id, e.step_no, e.target,
                                                   e.upstream_ref, e.fields, m.vals, e.hmac_key_id,
                                                   e.error_code, e.request_id, e.trace_id, e.caller_addr,
                                                   e.actor)
                          else audit_event_hash(e.id, now(), e.user_id, c.seq + 1, c.hash, e.event_type,
                                                e.caller, e.outcome, e.change_id, e.step_no, e.target,
                                                e.upstream_ref, e.fields, m.vals, e.hmac_key_id,
                                                e.error_code, e.request_id, e.trace_id, e.caller_addr)
                     end as hash
          ) x
    ),
    ins as (
        insert into audit_events (id, occurred_at, user_id, event_type, caller, outcome, change_id, step_no,
                                  target, upstream_ref, fields, "values", hmac_key_id, error_code,
                                  request_id, trace_id, caller_addr, actor, seq, prev_hash, hash)
        overriding system value
        select c.id, now(), e.user_id, e.event_type, e.caller, e.outcome, e.change_id, e.step_no,
               e.target, e.upstream_ref, e.fields, c.vals, e.hmac_key_id, e.error_code,
               e.request_id, e.trace_id, e.caller_addr, e.actor, c.seq, c.prev_hash, c.hash
          from chain c join ev e on e.user_id = c.user_id and e.k = c.k
         where c.k > 0
         order by c.user_id, c.k
        returning 1
    ),
    moved as (
        update audit_chain_heads h
           set seq = l.seq, hash = l.hash, last_values = l.last_values, updated_at = now()
          from (select distinct on (user_id) user_id, seq, hash, last_values
                  from chain where k > 0 order by user_id, k desc) l
         where h.user_id = l.user_id
        returning 1
    )
    select count(*) into n from ins;
    perform set_config('pgw.audit_append', '', true);
    return n;
end
$body$;
$f$, owner, id_seq);
    execute format('grant create on schema public to %I', owner);
    execute format('alter function audit_append(audit_event_input_v2[]) owner to %I', owner);
    execute format('revoke create on schema public from %I', owner);
end
$migration$;

-- The older gateways' entry point: the same events without an actor (v1), in the order given,
-- chained by the function above. It keeps its owner (the writer) and its grants.
create or replace function audit_append(p_events audit_event_input[]) returns bigint
language sql security definer set search_path = public, pg_temp
as $$
select audit_append(array(
    select row(e.user_id, e.event_type, e.caller, e.outcome, e.change_id, e.step_no, e.target,
               e.upstream_ref, e.fields, e."values", e.hmac_key_id, e.error_code, e.request_id,
               e.trace_id, e.caller_addr, null::jsonb)::audit_event_input_v2
      from unnest(p_events) with ordinality as e(user_id, event_type, caller, outcome, change_id,
           step_no, target, upstream_ref, fields, "values", hmac_key_id, error_code, request_id,
           trace_id, caller_addr, o)
     order by e.o))
$$;

revoke execute on function audit_append(audit_event_input_v2[]) from public;
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'profile_gateway_app') then
        execute 'grant execute on function audit_append(audit_event_input_v2[]) to profile_gateway_app';
        execute 'grant usage on type audit_event_input_v2 to profile_gateway_app';
    end if;
end
$$;

-- Same columns as migration 20261201000501, plus actor_source. Who acted comes from the event
-- itself when it carries an actor (hashed with it); from its hashed `values.actor` for the link
-- events and operator retries of migration 20261201000102; only for a change's events recorded
-- before this migration from its `changes` row, which the gateway's role may update
-- (actor_source says which).
create or replace view audit_log as
select e.id                                     as event_id,
       e.occurred_at,
       e.user_id,
       e.seq                                    as user_event_seq,
       e.event_type,
       e.outcome,
       e.caller,
       e.caller_addr,
       e.request_id,
       e.trace_id,
       e.change_id,
       c.user_seq                               as change_seq,
       case when e.change_id is null then null
            else coalesce(fin.outcome, 'pending') end as change_status,
       req.occurred_at                          as change_created_at,
       fin.occurred_at                          as change_finished_at,
       e.step_no,
       coalesce(e.target, st.target)            as target,
       coalesce(e.upstream_ref, st.upstream_ref) as upstream_ref,
       e.fields,
       e.error_code,
       st.outcome                               as step_status,
       case when e.step_no is not null then st.attempts::int end as step_attempts,
       case when diag then s.error_retryable end as step_error_retryable,
       case when diag then s.upstream_status end as step_upstream_status,
       case when diag then s.upstream_code end   as step_upstream_code,
       case when diag then s.error_message end   as step_error_message,
       e."values"                               as masked_values,
       e.hmac_key_id,
       e.prev_hash,
       e.hash,
       who.actor ->> 'auth'                     as auth_method,
       who.actor ->> 'subject'                  as caller_subject,
       who.actor ->> 'assertion_subject'        as end_user_subject,
       who.actor ->> 'assertion_jti'            as end_user_assertion_jti,
       who.actor ->> 'gateway_request_id'       as gateway_request_id,
       who.source                               as actor_source
  from audit_events e
  left join changes c on c.id = e.change_id
  left join lateral (
      select r.occurred_at from audit_events r
       where e.change_id is not null and r.change_id = e.change_id
         and r.user_id = e.user_id and r.event_type = 'change_requested'
       order by r.seq limit 1) req on true
  left join lateral (
      select f.outcome, f.occurred_at from audit_events f
       where e.change_id is not null and f.change_id = e.change_id
         and f.user_id = e.user_id and f.event_type = 'change_completed'
       order by f.seq desc limit 1) fin on true
  left join lateral (
      select (array_agg(a.outcome order by a.seq desc))[1] as outcome,
             (array_agg(a.target order by a.seq desc))[1] as target,
             (array_agg(a.upstream_ref order by a.seq desc))[1] as upstream_ref,
             count(*) as attempts
        from audit_events a
       where e.step_no is not null and a.change_id = e.change_id
         and a.user_id = e.user_id and a.step_no = e.step_no and a.event_type = 'step_attempted') st on true
  left join change_steps s on s.change_id = e.change_id and s.step_no = e.step_no
  cross join lateral (select e.event_type = 'step_attempted' and e.outcome in ('failed', 'unknown') as diag) d
  cross join lateral (
      select case when e.actor is not null then e.actor
                  when e."values" ? 'actor' then e."values" -> 'actor'
                  else c.actor end as actor,
             case when e.actor is not null then 'event'
                  when e."values" ? 'actor' then 'event_values'
                  when c.actor is not null then 'change_record' end as source) who;
