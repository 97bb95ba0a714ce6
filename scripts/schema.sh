# Shared by scripts/sqlx-prepare and scripts/check-schema: a scratch database built from
# migrations/, and its schema dumped the one way db/schema.sql is written. Source it; do not run it.

# Serialises the scripts that build scratch databases: the migrations create cluster-wide roles.
lock_scratch_databases() {
    exec 9>/tmp/profile-gateway-sqlx-prepare.lock
    flock 9
}

# Recreates database $2 from migrations/ (in file order, as sqlx applies them) on the server of
# admin URL $1, and prints its URL.
scratch_database() {
    local admin=$1 db=$2 url f
    PGOPTIONS='-c client_min_messages=warning' psql "$admin" -Xqc "drop database if exists $db with (force)" -c "create database $db" >/dev/null
    url="${admin%/*}/$db"
    for f in migrations/*.sql; do
        # The migrations' notices (a SET LOCAL outside sqlx's transaction) are noise here.
        PGOPTIONS='-c client_min_messages=error' psql "$url" -X -v ON_ERROR_STOP=1 -qf "$f"
    done
    printf '%s\n' "$url"
}

# The schema of database URL $1 as db/schema.sql holds it, identical across runs and days:
# - no owners (they are whoever ran the migrations), but the grants, which are part of the design;
# - without audit_events' monthly partitions, which migration 20261122000003 creates for the month
#   it runs in and the two after (the partitioned table, its indexes and triggers are there);
# - without pg_dump's \restrict / \unrestrict lines, whose key is random per run, and its
#   version comments.
dump_schema() {
    local url=$1
    printf -- '-- The current schema: pg_dump --schema-only of a database built from migrations/, written by\n'
    printf -- '-- scripts/sqlx-prepare and checked by scripts/check-schema. Do not edit; change a migration.\n'
    printf -- '-- Left out: the monthly partitions of audit_events (audit_events_YYYY_MM), made at migration time.\n\n'
    pg_dump --schema-only --no-owner --exclude-table='public.audit_events_[0-9]*' "$url" |
        grep -v -E '^\\(un)?restrict |^-- Dumped (from|by) ' |
        cat -s
}
