-- Audit trail, part 2: audit_events becomes a month-partitioned, append-only, hash-chained table.
--
-- Every event carries a per-user sequence number `seq`, the previous event's hash `prev_hash` and
-- its own `hash` = hex(sha256(canonical encoding of its content and prev_hash)). A BEFORE INSERT
-- trigger assigns them under a row lock on the user's chain head (audit_chain_heads), the last lock
-- any audit-writing transaction takes. The same trigger fills in the old value of each field (the
-- last value the gateway applied) so the application's INSERT statements stay unchanged.
-- The canonical encoding is documented in docs/auditing.md and re-implemented independently by
-- `profile-gateway audit verify` (src/audit/verify.rs).

-- 1. Keep the table of migration 0001 (and any rows it holds) aside under another name.
alter table audit_events rename to audit_events_0001;
alter index audit_events_pkey rename to audit_events_0001_pkey;
alter index audit_events_by_user rename to audit_events_0001_by_user;
alter index audit_events_by_change rename to audit_events_0001_by_change;
alter sequence audit_events_id_seq rename to audit_events_0001_id_seq;

-- 2. The partitioned table: same columns, plus the chain.
create table audit_events (
    id           bigint generated always as identity,
    occurred_at  timestamptz not null default now(),
    user_id      text not null,
    event_type   text not null,
    caller       text not null,
    outcome      text not null,
    change_id    uuid,
    step_no      int,
    target       text,
    upstream_ref text,
    fields       text[] not null default '{}',
    -- Masked values and keyed hashes only:
    -- {"mobile_number": {"new": "******7766", "new_hmac": "...", "old": "******1234", "old_hmac": "..."}}.
    "values"     jsonb not null default '{}',
    hmac_key_id  text,
    error_code   text,
    request_id   text,
    trace_id     text,
    caller_addr  text,
    -- Set by the trigger, whatever the INSERT says.
    seq          bigint not null,
    prev_hash    text not null,
    hash         text not null,
    primary key (id, occurred_at)
) partition by range (occurred_at);

create index audit_events_by_user on audit_events (user_id, seq);
create index audit_events_by_change on audit_events (change_id);
create index audit_events_by_time on audit_events (occurred_at);

-- The head of each user's chain: its last seq and hash. Its row lock serializes a user's events.
create table audit_chain_heads (
    user_id    text primary key,
    seq        bigint not null,
    hash       text not null,
    updated_at timestamptz not null default now()
);

-- Where a chain resumes after the partition holding its older events was detached (retention):
-- the last seq and hash each user had in that partition.
create table audit_chain_anchors (
    user_id        text not null,
    seq            bigint not null,
    hash           text not null,
    partition_name text not null,
    range_end      timestamptz not null,
    recorded_at    timestamptz not null default now(),
    primary key (user_id, seq)
);

-- 3. The canonical encoding. Each field is `<octet length>:<utf-8 bytes>`, or `~` for NULL, in a
-- fixed order after the tag `pgw-audit-v1`; arrays are their element count followed by their
-- elements; occurred_at is microseconds since the Unix epoch; values is jsonb's text form.
create function audit_f(v text) returns text
language sql immutable
as $$ select case when v is null then '~' else octet_length(v)::text || ':' || v end $$;

create function audit_event_hash(
    p_id bigint, p_occurred_at timestamptz, p_user_id text, p_seq bigint, p_prev_hash text,
    p_event_type text, p_caller text, p_outcome text, p_change_id uuid, p_step_no int,
    p_target text, p_upstream_ref text, p_fields text[], p_values jsonb, p_hmac_key_id text,
    p_error_code text, p_request_id text, p_trace_id text, p_caller_addr text
) returns text
language sql immutable
as $$
select encode(sha256(convert_to(
       'pgw-audit-v1'
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
    || case when p_fields is null then '~'
            else audit_f(cardinality(p_fields)::text)
                 || coalesce((select string_agg(audit_f(f), '' order by o)
                                from unnest(p_fields) with ordinality as u(f, o)), '')
       end
    || audit_f(p_values::text)
    || audit_f(p_hmac_key_id)
    || audit_f(p_error_code)
    || audit_f(p_request_id)
    || audit_f(p_trace_id)
    || audit_f(p_caller_addr),
    'UTF8')), 'hex')
$$;

