#!/usr/bin/env bash
# Two shards of the suite, run at the same time against ONE PostgreSQL, each
# from its own target directory, as two CI machines sharing a database would:
# build once, archive, then run `--partition hash:1/2` and `hash:2/2`.
#
# By default both shards share a brand-new embedded server (its own data
# directory), so they race to build every template; with DATABASE_URL set
# they share that server instead. Afterwards every template must exist
# exactly once, nothing half-built or left over may remain, and no test may
# have committed a row.
#
# With DB_TEST_SHARD_NAMESPACES=1 each shard runs in a PID namespace of its
# own (`unshare --pid --fork --mount-proc`, as root), as on two hosts or in
# two containers: their pids overlap and neither sees the other's processes,
# so ownership of per-test databases must be decided on the server. The
# shards then reach the server through DATABASE_URL (the embedded server's
# own start-up is coordinated through pids); without one, the fresh embedded
# server is started here first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh
command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked

ns=()
if [ "${DB_TEST_SHARD_NAMESPACES:-}" = 1 ]; then
    unshare --pid --fork --mount-proc --kill-child true \
        || { echo "sharded-run: unshare --pid is not permitted here (run as root)"; exit 1; }
    # bash as the namespace's pid 1 reaps orphans (a killed server's zombie
    # would otherwise look alive); the trailing `exit` keeps it from exec'ing.
    ns=(unshare --pid --fork --mount-proc --kill-child bash -c '"$@"; exit $?' pid1)
fi

work=$(mktemp -d /tmp/db-test-shards.XXXXXX)
chmod 755 "$work"
own_server=""
if [ -z "${DATABASE_URL:-}" ]; then
    export DB_TEST_DATA_DIR="$work/server"
    # Log every CREATE DATABASE, to check that each template is built once.
    export DB_TEST_PG_OPTIONS="-c log_statement=ddl"
    own_server=1
fi
cleanup() {
    if [ -n "$own_server" ] && [ -f "$work/server/"pg*/data/postmaster.pid ]; then
        kill -INT "$(head -n 1 "$work/server/"pg*/data/postmaster.pid)" 2>/dev/null || true
        sleep 1
    fi
    rm -rf "$work"
}
trap cleanup EXIT
if [ -n "$own_server" ] && [ ${#ns[@]} -gt 0 ]; then
    # Started from here, it stays up for the shards (which do not register
    # as its users).
    export DB_TEST_PG_IDLE_SECS=3600
    DATABASE_URL=$(cargo run -q -p db-test --example server_url)
    export DATABASE_URL
fi
if [ -n "${DATABASE_URL:-}" ]; then
    # A PostgreSQL DATABASE_URL: the MySQL and SQLite tests need URLs of
    # their own (one of another database is an error, by design).
    if [ -z "${DB_TEST_MYSQL_URL:-}" ]; then
        DB_TEST_MYSQL_URL=$(cargo run -q -p db-test --features mysql --example server_url -- --mysql)
        export DB_TEST_MYSQL_URL
    fi
    mkdir -p "$work/sqlite"
    export DB_TEST_SQLITE_URL=${DB_TEST_SQLITE_URL:-sqlite://$work/sqlite/tests.db}
fi

# The UI test drives cargo itself, and template_race and outdated_templates
# replace or drop templates on purpose (so they are built more than once);
# none of them is part of the sharded run.
filter='not (binary(ui) | binary(template_race) | binary(outdated_templates))'
cargo nextest archive --workspace --archive-file "$work/tests.tar.zst"

pids=()
for shard in 1 2; do
    mkdir -p "$work/shard$shard"
    "${ns[@]}" cargo nextest run --archive-file "$work/tests.tar.zst" --workspace-remap . \
        --extract-to "$work/shard$shard" --partition "hash:$shard/2" -E "$filter" \
        --profile ci >"$work/shard$shard.log" 2>&1 &
    pids+=($!)
done
status=0
for i in 0 1; do
    if wait "${pids[$i]}"; then echo "sharded-run: shard $((i + 1))/2 passed"; else echo "sharded-run: shard $((i + 1))/2 FAILED"; status=1; fi
    tail -n 3 "$work/shard$((i + 1)).log"
done
[ $status = 0 ] || { cat "$work"/shard*.log; exit 1; }

url=$(cargo run -q -p db-test --example server_url)
half=$(psql "$url" -Atc "SELECT count(*) FROM pg_database WHERE datname ~ '^dbtest_.*_b$'")
templates=$(psql "$url" -Atc "SELECT count(*) FROM pg_database WHERE datname ~ '^dbtest_.*_t$'")
echo "sharded-run: $templates template(s) on the server"
[ "$half" = 0 ] || { echo "sharded-run: half-built templates remain"; exit 1; }
if [ -n "$own_server" ]; then
    log=$(echo "$work/server/"pg*/server.log)
    builds=$(grep -o 'CREATE DATABASE "dbtest_[^"]*_b"' "$log" | sort)
    echo "sharded-run: $(echo "$builds" | grep -c . || true) template build(s) by two shards"
    dup=$(echo "$builds" | uniq -d)
    [ -z "$dup" ] || { echo "sharded-run: built more than once: $dup"; exit 1; }
fi
scripts/check-clean.sh "$url"
