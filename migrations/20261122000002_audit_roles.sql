-- Audit trail, part 1: the database roles and the extension the audit trail relies on.
--
-- profile_gateway_app      the gateway: full DML on its own tables, INSERT + SELECT only on audit tables.
-- profile_gateway_auditor  read-only access to the audit tables and views.
-- Both are NOLOGIN group roles: grant them to the login roles you deploy with
-- (`grant profile_gateway_app to gateway_login;`). Roles are cluster-wide, so creating them is
-- idempotent and tolerates a concurrent migration of another database creating them first.

do $$
declare
    r text;
begin
    foreach r in array array['profile_gateway_app', 'profile_gateway_auditor'] loop
        if not exists (select 1 from pg_roles where rolname = r) then
            begin
                execute format('create role %I nologin', r);
            exception when duplicate_object or unique_violation then
                null; -- created concurrently by another database's migration
            end;
        end if;
    end loop;
end
$$;

-- hmac() for the auditor's lookup function.
create extension if not exists pgcrypto;

-- Detached (expired) audit partitions are moved here, out of the way of the live tables, until an
-- operator archives and drops them.
create schema if not exists audit_archive;
