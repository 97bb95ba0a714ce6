-- Readiness compares the applied migrations with the binary's (src/lifecycle.rs), and the gateway
-- runs as profile_gateway_app, never as the owner: it must read sqlx's bookkeeping table. The
-- table is absent where the SQL files are applied directly (scripts/sqlx-prepare).
do $$
begin
    if to_regclass('_sqlx_migrations') is not null then
        grant select on _sqlx_migrations to profile_gateway_app;
    end if;
end
$$;
