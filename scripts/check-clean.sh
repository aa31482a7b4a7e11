#!/usr/bin/env bash
# After a run: every database db-test created holds zero rows written by
# tests, no per-test database is left over, and no connection is left open.
# Usage: scripts/check-clean.sh [SERVER_URL]  (default: db-test's server)
set -euo pipefail
cd "$(dirname "$0")/.."
url=${1:-$(cargo run -q -p db-test --example server_url)}
fail=0
dbs=$(psql "$url" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'dbtest\_%\_w' ORDER BY 1")
for db in $dbs; do
    db_url=$(python3 -c 'import sys,urllib.parse as u; p=u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/"+sys.argv[2])))' "$url" "$db")
    # Rows in every table but the migration bookkeeping (race_marker is
    # written by a test migration, not by a test).
    real=$(psql "$db_url" -Atc "SELECT coalesce(sum((xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', schemaname, relname), false, true, '')))[1]::text::bigint), 0) FROM pg_stat_user_tables WHERE relname NOT IN ('_sqlx_migrations', 'race_marker')")
    echo "check-clean: $db: $real committed row(s)"
    [ "$real" = 0 ] || fail=1
done
# Per-test databases of processes still running here (another suite, a
# benchmark) are theirs; any other is left over.
left=0
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
