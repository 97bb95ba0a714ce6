-- Chain a batch of audit events in one set-based statement instead of one trigger call per event.
--
-- Measured with pgbench (80 events per statement, 4 per user): the chaining trigger cost about
-- 114 us per event on top of the 30 us the row itself costs. About half of it was the chain head's
-- row lock and update, once per event; the rest was PL/pgSQL evaluating the hash and the old
-- values one event at a time. audit_append() locks each user's head once, computes every event's
-- seq, old values and hash in a recursive query that advances all users' chains together (one
-- step per event of the busiest user, not one per event), inserts the events in one INSERT and
-- moves each head once.
--
-- The chain itself does not change: the same seq, prev_hash, canonical encoding and hash
-- (`audit verify` checks both paths alike), the same old-value rules, the same lock order (the
-- heads, in user order, last). The trigger stays for every other insert, the gateway role's
-- included. It steps aside only for audit_append's own statement: the transaction-local flag
-- `pgw.audit_append` AND current_user = profile_gateway_audit_writer, a NOLOGIN role that owns
-- audit_append and nothing else. The gateway's role can set the flag but cannot become that role,
-- so its direct inserts are still chained by the trigger; no other SECURITY DEFINER function runs
-- as that role. The owner of the tables (and superusers) could always disable the triggers anyway.
--
-- Deploy: run it as the pre-rollout migration Job, before gateways that call audit_append start.
-- Gateways still running the older build keep inserting events directly, which the trigger chains
-- as before, so both can run side by side during the rollout. Re-creating the two triggers takes a
-- brief exclusive lock on audit_events and audit_chain_heads; lock_timeout makes the Job fail (and
-- be retried) rather than queue every gateway write behind a long auditor query. Do not rename
-- profile_gateway_audit_writer: the triggers and the function name it.

set local lock_timeout = '10s';

-- Cluster-wide, like the roles of migration 0002: idempotent and tolerant of a concurrent
-- migration of another database creating it first.
do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'profile_gateway_audit_writer') then
        begin
            create role profile_gateway_audit_writer nologin;
        exception when duplicate_object or unique_violation then
            null;
        end;
    end if;
    -- To hand audit_append over to it below (superusers may do so anyway).
    if not pg_has_role(current_user, 'profile_gateway_audit_writer', 'MEMBER') then
        execute format('grant profile_gateway_audit_writer to %I', current_user);
    end if;
end
$$;
-- What audit_append needs, and no more.
grant select, insert on audit_events to profile_gateway_audit_writer;
grant select, insert, update on audit_chain_heads to profile_gateway_audit_writer;
do $$
begin
    execute format('grant usage on sequence %s to profile_gateway_audit_writer',
                   pg_get_serial_sequence('audit_events', 'id'));
end
$$;

create type audit_event_input as (
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
    caller_addr  text
);

do $migration$
declare
    owner text := 'profile_gateway_audit_writer';
    id_seq text := pg_get_serial_sequence('audit_events', 'id');
begin
    -- The events' trigger and the heads' guard: skipped for audit_append's own statement only.
    execute format($t$
        drop trigger audit_events_chain on audit_events;
        create trigger audit_events_chain before insert on audit_events for each row
            when (current_setting('pgw.audit_append', true) is distinct from 'on' or current_user <> %1$L)
            execute function audit_events_chain();
        alter table audit_events enable always trigger audit_events_chain;
        drop trigger audit_chain_heads_guard on audit_chain_heads;
        create trigger audit_chain_heads_guard before update on audit_chain_heads for each row
            when (pg_trigger_depth() = 0
                  and (current_setting('pgw.audit_append', true) is distinct from 'on' or current_user <> %1$L))
            execute function audit_heads_guard();
        alter table audit_chain_heads enable always trigger audit_chain_heads_guard;
    $t$, owner);

    execute format($f$
create function audit_append(p_events audit_event_input[]) returns bigint
language plpgsql security definer set search_path = public, pg_temp
-- The gateway runs with plan_cache_mode = force_generic_plan, and a generic plan built on the
-- statistics of a young table joined the batch to the heads by a sequential scan of all of them:
-- 3 ms per statement at 2,000 users under the benchmark, growing with the users. A batch touches
-- a few dozen heads, and each is one primary-key lookup.
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
    -- a first event needs in the same pass. The DO UPDATE that never applies is what locks an
    -- existing head (DO NOTHING would not); creating new heads first and locking the others after
    -- would hold a later user's head while waiting for an earlier one, and deadlock against the
    -- trigger path, which takes them in order.
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
               e.hmac_key_id, e.error_code, e.request_id, e.trace_id, e.caller_addr,
               row_number() over (partition by e.user_id order by e.o) as k,
               nextval(%2$L::regclass) as id
          from unnest(p_events) with ordinality as e(user_id, event_type, caller, outcome, change_id,
               step_no, target, upstream_ref, fields, "values", hmac_key_id, error_code, request_id,
               trace_id, caller_addr, o)
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
          -- The canonical encoding (migration 0003). A set-based query inlines this SQL function,
          -- so there is no call per event; the trigger spells it out because PL/pgSQL does not.
          cross join lateral (
              select audit_event_hash(e.id, now(), e.user_id, c.seq + 1, c.hash, e.event_type, e.caller,
                                      e.outcome, e.change_id, e.step_no, e.target, e.upstream_ref,
                                      e.fields, m.vals, e.hmac_key_id, e.error_code, e.request_id,
                                      e.trace_id, e.caller_addr) as hash
          ) x
    ),
    ins as (
        insert into audit_events (id, occurred_at, user_id, event_type, caller, outcome, change_id, step_no,
                                  target, upstream_ref, fields, "values", hmac_key_id, error_code,
                                  request_id, trace_id, caller_addr, seq, prev_hash, hash)
        overriding system value
        select c.id, now(), e.user_id, e.event_type, e.caller, e.outcome, e.change_id, e.step_no,
               e.target, e.upstream_ref, e.fields, c.vals, e.hmac_key_id, e.error_code,
               e.request_id, e.trace_id, e.caller_addr, c.seq, c.prev_hash, c.hash
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
    -- A new owner needs CREATE on the schema; the writer keeps it only for this hand-over.
    execute format('grant create on schema public to %I', owner);
    execute format('alter function audit_append(audit_event_input[]) owner to %I', owner);
    execute format('revoke create on schema public from %I', owner);
end
$migration$;

revoke execute on function audit_append(audit_event_input[]) from public;
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'profile_gateway_app') then
        execute 'grant execute on function audit_append(audit_event_input[]) to profile_gateway_app';
        execute 'grant usage on type audit_event_input to profile_gateway_app';
    end if;
end
$$;
