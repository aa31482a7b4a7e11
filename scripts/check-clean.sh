#!/usr/bin/env bash
# After a run: every database db-test created holds zero rows written by
# tests, no per-test database is left over, and no connection is left open.
# Usage: scripts/check-clean.sh [SERVER_URL [MYSQL_SERVER_URL]]
# (default: db-test's PostgreSQL server; the MySQL/MariaDB server is checked
# when its URL is given)
set -euo pipefail
cd "$(dirname "$0")/.."
url=${1:-$(cargo run -q -p db-test --example server_url)}
my_url=${2:-}
fail=0
if [ -n "$my_url" ]; then
    . scripts/mysql-lib.sh
    # Every working database of db-test's on the MySQL server holds exactly
    # the rows of its template (seed rows of migrations), whatever the
    # tests did.
    rows() {
        local count_sql
        count_sql=$(my "$my_url" -- -N -e "SELECT COALESCE(GROUP_CONCAT(CONCAT('SELECT COUNT(*) AS c FROM \`', table_schema, '\`.\`', table_name, '\`') SEPARATOR ' UNION ALL '), 'SELECT 0 AS c') FROM information_schema.tables WHERE table_schema = '$1' AND table_type = 'BASE TABLE' AND table_name <> '_sqlx_migrations'")
        my "$my_url" -- -N -e "SELECT COALESCE(SUM(c), 0) FROM ($count_sql) t"
    }
    for db in $(my "$my_url" -- -N -e "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'dbtest\\_%\\_w' ORDER BY 1"); do
        tpl=${db%_w}_t
        real=$(rows "$db")
        seeded=$(rows "$tpl")
        echo "check-clean: mysql $db: $real row(s), its template $seeded"
        [ "$real" = "$seeded" ] || fail=1
    done
fi
dbs=$(psql "$url" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'dbtest\_%\_w' ORDER BY 1")
for db in $dbs; do
    db_url=$(python3 -c 'import sys,urllib.parse as u; p=u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/"+sys.argv[2])))' "$url" "$db")
    # Rows in every table but the migration bookkeeping (race_marker is
    # written by a test migration, not by a test), and but the temporary
    # tables of sessions still open (db-test's per-session commit guard;
    # another session's cannot be read, and never holds committed rows).
    real=$(psql "$db_url" -Atc "SELECT coalesce(sum((xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', schemaname, relname), false, true, '')))[1]::text::bigint), 0) FROM pg_stat_user_tables WHERE relname NOT IN ('_sqlx_migrations', 'race_marker') AND schemaname NOT LIKE 'pg\_temp\_%' AND schemaname NOT LIKE 'pg\_toast\_temp\_%'")
    echo "check-clean: $db: $real committed row(s)"
    [ "$real" = 0 ] || fail=1
done
# A per-test database is left over once its owner process is gone: the
# owner holds an advisory lock (classid 0x64627401, objid its id, which the
# name carries as `_d<8 hex>_<n>`) for as long as it lives, on any host.
left=0
for db in $(psql "$url" -Atc "SELECT datname FROM pg_database d WHERE datname ~ '^dbtest_.*_d[0-9a-f]{8}_[0-9]+$' \
        AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.classid = 1684173825 AND l.objsubid = 2 \
            AND l.objid::bigint = ('x' || substring(d.datname from '_d([0-9a-f]{8})_[0-9]+$'))::bit(32)::bigint)"); do
    echo "check-clean: leftover $db"
    left=$((left + 1))
done
# Names of older db-test builds (`_d<pid>x<n>`, owned by a local pid): per-test
# databases of processes still running here (another suite, a benchmark)
# are theirs; any other is left over.
for db in $(psql "$url" -Atc "SELECT datname FROM pg_database WHERE datname ~ '^dbtest_.*_d[0-9]+x[0-9]+$'"); do
    pid=$(echo "$db" | sed -E 's/.*_d([0-9]+)x[0-9]+$/\1/')
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "check-clean: leftover $db"
        left=$((left + 1))
    fi
done
echo "check-clean: $left leftover per-test database(s)"
[ "$left" = 0 ] || fail=1
# Backends of processes that just exited take a moment to go.
for _ in $(seq 1 50); do
    conns=$(psql "$url" -Atc "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE 'dbtest\_%'")
    [ "$conns" = 0 ] && break
    sleep 0.2
done
echo "check-clean: $conns open connection(s) to db-test databases"
if [ "$conns" != 0 ]; then
    psql "$url" -c "SELECT pid, datname, application_name, state, backend_start FROM pg_stat_activity WHERE datname LIKE 'dbtest\_%'"
    fail=1
fi
exit $fail
