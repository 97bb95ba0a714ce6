-- The current schema: pg_dump --schema-only of a database built from migrations/, written by
-- scripts/sqlx-prepare and checked by scripts/check-schema. Do not edit; change a migration.
-- Left out: the monthly partitions of audit_events (audit_events_YYYY_MM), made at migration time.

--
-- PostgreSQL database dump
--

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: audit_archive; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA audit_archive;

--
-- Name: pgcrypto; Type: EXTENSION; Schema: -; Owner: -
--

CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA public;

--
-- Name: EXTENSION pgcrypto; Type: COMMENT; Schema: -; Owner: -
--

COMMENT ON EXTENSION pgcrypto IS 'cryptographic functions';

--
-- Name: audit_event_input; Type: TYPE; Schema: public; Owner: -
--

CREATE TYPE public.audit_event_input AS (
	user_id text,
	event_type text,
	caller text,
	outcome text,
	change_id uuid,
	step_no integer,
	target text,
	upstream_ref text,
	fields text[],
	"values" jsonb,
	hmac_key_id text,
	error_code text,
	request_id text,
	trace_id text,
	caller_addr text
);

--
-- Name: audit_event_input_v2; Type: TYPE; Schema: public; Owner: -
--

CREATE TYPE public.audit_event_input_v2 AS (
	user_id text,
	event_type text,
	caller text,
	outcome text,
	change_id uuid,
	step_no integer,
	target text,
	upstream_ref text,
	fields text[],
	"values" jsonb,
	hmac_key_id text,
	error_code text,
	request_id text,
	trace_id text,
	caller_addr text,
	actor jsonb
);

--
-- Name: audit_append(public.audit_event_input[]); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_append(p_events public.audit_event_input[]) RETURNS bigint
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
select audit_append(array(
    select row(e.user_id, e.event_type, e.caller, e.outcome, e.change_id, e.step_no, e.target,
               e.upstream_ref, e.fields, e."values", e.hmac_key_id, e.error_code, e.request_id,
               e.trace_id, e.caller_addr, null::jsonb)::audit_event_input_v2
      from unnest(p_events) with ordinality as e(user_id, event_type, caller, outcome, change_id,
           step_no, target, upstream_ref, fields, "values", hmac_key_id, error_code, request_id,
           trace_id, caller_addr, o)
     order by e.o))
$$;

--
-- Name: audit_append(public.audit_event_input_v2[]); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_append(p_events public.audit_event_input_v2[]) RETURNS bigint
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    raise exception 'audit_append() is retired by migration 20261202000200: this gateway build is older than the database; deploy the build that chains its own events'
        using errcode = 'feature_not_supported';
end
$$;

--
-- Name: audit_create_partition(date); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_create_partition(month_start date) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

