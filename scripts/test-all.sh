#!/usr/bin/env bash
# The whole test suite, as CI runs it, on the three databases. Installs what
# it needs (PostgreSQL's and MariaDB's server binaries, cargo-nextest) and
# starts what it needs (db-test's embedded servers start themselves). Steps:
#   1. every test of the workspace on the embedded servers (no URL set):
#      PostgreSQL, MariaDB, and SQLite files;
#   2. the same suite, under cargo-nextest in two shards at once, through
#      URLs that name databases holding user data (DATABASE_URL for
#      PostgreSQL, DB_TEST_MYSQL_URL, DB_TEST_SQLITE_URL), which must be
#      left unchanged; and against the external servers too
#      when they answer (DB_TEST_EXTERNAL_URL, default
#      postgres://postgres@127.0.0.1:5432/test; DB_TEST_EXTERNAL_MYSQL_URL,
#      default mysql://root@127.0.0.1:3306/test), likewise;
#   3. the MySQL and SQLite suites with their URL in DATABASE_URL itself
#      (under nextest, as the external-server run of step 2);
#   4. the suite under cargo-nextest (one process per test), as two shards
#      at once against one fresh server;
#   5. a check that nothing was committed or left behind;
#   6. the benchmark in its --quick form, one round, so it keeps working.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
step() { printf '\n==== %s (at %ds)\n' "$*" "$(($(date +%s) - started))"; }
. scripts/mysql-lib.sh

scripts/ensure-postgres.sh
scripts/ensure-mariadb.sh
command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked
unset DATABASE_URL DB_TEST_POSTGRES_URL DB_TEST_MYSQL_URL DB_TEST_SQLITE_URL

step "1/6 cargo test --workspace (embedded PostgreSQL, embedded MariaDB, SQLite)"
cargo test --workspace

step "2/6 the suite under nextest, two shards at once, with URLs naming databases that hold user data"
# A database of the user's on each server, with a schema and rows: the whole
# suite runs with the URLs pointing at them, and afterwards their schema and
# data must be exactly as before.
server=$(cargo run -q -p db-test --example server_url)
psql "$server" -qc 'DROP DATABASE IF EXISTS user_app_data' -c 'CREATE DATABASE user_app_data'
user_db=$(cargo run -q -p db-test --example server_url -- user_app_data)
psql "$user_db" -q <<'SQL'
CREATE TABLE customers (id serial PRIMARY KEY, email text UNIQUE NOT NULL, balance numeric NOT NULL);
INSERT INTO customers (email, balance) SELECT 'c' || g || '@example.com', g * 10 FROM generate_series(1, 100) g;
CREATE TABLE users (id bigserial PRIMARY KEY, email text);  -- same name as the test schema's table
INSERT INTO users (email) VALUES ('real-user@example.com');
SQL
my_server=$(cargo run -q -p db-test --features mysql --example server_url -- --mysql)
my "$my_server" -- -e 'DROP DATABASE IF EXISTS user_app_data; CREATE DATABASE user_app_data'
my_user_db=$(cargo run -q -p db-test --features mysql --example server_url -- --mysql user_app_data)
my "$my_user_db" -- <<'SQL'
CREATE TABLE customers (id INT AUTO_INCREMENT PRIMARY KEY, email VARCHAR(100) UNIQUE NOT NULL, balance DECIMAL(12,2) NOT NULL);
INSERT INTO customers (email, balance)
    WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 100)
    SELECT CONCAT('c', n, '@example.com'), n * 10 FROM g;
CREATE TABLE users (id BIGINT AUTO_INCREMENT PRIMARY KEY, email TEXT);
INSERT INTO users (email) VALUES ('real-user@example.com');
SQL
sqlite_dir=$(mktemp -d /tmp/db-test-sqlite-user.XXXXXX)
python3 - "$sqlite_dir/app.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.executescript("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);"
                 "INSERT INTO users (email) VALUES ('real-user@example.com');")
