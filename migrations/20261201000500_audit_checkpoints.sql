-- Signed checkpoints of the audit log (docs/auditing.md "How to prove the log is complete").
--
-- A checkpoint is the state of every user's chain at one moment (its length and head hash),
-- combined into one Merkle root and signed by the gateway with an Ed25519 key that is never in the
-- database. The signed note and its leaves are kept here until the witness (audit.witness_dir, a
-- store outside the database) has them; the witness copy is what an auditor verifies against.
-- Nothing here is trusted by the verifier: it checks the witness's notes with the public key.

create table audit_checkpoints (
    seq        bigint primary key,
    -- The interval a scheduled checkpoint stands for (epoch seconds / checkpoint_interval_s, by the
    -- database clock); NULL for `audit checkpoint` on demand. Unique: one per interval, whichever
    -- replica gets there first.
    slot       bigint unique,
    taken_at   timestamptz not null,
    -- The signed note as the witness receives it (body and signature line).
    note       text not null,
    -- One `<length> <head> <user>` line per chain, sorted by user (bytes).
    leaves     text not null,
    taken_by   text not null default session_user
);

-- Which checkpoints the witness has: a row per checkpoint written there, so the backlog is the
-- checkpoints without one.
create table audit_checkpoint_witnessed (
    seq          bigint primary key references audit_checkpoints (seq),
    witnessed_at timestamptz not null default now()
);

-- Append-only like the rest of the audit trail.
do $$
declare
    t text;
begin
    foreach t in array array['audit_checkpoints', 'audit_checkpoint_witnessed'] loop
        execute format('create trigger %1$s_no_update before update or delete on %1$I
                          for each row execute function audit_reject_change()', t);
        execute format('create trigger %1$s_no_truncate before truncate on %1$I
                          for each statement execute function audit_reject_change()', t);
        execute format('alter table %1$I enable always trigger %1$s_no_update', t);
        execute format('alter table %1$I enable always trigger %1$s_no_truncate', t);
    end loop;
end
$$;

-- The default privileges of 0004 gave the gateway full DML on new tables; it only appends here,
-- and reads the chain heads it signs.
revoke all on audit_checkpoints, audit_checkpoint_witnessed from profile_gateway_app;
grant select, insert on audit_checkpoints, audit_checkpoint_witnessed to profile_gateway_app;
grant select on audit_chain_heads, audit_chain_anchors to profile_gateway_app;
grant select on audit_checkpoints, audit_checkpoint_witnessed to profile_gateway_auditor;