--
-- Name: audit_detach_expired(integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_detach_expired(retention_months integer) RETURNS SETOF text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
begin
    if retention_months is null or retention_months < 12 then
        raise exception 'audit retention must be at least 12 months (PCI DSS 10.5.1), not %', retention_months
            using errcode = 'insufficient_privilege';
    end if;
    return query select * from audit_detach_expired_unchecked(retention_months);
end
$$;

--
-- Name: audit_detach_expired_unchecked(integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_detach_expired_unchecked(retention_months integer) RETURNS SETOF text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $_$
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
$_$;

--
-- Name: audit_ensure_partitions(integer); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_ensure_partitions(months_ahead integer DEFAULT 2) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

--
-- Name: audit_event_hash(bigint, timestamp with time zone, text, bigint, text, text, text, text, uuid, integer, text, text, text[], jsonb, text, text, text, text, text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_event_hash(p_id bigint, p_occurred_at timestamp with time zone, p_user_id text, p_seq bigint, p_prev_hash text, p_event_type text, p_caller text, p_outcome text, p_change_id uuid, p_step_no integer, p_target text, p_upstream_ref text, p_fields text[], p_values jsonb, p_hmac_key_id text, p_error_code text, p_request_id text, p_trace_id text, p_caller_addr text) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
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

--
-- Name: audit_event_hash_v2(bigint, timestamp with time zone, text, bigint, text, text, text, text, uuid, integer, text, text, text[], jsonb, text, text, text, text, text, jsonb); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_event_hash_v2(p_id bigint, p_occurred_at timestamp with time zone, p_user_id text, p_seq bigint, p_prev_hash text, p_event_type text, p_caller text, p_outcome text, p_change_id uuid, p_step_no integer, p_target text, p_upstream_ref text, p_fields text[], p_values jsonb, p_hmac_key_id text, p_error_code text, p_request_id text, p_trace_id text, p_caller_addr text, p_actor jsonb) RETURNS text
    LANGUAGE sql STABLE
    AS $$
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

--
-- Name: audit_event_hash_v3(timestamp with time zone, text, bigint, text, text, text, text, uuid, integer, text, text, text[], jsonb, text, text, text, text, text, jsonb); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_event_hash_v3(p_occurred_at timestamp with time zone, p_user_id text, p_seq bigint, p_prev_hash text, p_event_type text, p_caller text, p_outcome text, p_change_id uuid, p_step_no integer, p_target text, p_upstream_ref text, p_fields text[], p_values jsonb, p_hmac_key_id text, p_error_code text, p_request_id text, p_trace_id text, p_caller_addr text, p_actor jsonb) RETURNS text
    LANGUAGE sql STABLE
    AS $$
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

SET default_tablespace = '';

--
-- Name: audit_events; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.audit_events (
    id bigint NOT NULL,
    occurred_at timestamp with time zone DEFAULT now() NOT NULL,
    user_id text NOT NULL,
    event_type text NOT NULL,
    caller text NOT NULL,
    outcome text NOT NULL,
    change_id uuid,
    step_no integer,
    target text,
    upstream_ref text,
    fields text[] DEFAULT '{}'::text[] NOT NULL,
    "values" jsonb DEFAULT '{}'::jsonb NOT NULL,
    hmac_key_id text,
    error_code text,
    request_id text,
    trace_id text,
    caller_addr text,
    seq bigint NOT NULL,
    prev_hash text NOT NULL,
    hash text NOT NULL,
    actor jsonb,
    format smallint
)
PARTITION BY RANGE (occurred_at);

--
-- Name: audit_event_row_hash(public.audit_events); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_event_row_hash(e public.audit_events) RETURNS text
    LANGUAGE sql STABLE
    AS $$
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

--
-- Name: audit_events_chain(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_events_chain() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

--
-- Name: audit_f(text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_f(v text) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$ select case when v is null then '~' else octet_length(v)::text || ':' || v end $$;

--
-- Name: audit_heads_guard(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_heads_guard() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    if tg_op = 'UPDATE' and pg_trigger_depth() > 1 then
        return new;
    end if;
    raise exception 'audit_chain_heads moves only with audit_events: % rejected', tg_op
        using errcode = 'insufficient_privilege';
end
$$;

--
-- Name: audit_partition_name(date); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_partition_name(month_start date) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$ select 'audit_events_' || to_char(month_start, 'YYYY_MM') $$;

--
-- Name: audit_pii_hmac(text, text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_pii_hmac(value text, key_base64 text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT
    SET search_path TO 'public', 'pg_temp'
    AS $$ select encode(hmac(convert_to(value, 'UTF8'), decode(key_base64, 'base64'), 'sha256'), 'hex') $$;

--
-- Name: audit_pii_normalize(text, text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_pii_normalize(field text, value text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT
    AS $_$
select case
    when field = 'email_address' and position('@' in value) > 0 then
        regexp_replace(value, '@([^@]*)$', '') || '@' || lower(regexp_replace(value, '^.*@', ''))
    when field = 'vpa' then lower(value)
    else value
end
$_$;

--
-- Name: audit_record_maintenance(integer, text[]); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_record_maintenance(created integer, detached text[]) RETURNS void
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    insert into audit_events (user_id, event_type, caller, outcome, "values")
    values ('_system', 'maintenance_ran', session_user, 'ok',
            jsonb_build_object('partitions_created', created, 'detached', to_jsonb(coalesce(detached, '{}'))))
$$;

--
-- Name: audit_record_read(text, text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_record_read(command text, subject_user text) RETURNS void
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    insert into audit_events (user_id, event_type, caller, outcome, "values")
    values ('_system', 'audit_read', session_user, 'read',
            jsonb_strip_nulls(jsonb_build_object('command', command, 'user', subject_user)))
$$;

--
-- Name: audit_reject_change(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.audit_reject_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    raise exception 'audit table %.% is append-only: % rejected', tg_table_schema, tg_table_name, tg_op
        using errcode = 'insufficient_privilege';
end
$$;

--
-- Name: pgw_abort(text); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.pgw_abort(reason text) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
begin
    raise exception 'profile-gateway: %', reason using errcode = 'serialization_failure';
end
$$;

--
-- Name: profile_links_take_chain_head(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.profile_links_take_chain_head() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

SET default_table_access_method = heap;

--
-- Name: audit_chain_anchors; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.audit_chain_anchors (
    user_id text NOT NULL,
    seq bigint NOT NULL,
    hash text NOT NULL,
    partition_name text NOT NULL,
    range_end timestamp with time zone NOT NULL,
    recorded_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: audit_chain_heads; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.audit_chain_heads (
    user_id text NOT NULL,
    seq bigint NOT NULL,
    hash text NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    last_values jsonb DEFAULT '{}'::jsonb NOT NULL,
    moved boolean DEFAULT false NOT NULL
)
WITH (fillfactor='50');

--
-- Name: audit_checkpoint_witnessed; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.audit_checkpoint_witnessed (
    seq bigint NOT NULL,
    witnessed_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: audit_checkpoints; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.audit_checkpoints (
    seq bigint NOT NULL,
    slot bigint,
    taken_at timestamp with time zone NOT NULL,
    note text NOT NULL,
    leaves text NOT NULL,
    taken_by text DEFAULT SESSION_USER NOT NULL
);

--
-- Name: audit_events_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

ALTER TABLE public.audit_events ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.audit_events_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: audit_step_attempt_rows; Type: VIEW; Schema: public; Owner: -
--

CREATE VIEW public.audit_step_attempt_rows AS
 SELECT e.id AS event_id,
    e.event_type,
    e.occurred_at,
    e.user_id,
    e.seq,
    e.caller,
    e.caller_addr,
    e.request_id,
    e.trace_id,
    e.change_id,
    e.step_no,
    e.target,
    e.upstream_ref,
    e.fields,
    e.outcome AS status,
    e.error_code,
    NULL::boolean AS confirmed_by_read_back,
    e."values",
    e.hmac_key_id
   FROM public.audit_events e
  WHERE (e.event_type = 'step_attempted'::text)
UNION ALL
 SELECT e.id AS event_id,
    e.event_type,
    e.occurred_at,
    e.user_id,
    e.seq,
    e.caller,
    e.caller_addr,
    e.request_id,
    e.trace_id,
    e.change_id,
        CASE
            WHEN ((s.v ->> 'step_no'::text) ~ '^[0-9]{1,9}$'::text) THEN ((s.v ->> 'step_no'::text))::integer
            ELSE NULL::integer
        END AS step_no,
        CASE
            WHEN (jsonb_typeof((s.v -> 'target'::text)) = 'string'::text) THEN (s.v ->> 'target'::text)
            ELSE NULL::text
        END AS target,
        CASE
            WHEN (jsonb_typeof((s.v -> 'upstream_ref'::text)) = 'string'::text) THEN (s.v ->> 'upstream_ref'::text)
            ELSE NULL::text
        END AS upstream_ref,
    f.fields,
        CASE
            WHEN (jsonb_typeof((s.v -> 'status'::text)) = 'string'::text) THEN (s.v ->> 'status'::text)
            ELSE NULL::text
        END AS status,
        CASE
            WHEN (jsonb_typeof((s.v -> 'error_code'::text)) = 'string'::text) THEN (s.v ->> 'error_code'::text)
            ELSE NULL::text
        END AS error_code,
        CASE
            WHEN (jsonb_typeof((s.v -> 'confirmed_by_read_back'::text)) = 'boolean'::text) THEN ((s.v ->> 'confirmed_by_read_back'::text))::boolean
            ELSE NULL::boolean
        END AS confirmed_by_read_back,
    COALESCE(( SELECT jsonb_object_agg(k.k, (r."values" -> k.k)) AS jsonb_object_agg
           FROM unnest(f.fields) k(k)
          WHERE (jsonb_typeof((r."values" -> k.k)) = 'object'::text)), '{}'::jsonb) AS "values",
    r.hmac_key_id
   FROM (((public.audit_events e
     CROSS JOIN LATERAL jsonb_array_elements(
        CASE
            WHEN (jsonb_typeof((e."values" -> 'steps'::text)) = 'array'::text) THEN (e."values" -> 'steps'::text)
            ELSE '[]'::jsonb
        END) s(v))
     CROSS JOIN LATERAL ( SELECT ARRAY( SELECT x.value AS x
                   FROM jsonb_array_elements_text(
                        CASE
                            WHEN (jsonb_typeof((s.v -> 'fields'::text)) = 'array'::text) THEN (s.v -> 'fields'::text)
                            ELSE '[]'::jsonb
                        END) x(value)) AS fields) f)
     LEFT JOIN LATERAL ( SELECT q."values",
            q.hmac_key_id
           FROM public.audit_events q
          WHERE ((q.user_id = e.user_id) AND (q.change_id = e.change_id) AND (q.event_type = 'change_requested'::text))
          ORDER BY q.seq
         LIMIT 1) r ON (true))
  WHERE ((e.event_type = ANY (ARRAY['round'::text, 'change_completed'::text])) AND (jsonb_typeof(s.v) = 'object'::text));

--
-- Name: audit_field_changes; Type: VIEW; Schema: public; Owner: -
--

CREATE VIEW public.audit_field_changes AS
 SELECT e.id AS event_id,
    e.occurred_at,
    e.user_id,
    e.event_type,
    e.outcome,
    e.caller,
    e.caller_addr,
    e.request_id,
    e.change_id,
    e.step_no,
    e.target,
    e.upstream_ref,
    f.key AS field,
    COALESCE((f.value ->> 'old'::text), (prev.v ->> 'new'::text)) AS old_value_masked,
    (f.value ->> 'new'::text) AS new_value_masked,
    COALESCE((f.value ->> 'old_hmac'::text), (prev.v ->> 'new_hmac'::text)) AS old_hmac,
    (f.value ->> 'new_hmac'::text) AS new_hmac,
    e.hmac_key_id,
        CASE
            WHEN (f.value ? 'old_hmac'::text) THEN COALESCE((f.value ->> 'old_hmac_key_id'::text), e.hmac_key_id)
            WHEN (prev.v ? 'new_hmac'::text) THEN prev.k
            ELSE NULL::text
        END AS old_hmac_key_id
   FROM ((( SELECT e_1.id,
            e_1.occurred_at,
            e_1.user_id,
            e_1.seq,
            e_1.event_type,
            e_1.outcome,
            e_1.caller,
            e_1.caller_addr,
            e_1.request_id,
            e_1.change_id,
            e_1.step_no,
            e_1.target,
            e_1.upstream_ref,
            e_1."values",
            e_1.hmac_key_id
           FROM public.audit_events e_1
          WHERE (e_1.event_type = 'change_requested'::text)
        UNION ALL
         SELECT a.event_id,
            a.occurred_at,
            a.user_id,
            a.seq,
            a.event_type,
            a.status,
            a.caller,
            a.caller_addr,
            a.request_id,
            a.change_id,
            a.step_no,
            a.target,
            a.upstream_ref,
            a."values",
            a.hmac_key_id
           FROM public.audit_step_attempt_rows a) e
     CROSS JOIN LATERAL jsonb_each(
        CASE
            WHEN (jsonb_typeof(e."values") = 'object'::text) THEN e."values"
            ELSE '{}'::jsonb
        END) f(key, value))
     LEFT JOIN LATERAL ( SELECT x.v,
            x.k
           FROM (( SELECT p.seq,
                    (p."values" -> f.key) AS v,
                    p.hmac_key_id AS k
                   FROM public.audit_events p
                  WHERE ((p.user_id = e.user_id) AND (p.seq < e.seq) AND (p.event_type = 'step_attempted'::text) AND (p.outcome = 'applied'::text) AND ((p."values" -> f.key) ? 'new'::text) AND ((e.event_type = 'change_requested'::text) OR ((NOT (p.target IS DISTINCT FROM e.target)) AND (NOT (p.upstream_ref IS DISTINCT FROM e.upstream_ref)))))
                  ORDER BY p.seq DESC
                 LIMIT 1)
                UNION ALL
                ( SELECT p.seq,
                    (r."values" -> f.key),
                    r.hmac_key_id
                   FROM (public.audit_events p
                     JOIN LATERAL ( SELECT r_1."values",
                            r_1.hmac_key_id
                           FROM public.audit_events r_1
                          WHERE ((r_1.user_id = p.user_id) AND (r_1.change_id = p.change_id) AND (r_1.event_type = 'change_requested'::text))
                          ORDER BY r_1.seq
                         LIMIT 1) r ON (true))
                  WHERE ((p.user_id = e.user_id) AND (p.seq < e.seq) AND (p.event_type = ANY (ARRAY['round'::text, 'change_completed'::text])) AND (jsonb_typeof((p."values" -> 'steps'::text)) = 'array'::text) AND (EXISTS ( SELECT 1
                           FROM jsonb_array_elements((p."values" -> 'steps'::text)) s(v)
                          WHERE ((jsonb_typeof(s.v) = 'object'::text) AND ((s.v ->> 'status'::text) = 'applied'::text) AND (jsonb_typeof((s.v -> 'fields'::text)) = 'array'::text) AND ((s.v -> 'fields'::text) ? f.key) AND ((e.event_type = 'change_requested'::text) OR ((NOT ((s.v ->> 'target'::text) IS DISTINCT FROM e.target)) AND (NOT ((s.v ->> 'upstream_ref'::text) IS DISTINCT FROM e.upstream_ref))))))) AND ((r."values" -> f.key) ? 'new'::text))
                  ORDER BY p.seq DESC
                 LIMIT 1)) x
          WHERE (NOT (f.value ? 'old'::text))
          ORDER BY x.seq DESC
         LIMIT 1) prev ON (true))
  WHERE (jsonb_typeof(f.value) = 'object'::text)
UNION ALL
 SELECT e.id AS event_id,
    e.occurred_at,
    e.user_id,
    e.event_type,
    e.outcome,
    e.caller,
    e.caller_addr,
    e.request_id,
    e.change_id,
    e.step_no,
    e.target,
    e.upstream_ref,
    f.field,
        CASE
            WHEN ((((e."values" -> 'old'::text) -> f.field) IS NULL) OR (((e."values" -> 'old'::text) -> f.field) = 'null'::jsonb)) THEN NULL::text
            ELSE ((e."values" -> 'old'::text) ->> f.field)
        END AS old_value_masked,
        CASE
            WHEN (((e."values" -> 'new'::text) -> f.field) = 'null'::jsonb) THEN NULL::text
            ELSE ((e."values" -> 'new'::text) ->> f.field)
        END AS new_value_masked,
    NULL::text AS old_hmac,
    NULL::text AS new_hmac,
    e.hmac_key_id,
    NULL::text AS old_hmac_key_id
   FROM (public.audit_events e
     CROSS JOIN LATERAL unnest(e.fields) f(field))
  WHERE (e.event_type = 'links_updated'::text);

--
-- Name: profile_links; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.profile_links (
    user_id text NOT NULL,
    last_change_seq bigint DEFAULT 0 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_seq bigint DEFAULT 0 NOT NULL,
    chain_seq bigint DEFAULT 0 NOT NULL,
    chain_hash text DEFAULT repeat('0'::text, 64) NOT NULL
)
WITH (fillfactor='70');

--
-- Name: audit_heads; Type: VIEW; Schema: public; Owner: -
--

CREATE VIEW public.audit_heads AS
 SELECT p.user_id,
    p.chain_seq AS seq,
    p.chain_hash AS hash
   FROM public.profile_links p
  WHERE (p.chain_seq > 0)
UNION ALL
 SELECT h.user_id,
    h.seq,
    h.hash
   FROM public.audit_chain_heads h
  WHERE ((NOT h.moved) AND (h.seq > 0));

--
-- Name: changes; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.changes (
    id uuid NOT NULL,
    user_id text NOT NULL,
    user_seq bigint NOT NULL,
    caller text NOT NULL,
    request_id text NOT NULL,
    trace_id text,
    caller_addr text,
    fields text[] NOT NULL,
    status text DEFAULT 'pending'::text NOT NULL,
    payload_key_id text,
    payload_enc bytea,
    lease_owner text,
    lease_expires_at timestamp with time zone,
    fence bigint DEFAULT 1 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone,
    payload_expires_at timestamp with time zone,
    actor jsonb,
    idem_key text,
    idem_fingerprint bytea,
    idem_in_flight_until timestamp with time zone,
    idem_expires_at timestamp with time zone,
    steps jsonb DEFAULT '{}'::jsonb NOT NULL,
    CONSTRAINT changes_check CHECK (((status = 'pending'::text) = (finished_at IS NULL))),
    CONSTRAINT changes_idem_key_whole CHECK ((((idem_key IS NULL) = (idem_fingerprint IS NULL)) AND ((idem_key IS NULL) = (idem_expires_at IS NULL)))),
    CONSTRAINT changes_payload_only_while_needed CHECK (((payload_enc IS NULL) OR (status <> 'applied'::text))),
    CONSTRAINT changes_status_check CHECK ((status = ANY (ARRAY['pending'::text, 'applied'::text, 'partially_applied'::text, 'failed'::text]))),
    CONSTRAINT changes_steps_object CHECK ((jsonb_typeof(steps) = 'object'::text))
);

--
-- Name: change_steps; Type: VIEW; Schema: public; Owner: -
--

CREATE VIEW public.change_steps AS
 SELECT c.id AS change_id,
        CASE
            WHEN (s.k ~ '^[0-9]{1,9}$'::text) THEN (s.k)::integer
            ELSE NULL::integer
        END AS step_no,
        CASE
            WHEN (jsonb_typeof((s.v -> 'target'::text)) = 'string'::text) THEN (s.v ->> 'target'::text)
            ELSE NULL::text
        END AS target,
        CASE
            WHEN (jsonb_typeof((s.v -> 'upstream_ref'::text)) = 'string'::text) THEN (s.v ->> 'upstream_ref'::text)
            ELSE NULL::text
        END AS upstream_ref,
    ARRAY( SELECT jsonb_array_elements_text(
                CASE
                    WHEN (jsonb_typeof((s.v -> 'fields'::text)) = 'array'::text) THEN (s.v -> 'fields'::text)
                    ELSE '[]'::jsonb
                END) AS jsonb_array_elements_text) AS fields,
        CASE
            WHEN (jsonb_typeof((s.v -> 'status'::text)) = 'string'::text) THEN (s.v ->> 'status'::text)
            ELSE NULL::text
        END AS status,
        CASE
            WHEN ((s.v ->> 'attempts'::text) ~ '^[0-9]{1,9}$'::text) THEN ((s.v ->> 'attempts'::text))::integer
            ELSE 0
        END AS attempts,
        CASE
            WHEN (jsonb_typeof((s.v -> 'error_code'::text)) = 'string'::text) THEN (s.v ->> 'error_code'::text)
            ELSE NULL::text
        END AS error_code,
        CASE
            WHEN (jsonb_typeof((s.v -> 'error_retryable'::text)) = 'boolean'::text) THEN ((s.v ->> 'error_retryable'::text))::boolean
            ELSE NULL::boolean
        END AS error_retryable,
        CASE
            WHEN ((s.v ->> 'upstream_status'::text) ~ '^[0-9]{1,9}$'::text) THEN ((s.v ->> 'upstream_status'::text))::integer
            ELSE NULL::integer
        END AS upstream_status,
        CASE
            WHEN (jsonb_typeof((s.v -> 'upstream_code'::text)) = 'string'::text) THEN (s.v ->> 'upstream_code'::text)
            ELSE NULL::text
        END AS upstream_code,
        CASE
            WHEN (jsonb_typeof((s.v -> 'error_message'::text)) = 'string'::text) THEN (s.v ->> 'error_message'::text)
            ELSE NULL::text
        END AS error_message,
    c.updated_at,
    COALESCE(
        CASE
            WHEN (jsonb_typeof((s.v -> 'confirmed_by_read_back'::text)) = 'boolean'::text) THEN ((s.v ->> 'confirmed_by_read_back'::text))::boolean
            ELSE NULL::boolean
        END, false) AS confirmed_by_read_back
   FROM (public.changes c
     CROSS JOIN LATERAL jsonb_each(c.steps) s(k, v))
  WHERE ((s.k ~ '^[0-9]{1,9}$'::text) AND (jsonb_typeof(s.v) = 'object'::text) AND ((s.v ->> 'step_no'::text) = s.k));

--
-- Name: audit_log; Type: VIEW; Schema: public; Owner: -
--

CREATE VIEW public.audit_log AS
 SELECT e.id AS event_id,
    e.occurred_at,
    e.user_id,
    e.seq AS user_event_seq,
    e.event_type,
    e.outcome,
    e.caller,
    e.caller_addr,
    e.request_id,
    e.trace_id,
    e.change_id,
    c.user_seq AS change_seq,
        CASE
            WHEN (e.change_id IS NULL) THEN NULL::text
            ELSE COALESCE(fin.outcome, 'pending'::text)
        END AS change_status,
    req.occurred_at AS change_created_at,
    fin.occurred_at AS change_finished_at,
    e.step_no,
    COALESCE(e.target, st.target) AS target,
    COALESCE(e.upstream_ref, st.upstream_ref) AS upstream_ref,
    e.fields,
    e.error_code,
    st.outcome AS step_status,
        CASE
            WHEN (e.step_no IS NOT NULL) THEN (st.attempts)::integer
            ELSE NULL::integer
        END AS step_attempts,
        CASE
            WHEN d.diag THEN s.error_retryable
            ELSE NULL::boolean
        END AS step_error_retryable,
        CASE
            WHEN d.diag THEN s.upstream_status
            ELSE NULL::integer
        END AS step_upstream_status,
        CASE
            WHEN d.diag THEN s.upstream_code
            ELSE NULL::text
        END AS step_upstream_code,
        CASE
            WHEN d.diag THEN s.error_message
            ELSE NULL::text
        END AS step_error_message,
    e."values" AS masked_values,
    e.hmac_key_id,
    e.prev_hash,
    e.hash,
    (who.actor ->> 'auth'::text) AS auth_method,
    (who.actor ->> 'subject'::text) AS caller_subject,
    (who.actor ->> 'assertion_subject'::text) AS end_user_subject,
    (who.actor ->> 'assertion_jti'::text) AS end_user_assertion_jti,
    (who.actor ->> 'gateway_request_id'::text) AS gateway_request_id,
    who.source AS actor_source
   FROM (((((((public.audit_events e
     LEFT JOIN public.changes c ON ((c.id = e.change_id)))
     LEFT JOIN LATERAL ( SELECT r.occurred_at
           FROM public.audit_events r
          WHERE ((e.change_id IS NOT NULL) AND (r.change_id = e.change_id) AND (r.user_id = e.user_id) AND (r.event_type = 'change_requested'::text))
          ORDER BY r.seq
         LIMIT 1) req ON (true))
     LEFT JOIN LATERAL ( SELECT f.outcome,
            f.occurred_at
           FROM public.audit_events f
          WHERE ((e.change_id IS NOT NULL) AND (f.change_id = e.change_id) AND (f.user_id = e.user_id) AND (f.event_type = 'change_completed'::text))
          ORDER BY f.seq DESC
         LIMIT 1) fin ON (true))
     LEFT JOIN LATERAL ( SELECT (array_agg(a.outcome ORDER BY a.seq DESC))[1] AS outcome,
            (array_agg(a.target ORDER BY a.seq DESC))[1] AS target,
            (array_agg(a.upstream_ref ORDER BY a.seq DESC))[1] AS upstream_ref,
            count(*) AS attempts
           FROM public.audit_events a
          WHERE ((e.step_no IS NOT NULL) AND (a.change_id = e.change_id) AND (a.user_id = e.user_id) AND (a.step_no = e.step_no) AND (a.event_type = 'step_attempted'::text))) st ON (true))
     LEFT JOIN public.change_steps s ON (((s.change_id = e.change_id) AND (s.step_no = e.step_no))))
     CROSS JOIN LATERAL ( SELECT ((e.event_type = 'step_attempted'::text) AND (e.outcome = ANY (ARRAY['failed'::text, 'unknown'::text]))) AS diag) d)
     CROSS JOIN LATERAL ( SELECT
                CASE
                    WHEN (e.actor IS NOT NULL) THEN e.actor
                    WHEN (e."values" ? 'actor'::text) THEN (e."values" -> 'actor'::text)
                    ELSE c.actor
                END AS actor,
                CASE
                    WHEN (e.actor IS NOT NULL) THEN 'event'::text
                    WHEN (e."values" ? 'actor'::text) THEN 'event_values'::text
                    WHEN (c.actor IS NOT NULL) THEN 'change_record'::text
                    ELSE NULL::text
                END AS source) who);

--
-- Name: audit_step_attempts; Type: VIEW; Schema: public; Owner: -
--

CREATE VIEW public.audit_step_attempts AS
 SELECT a.event_id,
    a.event_type,
    a.occurred_at,
    a.user_id,
    a.seq,
    a.caller,
    a.caller_addr,
    a.request_id,
    a.trace_id,
    a.change_id,
    a.step_no,
    a.target,
    a.upstream_ref,
    a.fields,
    a.status,
    n.attempt,
    a.error_code,
    a.confirmed_by_read_back,
        CASE
            WHEN d.diag THEN s.error_retryable
            ELSE NULL::boolean
        END AS error_retryable,
        CASE
            WHEN d.diag THEN s.upstream_status
            ELSE NULL::integer
        END AS upstream_status,
        CASE
            WHEN d.diag THEN s.upstream_code
            ELSE NULL::text
        END AS upstream_code,
        CASE
            WHEN d.diag THEN s.error_message
            ELSE NULL::text
        END AS error_message,
    a."values" AS masked_values,
    a.hmac_key_id
   FROM (((public.audit_step_attempt_rows a
     CROSS JOIN LATERAL ( SELECT (count(*))::integer AS attempt
           FROM public.audit_step_attempt_rows p
          WHERE ((p.user_id = a.user_id) AND (p.change_id = a.change_id) AND (p.step_no = a.step_no) AND (p.seq <= a.seq) AND (p.seq > COALESCE(( SELECT max(r.seq) AS max
                   FROM public.audit_events r
                  WHERE ((r.user_id = a.user_id) AND (r.change_id = a.change_id) AND (r.event_type = 'change_retried'::text) AND (r.seq < a.seq))), (0)::bigint)))) n)
     LEFT JOIN LATERAL ( SELECT s_1.error_retryable,
            s_1.upstream_status,
            s_1.upstream_code,
            s_1.error_message
           FROM public.change_steps s_1
          WHERE ((s_1.change_id = a.change_id) AND (s_1.step_no = a.step_no))) s ON (true))
     CROSS JOIN LATERAL ( SELECT ((a.status = ANY (ARRAY['failed'::text, 'unknown'::text])) AND (NOT (EXISTS ( SELECT 1
                   FROM public.audit_step_attempt_rows l
                  WHERE ((l.user_id = a.user_id) AND (l.change_id = a.change_id) AND (l.step_no = a.step_no) AND (l.seq > a.seq)))))) AS diag) d);

--
-- Name: gateway_metadata; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.gateway_metadata (
    key text NOT NULL,
    value text NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: idempotency_keys; Type: VIEW; Schema: public; Owner: -
--

CREATE VIEW public.idempotency_keys AS
 SELECT changes.caller,
    changes.user_id,
    changes.idem_key,
    changes.idem_fingerprint AS fingerprint,
    changes.id AS change_id,
    changes.idem_in_flight_until AS in_flight_until,
    changes.created_at,
    changes.idem_expires_at AS expires_at
   FROM public.changes
  WHERE (changes.idem_key IS NOT NULL);

--
-- Name: VIEW idempotency_keys; Type: COMMENT; Schema: public; Owner: -
--

COMMENT ON VIEW public.idempotency_keys IS 'The idempotency keys, which live in changes since migration 20261202000300.';

--
-- Name: user_assertion_jtis; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.user_assertion_jtis (
    issuer text NOT NULL,
    jti text NOT NULL,
    caller text NOT NULL,
    user_id text NOT NULL,
    idem_key text,
    expires_at timestamp with time zone NOT NULL,
    first_used_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: user_links; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.user_links (
    user_id text NOT NULL,
    provider text NOT NULL,
    object_id text NOT NULL,
    ordinal integer NOT NULL,
    CONSTRAINT user_links_ordinal_check CHECK ((ordinal >= 0))
);

--
-- Name: webhook_attempts; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.webhook_attempts (
    id bigint NOT NULL,
    event_id uuid NOT NULL,
    attempt_no integer NOT NULL,
    started_at timestamp with time zone NOT NULL,
    duration_ms integer NOT NULL,
    status_code integer,
    error text,
    replica text NOT NULL,
    next_attempt_at timestamp with time zone,
    CONSTRAINT webhook_attempts_error_check CHECK ((error = ANY (ARRAY['timeout'::text, 'connect'::text, 'broken'::text, 'redirect'::text, 'status'::text])))
);

--
-- Name: webhook_attempts_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

ALTER TABLE public.webhook_attempts ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.webhook_attempts_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: webhook_events; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.webhook_events (
    id uuid NOT NULL,
    change_id uuid NOT NULL,
    caller text NOT NULL,
    event_type text NOT NULL,
    body text NOT NULL,
    status text DEFAULT 'pending'::text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    next_attempt_at timestamp with time zone DEFAULT now() NOT NULL,
    claimed_by text,
    claimed_until timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    window_start timestamp with time zone DEFAULT now() NOT NULL,
    delivered_at timestamp with time zone,
    retry_from integer DEFAULT 0 NOT NULL,
    CONSTRAINT webhook_events_check CHECK (((status = 'delivered'::text) = (delivered_at IS NOT NULL))),
    CONSTRAINT webhook_events_event_type_check CHECK ((event_type = ANY (ARRAY['change.applied'::text, 'change.partially_applied'::text, 'change.failed'::text, 'change.step_unknown'::text]))),
    CONSTRAINT webhook_events_status_check CHECK ((status = ANY (ARRAY['pending'::text, 'delivered'::text, 'failed'::text])))
);

--
-- Name: webhook_receivers; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.webhook_receivers (
    caller text NOT NULL,
    failures integer DEFAULT 0 NOT NULL,
    paused_until timestamp with time zone,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: audit_chain_anchors audit_chain_anchors_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.audit_chain_anchors
    ADD CONSTRAINT audit_chain_anchors_pkey PRIMARY KEY (user_id, seq);

--
-- Name: audit_chain_heads audit_chain_heads_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.audit_chain_heads
    ADD CONSTRAINT audit_chain_heads_pkey PRIMARY KEY (user_id);

--
-- Name: audit_checkpoint_witnessed audit_checkpoint_witnessed_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.audit_checkpoint_witnessed
    ADD CONSTRAINT audit_checkpoint_witnessed_pkey PRIMARY KEY (seq);

--
-- Name: audit_checkpoints audit_checkpoints_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.audit_checkpoints
    ADD CONSTRAINT audit_checkpoints_pkey PRIMARY KEY (seq);

--
-- Name: audit_checkpoints audit_checkpoints_slot_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.audit_checkpoints
    ADD CONSTRAINT audit_checkpoints_slot_key UNIQUE (slot);

--
-- Name: audit_events audit_events_fields_flat; Type: CHECK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE public.audit_events
    ADD CONSTRAINT audit_events_fields_flat CHECK (
CASE
    WHEN (array_ndims(fields) > 1) THEN false
    ELSE (array_position(fields, NULL::text) IS NULL)
END) NOT VALID;

--
-- Name: audit_events audit_events_format; Type: CHECK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE public.audit_events
    ADD CONSTRAINT audit_events_format CHECK (((format IS NULL) OR (format = 3))) NOT VALID;

--
-- Name: audit_events audit_events_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.audit_events
    ADD CONSTRAINT audit_events_pkey PRIMARY KEY (id, occurred_at);

--
-- Name: audit_events audit_events_plausible_time; Type: CHECK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE public.audit_events
    ADD CONSTRAINT audit_events_plausible_time CHECK (((format IS NULL) OR ((occurred_at >= (now() - '00:00:05'::interval)) AND (occurred_at <= (now() + '00:00:05'::interval))))) NOT VALID;

--
-- Name: changes changes_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.changes
    ADD CONSTRAINT changes_pkey PRIMARY KEY (id);

--
-- Name: changes changes_user_id_user_seq_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.changes
    ADD CONSTRAINT changes_user_id_user_seq_key UNIQUE (user_id, user_seq);

--
-- Name: gateway_metadata gateway_metadata_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.gateway_metadata
    ADD CONSTRAINT gateway_metadata_pkey PRIMARY KEY (key);

--
-- Name: profile_links profile_links_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.profile_links
    ADD CONSTRAINT profile_links_pkey PRIMARY KEY (user_id);

--
-- Name: user_assertion_jtis user_assertion_jtis_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.user_assertion_jtis
    ADD CONSTRAINT user_assertion_jtis_pkey PRIMARY KEY (issuer, jti);

--
-- Name: user_links user_links_object_once; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.user_links
    ADD CONSTRAINT user_links_object_once UNIQUE (provider, object_id);

--
-- Name: user_links user_links_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.user_links
    ADD CONSTRAINT user_links_pkey PRIMARY KEY (user_id, provider, ordinal);

--
-- Name: webhook_attempts webhook_attempts_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhook_attempts
    ADD CONSTRAINT webhook_attempts_pkey PRIMARY KEY (id);

--
-- Name: webhook_events webhook_events_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhook_events
    ADD CONSTRAINT webhook_events_pkey PRIMARY KEY (id);

--
-- Name: webhook_receivers webhook_receivers_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhook_receivers
    ADD CONSTRAINT webhook_receivers_pkey PRIMARY KEY (caller);

--
-- Name: audit_events_by_change; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX audit_events_by_change ON ONLY public.audit_events USING btree (change_id);

--
-- Name: audit_events_by_time; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX audit_events_by_time ON ONLY public.audit_events USING btree (occurred_at);

--
-- Name: audit_events_step_attempted; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX audit_events_step_attempted ON ONLY public.audit_events USING btree (user_id, seq) WHERE (event_type = 'step_attempted'::text);

--
-- Name: changes_idem_expiry; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX changes_idem_expiry ON public.changes USING btree (idem_expires_at) WHERE (idem_key IS NOT NULL);

--
-- Name: changes_idem_key; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX changes_idem_key ON public.changes USING btree (caller, user_id, idem_key) WHERE (idem_key IS NOT NULL);

--
-- Name: changes_pending_by_user; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX changes_pending_by_user ON public.changes USING btree (user_id, user_seq) WHERE (status = 'pending'::text);

--
-- Name: changes_unfinished; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX changes_unfinished ON public.changes USING btree (lease_expires_at) WHERE (status = 'pending'::text);

--
-- Name: user_assertion_jtis_expiry; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX user_assertion_jtis_expiry ON public.user_assertion_jtis USING btree (expires_at);

--
-- Name: webhook_attempts_by_event; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX webhook_attempts_by_event ON public.webhook_attempts USING btree (event_id, id);

--
-- Name: webhook_events_by_change; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX webhook_events_by_change ON public.webhook_events USING btree (change_id);

--
-- Name: webhook_events_claimed; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX webhook_events_claimed ON public.webhook_events USING btree (caller) WHERE (claimed_until IS NOT NULL);

--
-- Name: webhook_events_due; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX webhook_events_due ON public.webhook_events USING btree (caller, next_attempt_at) WHERE (status = 'pending'::text);

--
-- Name: audit_chain_anchors audit_chain_anchors_no_truncate; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER audit_chain_anchors_no_truncate BEFORE TRUNCATE ON public.audit_chain_anchors FOR EACH STATEMENT EXECUTE FUNCTION public.audit_reject_change();

ALTER TABLE public.audit_chain_anchors ENABLE ALWAYS TRIGGER audit_chain_anchors_no_truncate;

--
-- Name: audit_chain_anchors audit_chain_anchors_no_update; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER audit_chain_anchors_no_update BEFORE DELETE OR UPDATE ON public.audit_chain_anchors FOR EACH ROW EXECUTE FUNCTION public.audit_reject_change();

ALTER TABLE public.audit_chain_anchors ENABLE ALWAYS TRIGGER audit_chain_anchors_no_update;

--
-- Name: audit_chain_heads audit_chain_heads_guard; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER audit_chain_heads_guard BEFORE UPDATE ON public.audit_chain_heads FOR EACH ROW WHEN (((pg_trigger_depth() = 0) AND ((current_setting('pgw.audit_append'::text, true) IS DISTINCT FROM 'on'::text) OR (CURRENT_USER <> 'profile_gateway_audit_writer'::name)))) EXECUTE FUNCTION public.audit_heads_guard();

ALTER TABLE public.audit_chain_heads ENABLE ALWAYS TRIGGER audit_chain_heads_guard;

--
-- Name: audit_chain_heads audit_chain_heads_no_delete; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER audit_chain_heads_no_delete BEFORE DELETE ON public.audit_chain_heads FOR EACH ROW EXECUTE FUNCTION public.audit_heads_guard();

ALTER TABLE public.audit_chain_heads ENABLE ALWAYS TRIGGER audit_chain_heads_no_delete;

--
-- Name: audit_chain_heads audit_chain_heads_no_truncate; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER audit_chain_heads_no_truncate BEFORE TRUNCATE ON public.audit_chain_heads FOR EACH STATEMENT EXECUTE FUNCTION public.audit_reject_change();

ALTER TABLE public.audit_chain_heads ENABLE ALWAYS TRIGGER audit_chain_heads_no_truncate;

--
-- Name: audit_checkpoint_witnessed audit_checkpoint_witnessed_no_truncate; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER audit_checkpoint_witnessed_no_truncate BEFORE TRUNCATE ON public.audit_checkpoint_witnessed FOR EACH STATEMENT EXECUTE FUNCTION public.audit_reject_change();

ALTER TABLE public.audit_checkpoint_witnessed ENABLE ALWAYS TRIGGER audit_checkpoint_witnessed_no_truncate;

--
-- Name: audit_checkpoint_witnessed audit_checkpoint_witnessed_no_update; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER audit_checkpoint_witnessed_no_update BEFORE DELETE OR UPDATE ON public.audit_checkpoint_witnessed FOR EACH ROW EXECUTE FUNCTION public.audit_reject_change();

ALTER TABLE public.audit_checkpoint_witnessed ENABLE ALWAYS TRIGGER audit_checkpoint_witnessed_no_update;

--
-- Name: audit_checkpoints audit_checkpoints_no_truncate; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON public.audit_checkpoints FOR EACH STATEMENT EXECUTE FUNCTION public.audit_reject_change();

ALTER TABLE public.audit_checkpoints ENABLE ALWAYS TRIGGER audit_checkpoints_no_truncate;

--
-- Name: audit_checkpoints audit_checkpoints_no_update; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER audit_checkpoints_no_update BEFORE DELETE OR UPDATE ON public.audit_checkpoints FOR EACH ROW EXECUTE FUNCTION public.audit_reject_change();

ALTER TABLE public.audit_checkpoints ENABLE ALWAYS TRIGGER audit_checkpoints_no_update;

--
-- Name: audit_events audit_events_chain; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER audit_events_chain BEFORE INSERT ON public.audit_events FOR EACH ROW WHEN ((new.format IS NULL)) EXECUTE FUNCTION public.audit_events_chain();

ALTER TABLE public.audit_events ENABLE ALWAYS TRIGGER audit_events_chain;

--
-- Name: audit_events audit_events_no_truncate; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON public.audit_events FOR EACH STATEMENT EXECUTE FUNCTION public.audit_reject_change();

ALTER TABLE public.audit_events ENABLE ALWAYS TRIGGER audit_events_no_truncate;

--
-- Name: audit_events audit_events_no_update; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER audit_events_no_update BEFORE DELETE OR UPDATE ON public.audit_events FOR EACH ROW EXECUTE FUNCTION public.audit_reject_change();

ALTER TABLE public.audit_events ENABLE ALWAYS TRIGGER audit_events_no_update;

--
-- Name: profile_links profile_links_take_chain_head; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER profile_links_take_chain_head BEFORE INSERT ON public.profile_links FOR EACH ROW EXECUTE FUNCTION public.profile_links_take_chain_head();

--
-- Name: audit_checkpoint_witnessed audit_checkpoint_witnessed_seq_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.audit_checkpoint_witnessed
    ADD CONSTRAINT audit_checkpoint_witnessed_seq_fkey FOREIGN KEY (seq) REFERENCES public.audit_checkpoints(seq);

--
-- Name: changes changes_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.changes
    ADD CONSTRAINT changes_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.profile_links(user_id);

--
-- Name: user_links user_links_user_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.user_links
    ADD CONSTRAINT user_links_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.profile_links(user_id) ON DELETE CASCADE;

--
-- Name: webhook_attempts webhook_attempts_event_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhook_attempts
    ADD CONSTRAINT webhook_attempts_event_id_fkey FOREIGN KEY (event_id) REFERENCES public.webhook_events(id);

--
-- Name: webhook_events webhook_events_change_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.webhook_events
    ADD CONSTRAINT webhook_events_change_id_fkey FOREIGN KEY (change_id) REFERENCES public.changes(id);

--
-- Name: SCHEMA audit_archive; Type: ACL; Schema: -; Owner: -
--

GRANT USAGE ON SCHEMA audit_archive TO profile_gateway_auditor;

--
-- Name: SCHEMA public; Type: ACL; Schema: -; Owner: -
--

GRANT USAGE ON SCHEMA public TO profile_gateway_app;
GRANT USAGE ON SCHEMA public TO profile_gateway_auditor;
GRANT USAGE ON SCHEMA public TO profile_gateway_maintenance;

--
-- Name: TYPE audit_event_input; Type: ACL; Schema: public; Owner: -
--

GRANT ALL ON TYPE public.audit_event_input TO profile_gateway_app;

--
-- Name: TYPE audit_event_input_v2; Type: ACL; Schema: public; Owner: -
--

GRANT ALL ON TYPE public.audit_event_input_v2 TO profile_gateway_app;

--
-- Name: FUNCTION audit_append(p_events public.audit_event_input[]); Type: ACL; Schema: public; Owner: -
--

REVOKE ALL ON FUNCTION public.audit_append(p_events public.audit_event_input[]) FROM PUBLIC;
GRANT ALL ON FUNCTION public.audit_append(p_events public.audit_event_input[]) TO profile_gateway_app;

--
-- Name: FUNCTION audit_append(p_events public.audit_event_input_v2[]); Type: ACL; Schema: public; Owner: -
--

REVOKE ALL ON FUNCTION public.audit_append(p_events public.audit_event_input_v2[]) FROM PUBLIC;
GRANT ALL ON FUNCTION public.audit_append(p_events public.audit_event_input_v2[]) TO profile_gateway_app;

--
-- Name: FUNCTION audit_create_partition(month_start date); Type: ACL; Schema: public; Owner: -
--

REVOKE ALL ON FUNCTION public.audit_create_partition(month_start date) FROM PUBLIC;

--
-- Name: FUNCTION audit_detach_expired(retention_months integer); Type: ACL; Schema: public; Owner: -
--

REVOKE ALL ON FUNCTION public.audit_detach_expired(retention_months integer) FROM PUBLIC;
GRANT ALL ON FUNCTION public.audit_detach_expired(retention_months integer) TO profile_gateway_maintenance;

--
-- Name: FUNCTION audit_detach_expired_unchecked(retention_months integer); Type: ACL; Schema: public; Owner: -
--

REVOKE ALL ON FUNCTION public.audit_detach_expired_unchecked(retention_months integer) FROM PUBLIC;

--
-- Name: FUNCTION audit_ensure_partitions(months_ahead integer); Type: ACL; Schema: public; Owner: -
--

REVOKE ALL ON FUNCTION public.audit_ensure_partitions(months_ahead integer) FROM PUBLIC;
GRANT ALL ON FUNCTION public.audit_ensure_partitions(months_ahead integer) TO profile_gateway_maintenance;

--
-- Name: TABLE audit_events; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT,INSERT ON TABLE public.audit_events TO profile_gateway_app;
GRANT SELECT ON TABLE public.audit_events TO profile_gateway_auditor;
GRANT SELECT,INSERT ON TABLE public.audit_events TO profile_gateway_audit_writer;

--
-- Name: FUNCTION audit_events_chain(); Type: ACL; Schema: public; Owner: -
--

REVOKE ALL ON FUNCTION public.audit_events_chain() FROM PUBLIC;

--
-- Name: FUNCTION audit_pii_hmac(value text, key_base64 text); Type: ACL; Schema: public; Owner: -
--

GRANT ALL ON FUNCTION public.audit_pii_hmac(value text, key_base64 text) TO profile_gateway_auditor;
GRANT ALL ON FUNCTION public.audit_pii_hmac(value text, key_base64 text) TO profile_gateway_app;

--
-- Name: FUNCTION audit_pii_normalize(field text, value text); Type: ACL; Schema: public; Owner: -
--

GRANT ALL ON FUNCTION public.audit_pii_normalize(field text, value text) TO profile_gateway_auditor;
GRANT ALL ON FUNCTION public.audit_pii_normalize(field text, value text) TO profile_gateway_app;

--
-- Name: FUNCTION audit_record_maintenance(created integer, detached text[]); Type: ACL; Schema: public; Owner: -
--

REVOKE ALL ON FUNCTION public.audit_record_maintenance(created integer, detached text[]) FROM PUBLIC;
GRANT ALL ON FUNCTION public.audit_record_maintenance(created integer, detached text[]) TO profile_gateway_maintenance;

--
-- Name: FUNCTION audit_record_read(command text, subject_user text); Type: ACL; Schema: public; Owner: -
--

REVOKE ALL ON FUNCTION public.audit_record_read(command text, subject_user text) FROM PUBLIC;
GRANT ALL ON FUNCTION public.audit_record_read(command text, subject_user text) TO profile_gateway_auditor;
GRANT ALL ON FUNCTION public.audit_record_read(command text, subject_user text) TO profile_gateway_app;
GRANT ALL ON FUNCTION public.audit_record_read(command text, subject_user text) TO profile_gateway_maintenance;

--
-- Name: FUNCTION pgw_abort(reason text); Type: ACL; Schema: public; Owner: -
--

GRANT ALL ON FUNCTION public.pgw_abort(reason text) TO profile_gateway_app;

--
-- Name: TABLE audit_chain_anchors; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT ON TABLE public.audit_chain_anchors TO profile_gateway_auditor;
GRANT SELECT ON TABLE public.audit_chain_anchors TO profile_gateway_app;
GRANT SELECT ON TABLE public.audit_chain_anchors TO profile_gateway_maintenance;

--
-- Name: TABLE audit_chain_heads; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT ON TABLE public.audit_chain_heads TO profile_gateway_auditor;
GRANT SELECT,INSERT,UPDATE ON TABLE public.audit_chain_heads TO profile_gateway_audit_writer;
GRANT SELECT ON TABLE public.audit_chain_heads TO profile_gateway_app;
GRANT SELECT ON TABLE public.audit_chain_heads TO profile_gateway_maintenance;

--
-- Name: TABLE audit_checkpoint_witnessed; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT,INSERT ON TABLE public.audit_checkpoint_witnessed TO profile_gateway_app;
GRANT SELECT ON TABLE public.audit_checkpoint_witnessed TO profile_gateway_auditor;

--
-- Name: TABLE audit_checkpoints; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT,INSERT ON TABLE public.audit_checkpoints TO profile_gateway_app;
GRANT SELECT ON TABLE public.audit_checkpoints TO profile_gateway_auditor;
GRANT SELECT ON TABLE public.audit_checkpoints TO profile_gateway_maintenance;

--
-- Name: SEQUENCE audit_events_id_seq; Type: ACL; Schema: public; Owner: -
--

GRANT USAGE ON SEQUENCE public.audit_events_id_seq TO profile_gateway_audit_writer;

--
-- Name: TABLE audit_step_attempt_rows; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT ON TABLE public.audit_step_attempt_rows TO profile_gateway_app;
GRANT SELECT ON TABLE public.audit_step_attempt_rows TO profile_gateway_auditor;

--
-- Name: TABLE audit_field_changes; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT ON TABLE public.audit_field_changes TO profile_gateway_app;
GRANT SELECT ON TABLE public.audit_field_changes TO profile_gateway_auditor;

--
-- Name: TABLE profile_links; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT,INSERT,DELETE,UPDATE ON TABLE public.profile_links TO profile_gateway_app;

--
-- Name: TABLE audit_heads; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT,INSERT,DELETE,UPDATE ON TABLE public.audit_heads TO profile_gateway_app;
GRANT SELECT ON TABLE public.audit_heads TO profile_gateway_auditor;
GRANT SELECT ON TABLE public.audit_heads TO profile_gateway_maintenance;

--
-- Name: TABLE changes; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT,INSERT,DELETE,UPDATE ON TABLE public.changes TO profile_gateway_app;

--
-- Name: TABLE change_steps; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT ON TABLE public.change_steps TO profile_gateway_app;

--
-- Name: TABLE audit_log; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT ON TABLE public.audit_log TO profile_gateway_app;
GRANT SELECT ON TABLE public.audit_log TO profile_gateway_auditor;

--
-- Name: TABLE audit_step_attempts; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT ON TABLE public.audit_step_attempts TO profile_gateway_app;
GRANT SELECT ON TABLE public.audit_step_attempts TO profile_gateway_auditor;

--
-- Name: TABLE gateway_metadata; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT,INSERT,DELETE,UPDATE ON TABLE public.gateway_metadata TO profile_gateway_app;

--
-- Name: TABLE idempotency_keys; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT ON TABLE public.idempotency_keys TO profile_gateway_app;

--
-- Name: TABLE user_assertion_jtis; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT,INSERT,DELETE,UPDATE ON TABLE public.user_assertion_jtis TO profile_gateway_app;

--
-- Name: TABLE user_links; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT,INSERT,DELETE,UPDATE ON TABLE public.user_links TO profile_gateway_app;

--
-- Name: TABLE webhook_attempts; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT ON TABLE public.webhook_attempts TO profile_gateway_auditor;
GRANT SELECT,INSERT ON TABLE public.webhook_attempts TO profile_gateway_app;

--
-- Name: SEQUENCE webhook_attempts_id_seq; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT,USAGE ON SEQUENCE public.webhook_attempts_id_seq TO profile_gateway_app;

--
-- Name: TABLE webhook_events; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT ON TABLE public.webhook_events TO profile_gateway_auditor;
GRANT SELECT,INSERT,UPDATE ON TABLE public.webhook_events TO profile_gateway_app;

--
-- Name: TABLE webhook_receivers; Type: ACL; Schema: public; Owner: -
--

GRANT SELECT,INSERT,UPDATE ON TABLE public.webhook_receivers TO profile_gateway_app;

--
-- Name: DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: audit_archive; Owner: -
--

ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA audit_archive GRANT SELECT ON TABLES  TO profile_gateway_auditor;

--
-- Name: DEFAULT PRIVILEGES FOR SEQUENCES; Type: DEFAULT ACL; Schema: public; Owner: -
--

ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT SELECT,USAGE ON SEQUENCES  TO profile_gateway_app;

--
-- Name: DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: public; Owner: -
--

ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public GRANT SELECT,INSERT,DELETE,UPDATE ON TABLES  TO profile_gateway_app;

--
-- PostgreSQL database dump complete
--