db.close()
PY
fingerprint() {
    { pg_dump --schema-only --no-owner "$1" | grep -v '^--' | grep -v '^$' | grep -v '^\\\(un\)\?restrict'
      pg_dump --data-only --no-owner "$1" | grep -v '^--' | grep -v '^$' | grep -v '^\\\(un\)\?restrict'
    } | sha256sum
}
my_fingerprint() {
    local db
    db=$(python3 -c 'import sys,urllib.parse as u; print(u.urlsplit(sys.argv[1]).path.lstrip("/"))' "$1")
    my_dump "$1" "$db" | sha256sum
}
# Runs the whole suite with the given PostgreSQL, MySQL and SQLite URLs, and
# checks that the databases they name are exactly as before and that
# nothing was left behind on the PostgreSQL server.
suite_leaves_untouched() {
    local pg=$1 mysql=$2 sqlite=$3 before after my_before my_after sq_before sq_after
    shift 3
    before=$(fingerprint "$pg")
    my_before=$(my_fingerprint "$mysql")
    sq_before=$(sha256sum <"${sqlite#sqlite://}")
    DATABASE_URL="$pg" DB_TEST_MYSQL_URL="$mysql" DB_TEST_SQLITE_URL="$sqlite" "$@"
    after=$(fingerprint "$pg")
    my_after=$(my_fingerprint "$mysql")
    sq_after=$(sha256sum <"${sqlite#sqlite://}")
    [ "$before" = "$after" ] || { echo "the database named in DATABASE_URL ($pg) changed"; exit 1; }
    [ "$my_before" = "$my_after" ] || { echo "the database named in DB_TEST_MYSQL_URL ($mysql) changed"; exit 1; }
    [ "$sq_before" = "$sq_after" ] || { echo "the file named in DB_TEST_SQLITE_URL ($sqlite) changed"; exit 1; }
    echo "safety: $pg, $mysql and $sqlite are unchanged after the whole suite"
    scripts/check-clean.sh "$pg" "$mysql"
}
# Every test, under nextest in two shards at once: both shards' test
# processes on these servers at the same time, through the URLs, as two
# machines sharing one server (step 4 runs the same on the embedded
# servers; step 1 ran the suite under `cargo test`, a process per test
# binary). The UI test (trybuild: compile errors, no database) and the
# doctests (none runs a test) ran in step 1.
suite_leaves_untouched "$user_db" "$my_user_db" "sqlite://$sqlite_dir/app.db" \
    scripts/sharded-run.sh
psql "$server" -qc 'DROP DATABASE user_app_data'
my "$my_server" -- -e 'DROP DATABASE user_app_data'

external=${DB_TEST_EXTERNAL_URL:-postgres://postgres@127.0.0.1:5432/test}
external_my=${DB_TEST_EXTERNAL_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
external_suites='binary(api) | binary(core) | binary(matrix) | binary(mysql_core) | binary(sqlite_core) | binary(database_mode) | binary(hardening) | binary(sqlx_compat)'
if psql "$external" -Atc 'SELECT 1' >/dev/null 2>&1 && my "$external_my" -- -N -e 'SELECT 1' >/dev/null 2>&1; then
    # The servers' own databases: the core suites and the example app (the
    # whole workspace ran above; this keeps CI well under 20 minutes).
    # Under nextest, which builds every test target as step 1 did: cargo
    # test with a few `--test`s resolves features otherwise and built the
    # whole dependency tree again (2 min).
    suite_leaves_untouched "$external" "$external_my" "sqlite://$sqlite_dir/app.db" \
        cargo nextest run --workspace --profile ci -E "$external_suites"
else
    echo "(no external servers at $external and $external_my: skipped the external-server run)"
fi

step "3/6 the MySQL and SQLite suites with their URL in DATABASE_URL"
DATABASE_URL="$my_server" cargo nextest run --workspace --profile ci -E 'binary(mysql_core) | binary(mysql_test_attr)'
DATABASE_URL="sqlite://$sqlite_dir/app.db" cargo nextest run --workspace --profile ci -E 'binary(sqlite_core) | binary(sqlite_test_attr)'
rm -rf "$sqlite_dir"

# Every test under nextest, in two shards: a whole-workspace `cargo nextest
# run` before it ran the same tests once more (less the two that replace
# templates on purpose, which step 1 runs), for 100 s of CI.
step "4/6 cargo nextest run, sharded (hash:1/2 and hash:2/2 at once, one server)"
scripts/sharded-run.sh

step "5/6 nothing committed, nothing left behind"
scripts/check-clean.sh "$server" "$my_server"

if [ -x bench/run.sh ]; then
    step "6/6 benchmark (--quick, one round: that it works, not its figures)"
    bench/run.sh --quick --rounds 1
fi
echo
echo "test-all: all steps passed"