-- 4. The chaining trigger. SECURITY DEFINER: the gateway's role has no privilege on the chain heads.
create function audit_events_chain() returns trigger
language plpgsql security definer set search_path = public, pg_temp
as $$
declare
    head record;
    k text;
    v jsonb;
    prev jsonb;
    prev_key text;
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

    -- Old values: for each masked field without one, the last value the gateway applied for this
    -- user (at the same target and upstream object for a step; at any target for a request).
    if new.event_type in ('change_requested', 'step_attempted')
       and jsonb_typeof(new."values") = 'object' then
        for k, v in select e.key, e.value from jsonb_each(new."values") as e loop
            continue when jsonb_typeof(v) <> 'object' or not (v ? 'new') or v ? 'old';
            select e."values" -> k, e.hmac_key_id into prev, prev_key
              from audit_events e
             where e.user_id = new.user_id
               and e.event_type = 'step_attempted'
               and e.outcome = 'applied'
               and e."values" ? k
               and (new.event_type = 'change_requested'
                    or (e.target is not distinct from new.target
                        and e.upstream_ref is not distinct from new.upstream_ref))
             order by e.seq desc
             limit 1;
            continue when prev is null or not (prev ? 'new');
            v := v || jsonb_build_object('old', prev -> 'new');
            if prev ? 'new_hmac' then
                v := v || jsonb_build_object('old_hmac', prev -> 'new_hmac');
                if prev_key is distinct from new.hmac_key_id then
                    v := v || jsonb_build_object('old_hmac_key_id', prev_key);
                end if;
            end if;
            new."values" := jsonb_set(new."values", array[k], v);
        end loop;
    end if;

    new.seq := head.seq + 1;
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

-- 5. Append-only: UPDATE, DELETE and TRUNCATE are rejected, even in replica mode (ENABLE ALWAYS).
create function audit_reject_change() returns trigger
language plpgsql
as $$
begin
    raise exception 'audit table %.% is append-only: % rejected', tg_table_schema, tg_table_name, tg_op
        using errcode = 'insufficient_privilege';
end
$$;

-- Chain heads move only inside the chaining trigger (trigger depth 2), never by a direct UPDATE.
create function audit_heads_guard() returns trigger
language plpgsql
as $$
begin
    if tg_op = 'UPDATE' and pg_trigger_depth() > 1 then
        return new;
    end if;
    raise exception 'audit_chain_heads moves only with audit_events: % rejected', tg_op
        using errcode = 'insufficient_privilege';
end
$$;

create trigger audit_events_chain before insert on audit_events
    for each row execute function audit_events_chain();
create trigger audit_events_no_update before update or delete on audit_events
    for each row execute function audit_reject_change();
create trigger audit_events_no_truncate before truncate on audit_events
    for each statement execute function audit_reject_change();
alter table audit_events enable always trigger audit_events_chain;
alter table audit_events enable always trigger audit_events_no_update;
alter table audit_events enable always trigger audit_events_no_truncate;

create trigger audit_chain_heads_guard before update or delete on audit_chain_heads
    for each row execute function audit_heads_guard();
create trigger audit_chain_heads_no_truncate before truncate on audit_chain_heads
    for each statement execute function audit_reject_change();
alter table audit_chain_heads enable always trigger audit_chain_heads_guard;
alter table audit_chain_heads enable always trigger audit_chain_heads_no_truncate;

create trigger audit_chain_anchors_no_update before update or delete on audit_chain_anchors
    for each row execute function audit_reject_change();
create trigger audit_chain_anchors_no_truncate before truncate on audit_chain_anchors
    for each statement execute function audit_reject_change();
alter table audit_chain_anchors enable always trigger audit_chain_anchors_no_update;
alter table audit_chain_anchors enable always trigger audit_chain_anchors_no_truncate;

-- 6. Partitions: one per calendar month (UTC), named audit_events_YYYY_MM.
create function audit_partition_name(month_start date) returns text
language sql immutable
as $$ select 'audit_events_' || to_char(month_start, 'YYYY_MM') $$;

-- Creates the partition of the month holding `month_start` unless it exists; returns whether it did.
create function audit_create_partition(month_start date) returns boolean
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

-- Creates the partitions of the current month and of the `months_ahead` months after it; returns
-- how many it created. The gateway calls it at start and daily (audit::maintain).
create function audit_ensure_partitions(months_ahead int default 2) returns int
language plpgsql security definer set search_path = public, pg_temp
as $$
declare
    created int := 0;
    this_month date := date_trunc('month', now() at time zone 'UTC')::date;
