-- Issue 12: the gateway computes the hash chain of its own events (encoding v3, docs/auditing.md)
-- and keeps each user's chain head in the user's profile_links row, the row the record and the
-- settle already lock and update. The database no longer runs SQL per event for the hot path's
-- events (the recursive chain CTE, the per-event hash function and the 2 KB last_values rewrite
-- cost 0.3-0.5 ms of PostgreSQL CPU per change); it still enforces what a writer must not be able
-- to do: UPDATE, DELETE and TRUNCATE stay refused, a user's seq is unique, and an event the
-- gateway dates must be dated within minutes of the database clock.
--
-- An older gateway build calls audit_append(), which kept the heads in audit_chain_heads; after
-- this migration it refuses (503 to the caller, nothing written), so two chains for one user
-- cannot fork. This migration is therefore not expand-only: roll the gateway forward with it.

-- No event may be chained while the heads move (an older replica still writes through the
-- trigger until it stops). Held until the migration's transaction commits (a DO block, so that a
-- file applied outside a transaction, as scripts/schema.sh does, runs too). In the order the
-- older replicas' statements take them (profile_links rows first, then the audit tables), so the
-- two cannot deadlock; bounded, so the Job fails and retries rather than queue every write.
set local lock_timeout = '10s';
do $$ begin lock table profile_links, audit_events, audit_chain_heads in exclusive mode; end $$;

-- 1. The chain head moves into the user's row. Chains without one ('_system': audit reads,
--    maintenance; a user whose first event, e.g. a refused links update, came before the row)
--    keep their head in audit_chain_heads until the row is created (step 1b); `moved` marks a
--    head that lives in profile_links now.
alter table profile_links
    add column chain_seq  bigint not null default 0,
    add column chain_hash text   not null default repeat('0', 64);
alter table audit_chain_heads add column moved boolean not null default false;

update profile_links p
   set chain_seq = h.seq, chain_hash = h.hash
  from audit_chain_heads h
 where h.user_id = p.user_id;
alter table audit_chain_heads disable trigger audit_chain_heads_guard;
update audit_chain_heads h set moved = true
 where exists (select 1 from profile_links p where p.user_id = h.user_id);
alter table audit_chain_heads enable always trigger audit_chain_heads_guard;

-- 1b. A new profile_links row takes over the head its user may already have. An upsert, so that
--     a first event chained concurrently either comes first (its head is copied once it commits)
--     or finds the head marked moved and follows it here (audit_events_chain).
create function profile_links_take_chain_head() returns trigger
language plpgsql security definer set search_path = public, pg_temp
as $$
declare
    h record;
begin
    insert into audit_chain_heads (user_id, seq, hash, moved)
    values (new.user_id, 0, repeat('0', 64), true)
    on conflict (user_id) do update set moved = true
    returning seq, hash into h;
    new.chain_seq := h.seq;
    new.chain_hash := h.hash;
    return new;
end
$$;
create trigger profile_links_take_chain_head before insert on profile_links
    for each row execute function profile_links_take_chain_head();

-- 2. Events the gateway chains carry their encoding's version. NULL: the database chained the
--    event (v1 without an actor, v2 with one, as before).
alter table audit_events add column format smallint;
-- NOT VALID: every existing row has format NULL; checking them would hold the table locked for a
-- time that grows with the trail.
alter table audit_events add constraint audit_events_format check (format is null or format = 3)
    not valid;
-- The gateway dates its events; the database accepts a date only within 5 seconds of its own
-- clock, no more than `audit verify`'s digest leaves out (verify::DIGEST_SETTLE_SECS), so a
-- digest taken earlier cannot be changed by an event dated before it. NOT VALID: a pg_dump
-- restore adds it after the data; a logical replica or a COPY of old rows must load the rows
-- before adding it (docs/auditing.md).
alter table audit_events add constraint audit_events_plausible_time
    check (format is null
           or occurred_at between now() - interval '5 seconds' and now() + interval '5 seconds')
    not valid;

-- 3. A user's seq is unique: per partition (a unique index on a partitioned table must contain
--    the partition key), the verifier checks the boundaries between partitions. It replaces the
--    plain index on the same columns, so an event still maintains three indexes, not four.
do $migration$
declare
    part text;
begin
    for part in
        select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid
         where i.inhparent = 'public.audit_events'::regclass
    loop
        execute format('create unique index %I on %I (user_id, seq)', part || '_user_seq', part);
    end loop;
end
$migration$;
drop index audit_events_by_user;

create or replace function audit_create_partition(month_start date) returns boolean
language plpgsql security definer set search_path = public, pg_temp
as $$
declare
    m date := date_trunc('month', month_start)::date;
    name text := audit_partition_name(m);
