-- Old values by key lookup instead of a backward scan of the user's events.
--
-- The chaining trigger fills each masked field's old value with the last value the gateway applied
-- (migration 0003). Finding it by scanning audit_events cost ~0.1 ms per field on every event, the
-- largest single cost of recording a change (bench/README.md). audit_last_values keeps, per user,
-- per scope (a target and upstream object, and '' for "any target") and per field, the last applied
-- masked value and its keyed hash. It is derived state, maintained only by the trigger; the events
-- themselves stay the record (their hashes cover the old values they were given).

create table audit_last_values (
    user_id     text not null,
    scope       text not null,
    field       text not null,
    value       jsonb not null,
    hmac_key_id text,
    seq         bigint not null,
    primary key (user_id, scope, field)
);
revoke all on audit_last_values from public;
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'profile_gateway_app') then
        execute 'revoke all on audit_last_values from profile_gateway_app';
    end if;
end
$$;

-- Backfill from the events already written: the latest applied step per scope and field.
insert into audit_last_values (user_id, scope, field, value, hmac_key_id, seq)
select distinct on (e.user_id, s.scope, k.key)
       e.user_id, s.scope, k.key, k.value, e.hmac_key_id, e.seq
  from audit_events e
 cross join lateral jsonb_each(e."values") as k(key, value)
 cross join lateral (values (''), (coalesce(e.target, '') || ':' || coalesce(e.upstream_ref, ''))) as s(scope)
 where e.event_type = 'step_attempted' and e.outcome = 'applied'
   and jsonb_typeof(e."values") = 'object' and jsonb_typeof(k.value) = 'object' and k.value ? 'new'
 order by e.user_id, s.scope, k.key, e.seq desc;

create or replace function audit_events_chain() returns trigger
language plpgsql security definer set search_path = public, pg_temp
as $$
declare
    head record;
    k text;
    v jsonb;
    prev jsonb;
    prev_key text;
    v_scope text;
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

    -- Take the user's chain head lock (creating the head on the first event). This must stay the
    -- last lock of the transaction: callers lock profile_links / changes / change_steps first.
    insert into audit_chain_heads (user_id, seq, hash)
    values (new.user_id, 0, repeat('0', 64))
    on conflict (user_id) do nothing;
    select h.seq, h.hash into head from audit_chain_heads h where h.user_id = new.user_id for update;

    new.seq := head.seq + 1;

    -- Old values: for each masked field without one, the last value the gateway applied for this
    -- user (at the same target and upstream object for a step; at any target for a request).
    if new.event_type in ('change_requested', 'step_attempted')
       and jsonb_typeof(new."values") = 'object' then
        v_scope := case when new.event_type = 'change_requested' then ''
                      else coalesce(new.target, '') || ':' || coalesce(new.upstream_ref, '') end;
        for k, v in select e.key, e.value from jsonb_each(new."values") as e loop
            continue when jsonb_typeof(v) <> 'object' or not (v ? 'new');
            if not (v ? 'old') then
                select l.value, l.hmac_key_id into prev, prev_key
                  from audit_last_values l
                 where l.user_id = new.user_id and l.scope = v_scope and l.field = k;
                if prev is not null and prev ? 'new' then
                    v := v || jsonb_build_object('old', prev -> 'new');
                    if prev ? 'new_hmac' then
                        v := v || jsonb_build_object('old_hmac', prev -> 'new_hmac');
                        if prev_key is distinct from new.hmac_key_id then
                            v := v || jsonb_build_object('old_hmac_key_id', prev_key);
                        end if;
                    end if;
                    new."values" := jsonb_set(new."values", array[k], v);
                end if;
            end if;
            -- An applied step makes this the value to show as "old" next time, at its own scope
            -- and at any target.
            if new.event_type = 'step_attempted' and new.outcome = 'applied' then
                insert into audit_last_values as l (user_id, scope, field, value, hmac_key_id, seq)
                select new.user_id, s.scope, k, v, new.hmac_key_id, new.seq
                  from (values (''), (coalesce(new.target, '') || ':' || coalesce(new.upstream_ref, ''))) as s(scope)
                on conflict (user_id, scope, field) do update
                   set value = excluded.value, hmac_key_id = excluded.hmac_key_id, seq = excluded.seq;
            end if;
        end loop;
    end if;

    new.prev_hash := head.hash;
    new.hash := audit_event_hash(
        new.id, new.occurred_at, new.user_id, new.seq, new.prev_hash, new.event_type, new.caller,
        new.outcome, new.change_id, new.step_no, new.target, new.upstream_ref, new.fields,
        new."values", new.hmac_key_id, new.error_code, new.request_id, new.trace_id,
        new.caller_addr);
    update audit_chain_heads set seq = new.seq, hash = new.hash, updated_at = now()
     where user_id = new.user_id;
    return new;
end
$$;
