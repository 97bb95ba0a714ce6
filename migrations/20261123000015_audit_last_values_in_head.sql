-- The chaining trigger with one read and one write per event.
--
-- Until now each event cost, besides the chain head's lock and update, one audit_last_values lookup
-- per masked field and, for an applied step, one two-row upsert per field (migration 0013). Under
-- the benchmark those statements were about 40% of the trigger's time, which is the largest share
-- of PostgreSQL's CPU per change (bench/README.md). The last applied values are now a jsonb column
-- of the head row the trigger locks and updates anyway:
--   { "<scope>": { "<field>": { "v": <masked value: new, new_hmac>, "k": <hmac key id> } } }
-- with the same scopes as before ('' for any target, '<target>:<upstream ref>' for one object).
-- It is derived state like audit_last_values was: the events stay the record, and their hashes
-- cover the old values they were given. Encoding, locks and old-value rules are unchanged.
--
-- Deploy: run it as the pre-rollout migration Job (or with the gateway stopped). It holds an
-- exclusive lock on audit_chain_heads while it backfills, and an event being written by the old
-- trigger at that moment fails (its change stays pending and a completer finishes it).

alter table audit_chain_heads add column last_values jsonb not null default '{}';

-- Backfill from audit_last_values. The guard allows head updates only from the chaining trigger;
-- it is set aside for this one statement of the migration.
alter table audit_chain_heads disable trigger audit_chain_heads_guard;
update audit_chain_heads h
   set last_values = x.lv
  from (select s.user_id, jsonb_object_agg(s.scope, s.fields) as lv
          from (select l.user_id, l.scope,
                       jsonb_object_agg(l.field, jsonb_build_object('v', l.value - 'old' - 'old_hmac' - 'old_hmac_key_id',
                                                                    'k', l.hmac_key_id)) as fields
                  from audit_last_values l
                 group by l.user_id, l.scope) s
         group by s.user_id) x
 where h.user_id = x.user_id;
drop table audit_last_values;

-- The guard no longer runs for the trigger's own head updates: a WHEN clause is evaluated in the
-- executor, a PL/pgSQL call per event is not. Direct updates (trigger depth 0) and every delete
-- are still rejected, as before.
drop trigger audit_chain_heads_guard on audit_chain_heads;
create trigger audit_chain_heads_guard before update on audit_chain_heads
    for each row when (pg_trigger_depth() = 0) execute function audit_heads_guard();
create trigger audit_chain_heads_no_delete before delete on audit_chain_heads
    for each row execute function audit_heads_guard();
alter table audit_chain_heads enable always trigger audit_chain_heads_guard;
alter table audit_chain_heads enable always trigger audit_chain_heads_no_delete;

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
    -- The same canonical encoding as audit_event_hash() (migration 0003), evaluated inline.
    -- `audit verify` re-computes it independently in Rust.
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

-- Less write amplification on the hot path's rows.
-- changes_by_user duplicates the unique (user_id, user_seq) index, which serves descending scans
-- as well; every insert and every non-HOT update of a change paid for both.
drop index changes_by_user;
-- Rows updated in place on every change keep room on their page, so the update can be HOT (no
-- index entries) and the page pruned instead of the table and its indexes growing: the chain head
-- (once per event), the user's links row (sequence counters), the steps (their outcome) and the
-- idempotency key (released when the change is final).
alter table audit_chain_heads set (fillfactor = 50);
alter table profile_links set (fillfactor = 70);
alter table change_steps set (fillfactor = 80);
alter table idempotency_keys set (fillfactor = 90);
