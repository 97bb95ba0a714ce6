# Shared helpers for scripts/test, scripts/schemathesis and .ci/run. Source it; do not run it.
# The admin URL is the one the integration tests use (tests/it/helpers.rs).

PG_ADMIN_URL=${TEST_DATABASE_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export TEST_DATABASE_ADMIN_URL=$PG_ADMIN_URL

section() {
    printf '\n==> %s\n' "$*"
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Starts the local PostgreSQL cluster if nothing answers on 127.0.0.1, then waits until it is ready.
ensure_postgres() {
    if ! pg_isready -h 127.0.0.1 -q; then
        local version
        version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
        [ -n "$version" ] || die "PostgreSQL is not running on 127.0.0.1 and no cluster is installed under /etc/postgresql"
        echo "PostgreSQL is down; starting cluster $version/main"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start
    fi
    local i
    for i in $(seq 1 60); do
        if pg_isready -h 127.0.0.1 -q; then
            return 0
        fi
        sleep 1
    done
    pg_isready -h 127.0.0.1 || die "PostgreSQL did not become ready within 60 s"
}

# Drops the per-test databases (pgw_test_*) that earlier runs left behind. Only databases nobody is
# connected to and that are older than two minutes go, so tests running concurrently on the same
# server (another checkout, another engineer) keep theirs.
drop_stale_test_databases() {
    local stale db n=0
    stale=$(psql "$PG_ADMIN_URL" -XAtq -v ON_ERROR_STOP=1 -c "
        select d.datname
          from pg_database d
         where d.datname like 'pgw\_test\_%'
           and not exists (select 1 from pg_stat_activity a where a.datname = d.datname)
           and (pg_stat_file('base/' || d.oid || '/PG_VERSION', true)).modification
               < now() - interval '2 minutes'")
    for db in $stale; do
        # Without FORCE: a database someone connected to in the meantime is kept.
        if psql "$PG_ADMIN_URL" -XAtq -c "drop database if exists \"$db\"" 2>/dev/null; then
            n=$((n + 1))
        fi
    done
    echo "dropped $n stale pgw_test_* database(s)"
}