begin
    for i in 0 .. greatest(months_ahead, 0) loop
        if audit_create_partition((this_month + make_interval(months => i))::date) then
            created := created + 1;
        end if;
    end loop;
    return created;
end
$$;

-- Detaches every partition whose whole month is older than `retention_months` months, after
-- recording where each user's chain resumes (audit_chain_anchors), moves it to the audit_archive
-- schema (to be archived and dropped by an operator) and records the detach as a
-- `partition_detached` event of the user `_system`. Returns the detached partitions' names.
create function audit_detach_expired(retention_months int) returns setof text
language plpgsql security definer set search_path = public, pg_temp
as $$
declare
    p record;
    cutoff timestamptz := now() - make_interval(months => retention_months);
    m date;
    range_start timestamptz;
    range_end timestamptz;
    n bigint;
    anchors bigint;
    anchors_sha256 text;
begin
    if retention_months is null or retention_months < 1 then
        raise exception 'retention_months must be at least 1';
    end if;
    for p in
        select c.relname
          from pg_inherits i join pg_class c on c.oid = i.inhrelid
         where i.inhparent = 'audit_events'::regclass
           and c.relname ~ '^audit_events_[0-9]{4}_[0-9]{2}$'
         order by c.relname
    loop
        m := to_date(substr(p.relname, 14), 'YYYY_MM');
        range_start := m::timestamp at time zone 'UTC';
        range_end := (m + interval '1 month')::timestamp at time zone 'UTC';
        continue when range_end > cutoff;
        execute format('select count(*) from %I', p.relname) into n;
        execute format(
            'insert into audit_chain_anchors (user_id, seq, hash, partition_name, range_end)
             select distinct on (user_id) user_id, seq, hash, %L, %L
               from %I order by user_id, seq desc
             on conflict (user_id, seq) do nothing',
            p.relname, range_end, p.relname);
        select count(*),
               encode(sha256(convert_to(coalesce(string_agg(
                   a.user_id || E'\t' || a.seq || E'\t' || a.hash || E'\n', ''
                   order by a.user_id collate "C"), ''), 'UTF8')), 'hex')
          into anchors, anchors_sha256
          from audit_chain_anchors a where a.partition_name = p.relname;
        execute format('alter table audit_events detach partition %I', p.relname);
        execute format('alter table %I set schema audit_archive', p.relname);
        -- Detaching drops the row triggers cloned from the parent: the archived table stays
        -- append-only with its own.
        execute format(
            'create trigger audit_events_no_update before update or delete on audit_archive.%I
               for each row execute function public.audit_reject_change()', p.relname);
        execute format('alter table audit_archive.%I enable always trigger audit_events_no_update',
                       p.relname);
        execute format('revoke all on table audit_archive.%I from public, profile_gateway_app',
                       p.relname);
        execute format('grant select on audit_archive.%I to profile_gateway_auditor', p.relname);
        insert into audit_events (user_id, event_type, caller, outcome, "values")
        values ('_system', 'partition_detached', session_user, 'detached',
                jsonb_build_object(
                    'partition', 'audit_archive.' || p.relname,
                    'range_start', to_char(range_start at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                    'range_end', to_char(range_end at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                    'rows', n, 'anchors', anchors, 'anchors_sha256', anchors_sha256,
                    'retention_months', retention_months));
        return next p.relname;
    end loop;
end
$$;

-- 7. Partitions for the rows of 0001 (if any), this month and the next two; then copy the rows in
-- their original order through the chaining trigger (which keeps their occurred_at: the migration
-- runs as the table owner), and drop the old table.
do $$
begin
    perform audit_create_partition(m)
       from (select distinct date_trunc('month', occurred_at at time zone 'UTC')::date as m
               from audit_events_0001) as months;
    perform audit_ensure_partitions(2);
    perform setval(pg_get_serial_sequence('audit_events', 'id'),
                   coalesce((select max(id) from audit_events_0001), 0) + 1, false);
end
$$;

insert into audit_events (id, occurred_at, user_id, event_type, caller, outcome, change_id, step_no,
                          target, upstream_ref, fields, "values", hmac_key_id, error_code,
                          request_id, trace_id, caller_addr)
overriding system value
select id, occurred_at, user_id, event_type, caller, outcome, change_id, step_no, target,
       upstream_ref, fields, "values", hmac_key_id, error_code, request_id, trace_id, caller_addr
  from audit_events_0001
 order by id;

drop table audit_events_0001;