begin
    if to_regclass(format('public.%I', name)) is not null then
        return false;
    end if;
    execute format(
        'create table %I partition of audit_events for values from (%L) to (%L)',
        name,
        (m::timestamp at time zone 'UTC'),
        ((m + interval '1 month')::timestamp at time zone 'UTC'));
    execute format('create unique index %I on %I (user_id, seq)', name || '_user_seq', name);
    -- Row triggers are cloned from the parent; make sure the clones are ALWAYS too. TRUNCATE
    -- triggers are not cloned: each partition gets its own.
    execute format('alter table %I enable always trigger audit_events_chain', name);
    execute format('alter table %I enable always trigger audit_events_no_update', name);
    execute format(
        'create trigger audit_events_no_truncate before truncate on %I
           for each statement execute function audit_reject_change()', name);
    execute format('alter table %I enable always trigger audit_events_no_truncate', name);
    -- Access goes through the parent table only.
    execute format('revoke all on table %I from public, profile_gateway_app, profile_gateway_auditor', name);
    return true;
end
$$;

-- 4. The database still chains the events the gateway does not (links updates written through
--    audit::insert, audit reads, maintenance): with the head in profile_links when the user has a
--    row there, in audit_chain_heads otherwise. Old values are no longer written into events:
--    the auditor views derive them (step 6), for these events as for the gateway's.
create or replace function audit_events_chain() returns trigger
language plpgsql security definer set search_path = public, pg_temp
as $$
declare
    head_seq bigint;
    head_hash text;
    in_links boolean;
    moved boolean;
    enc_fields text;
    f text;
begin
    -- The database clock dates these events. Only the table owner (migrations) and superusers may
    -- insert an event with another time, e.g. when rows are copied into a new table.
    if new.occurred_at is distinct from now()
       and not exists (select 1 from pg_roles where rolname = session_user and rolsuper)
       and not pg_has_role(session_user,
                           (select relowner from pg_class where oid = 'audit_events'::regclass),
                           'MEMBER') then
        raise exception 'audit_events.occurred_at is set by the database'
            using errcode = 'insufficient_privilege';
    end if;

    -- Callers lock profile_links / changes first. A user without a row: audit_chain_heads, then
    -- (if it moved) profile_links, the order profile_links_take_chain_head takes them in.
    select p.chain_seq, p.chain_hash into head_seq, head_hash
      from profile_links p where p.user_id = new.user_id for no key update;
    in_links := found;
    if not in_links then
        insert into audit_chain_heads (user_id, seq, hash)
        values (new.user_id, 0, repeat('0', 64))
        on conflict (user_id) do nothing;
        select h.seq, h.hash, h.moved into head_seq, head_hash, moved
          from audit_chain_heads h where h.user_id = new.user_id for update;
        -- The user's row was created (and took this head over) while we waited for the lock.
        if moved then
            select p.chain_seq, p.chain_hash into head_seq, head_hash
              from profile_links p where p.user_id = new.user_id for no key update;
            if not found then
                raise exception 'the chain head of % moved to profile_links, which has no row', new.user_id;
            end if;
            in_links := true;
        end if;
    end if;

    new.seq := head_seq + 1;
    new.prev_hash := head_hash;
    if new.actor is not null then
        new.hash := audit_event_hash_v2(
            new.id, new.occurred_at, new.user_id, new.seq, new.prev_hash, new.event_type,
            new.caller, new.outcome, new.change_id, new.step_no, new.target, new.upstream_ref,
            new.fields, new."values", new.hmac_key_id, new.error_code, new.request_id,
            new.trace_id, new.caller_addr, new.actor);
    else
        -- v1, the same canonical encoding as audit_event_hash() (migration 0003), inline.
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
    if in_links then
        update profile_links set chain_seq = new.seq, chain_hash = new.hash
         where user_id = new.user_id;
    else
        update audit_chain_heads set seq = new.seq, hash = new.hash, updated_at = now()
         where user_id = new.user_id;
    end if;
    return new;
end
$$;

-- The gateway's own events (format 3) arrive chained: the trigger leaves them alone (a WHEN
-- clause, so they pay no function call).
drop trigger audit_events_chain on audit_events;
-- audit_append's flag no longer skips it either: the function that set it is retired.
create trigger audit_events_chain before insert on audit_events for each row
    when (new.format is null)
    execute function audit_events_chain();
alter table audit_events enable always trigger audit_events_chain;
do $migration$
declare
    part text;
begin
    for part in
        select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid
         where i.inhparent = 'public.audit_events'::regclass
    loop
        execute format('alter table %I enable always trigger audit_events_chain', part);
    end loop;
end
$migration$;

-- 5. The batch chaining of migration 0016 is retired (see the top of this file).
create or replace function audit_append(p_events audit_event_input_v2[]) returns bigint
language plpgsql security definer set search_path = public, pg_temp
as $$
begin
    raise exception 'audit_append() is retired by migration 20261202000200: this gateway build is older than the database; deploy the build that chains its own events'
        using errcode = 'feature_not_supported';
end
$$;

-- A statement of the hot path aborts with this when what it wrote is not what the gateway chained
-- (an idempotency key another replica inserted a moment earlier): nothing of the batch commits and
-- the gateway writes its changes again one by one. Called only then (CASE, non-constant argument).
create function pgw_abort(reason text) returns boolean
language plpgsql
as $$
begin
    raise exception 'profile-gateway: %', reason using errcode = 'serialization_failure';
end
$$;
grant execute on function pgw_abort(text) to profile_gateway_app;

-- 6. Every chain's head, wherever it is kept: the verifier, the digest and checkpoints read this.
create view audit_heads as
select p.user_id, p.chain_seq as seq, p.chain_hash as hash
  from profile_links p
 where p.chain_seq > 0
union all
select h.user_id, h.seq, h.hash
  from audit_chain_heads h
 where not h.moved and h.seq > 0;
grant select on audit_heads
    to profile_gateway_app, profile_gateway_auditor, profile_gateway_maintenance;

-- Old values, derived at query time (and a new last column, old_hmac_key_id): for a masked field of a request (any target) or of a step
-- (its target and upstream object), the value the last earlier applied step of the same user
-- set. Events written before this migration carry theirs (`old` in values) and keep it.
create or replace view audit_field_changes as
select e.id as event_id, e.occurred_at, e.user_id, e.event_type, e.outcome, e.caller,
       e.caller_addr, e.request_id, e.change_id, e.step_no, e.target, e.upstream_ref,
       f.key as field,
       coalesce(f.value ->> 'old', prev.v ->> 'new') as old_value_masked,
       f.value ->> 'new' as new_value_masked,
       coalesce(f.value ->> 'old_hmac', prev.v ->> 'new_hmac') as old_hmac,
       f.value ->> 'new_hmac' as new_hmac,
       e.hmac_key_id,
       -- The key the old value's HMAC was made with (it differs after a key rotation).
       case when f.value ? 'old_hmac' then coalesce(f.value ->> 'old_hmac_key_id', e.hmac_key_id)
            when prev.v ? 'new_hmac' then prev.k end as old_hmac_key_id
  from audit_events e
 cross join lateral jsonb_each(e."values") f(key, value)
  left join lateral (
      select p."values" -> f.key as v, p.hmac_key_id as k
        from audit_events p
       where not (f.value ? 'old')
         and p.user_id = e.user_id and p.seq < e.seq
         and p.event_type = 'step_attempted' and p.outcome = 'applied'
         and p."values" -> f.key ? 'new'
         and (e.event_type = 'change_requested'
              or (p.target is not distinct from e.target
                  and p.upstream_ref is not distinct from e.upstream_ref))
       order by p.seq desc
       limit 1) prev on true
 where e.event_type in ('change_requested', 'step_attempted')
   and jsonb_typeof(f.value) = 'object'
union all
select e.id as event_id, e.occurred_at, e.user_id, e.event_type, e.outcome, e.caller,
       e.caller_addr, e.request_id, e.change_id, e.step_no, e.target, e.upstream_ref,
       f.field,
       case when e."values" -> 'old' -> f.field is null or e."values" -> 'old' -> f.field = 'null'
            then null else e."values" -> 'old' ->> f.field end as old_value_masked,
       case when e."values" -> 'new' -> f.field = 'null' then null
            else e."values" -> 'new' ->> f.field end as new_value_masked,
       null::text as old_hmac,
       null::text as new_hmac,
       e.hmac_key_id,
       null::text as old_hmac_key_id
  from audit_events e
 cross join lateral unnest(e.fields) f(field)
 where e.event_type = 'links_updated';

-- 7. Encoding v3 in SQL too, for auditors who check a row in the database (the gateway and
--    `audit verify` compute it in Rust, audit/verify.rs): v2's fields without the id.
create function audit_event_hash_v3(p_occurred_at timestamptz, p_user_id text, p_seq bigint,
                                    p_prev_hash text, p_event_type text, p_caller text,
                                    p_outcome text, p_change_id uuid, p_step_no int, p_target text,
                                    p_upstream_ref text, p_fields text[], p_values jsonb,
                                    p_hmac_key_id text, p_error_code text, p_request_id text,
                                    p_trace_id text, p_caller_addr text, p_actor jsonb)
returns text language sql stable
as $$
select encode(sha256(convert_to(
       'pgw-audit-v3'
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

create or replace function audit_event_row_hash(e audit_events) returns text
language sql stable
as $$
select case when e.format = 3
            then audit_event_hash_v3(e.occurred_at, e.user_id, e.seq, e.prev_hash, e.event_type,
                                     e.caller, e.outcome, e.change_id, e.step_no, e.target,
                                     e.upstream_ref, e.fields, e."values", e.hmac_key_id,
                                     e.error_code, e.request_id, e.trace_id, e.caller_addr, e.actor)
            when e.actor is null
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
