#!/usr/bin/env bash
# The whole test suite, as CI runs it. Installs what it needs (PostgreSQL
# binaries, cargo-nextest) and starts what it needs (db-test's embedded
# server). Steps:
#   1. every test of the workspace on the embedded server (DATABASE_URL unset);
#   2. the same suite through DATABASE_URL, pointed at a database holding
#      user data (on the embedded server), which must be left unchanged; and
#      at an external server too when one answers at DB_TEST_EXTERNAL_URL
#      (default postgres://postgres@127.0.0.1:5432/test), likewise;
#   3. the suite under cargo-nextest (one process per test);
#   4. two nextest shards at once against one fresh server;
#   5. a check that nothing was committed or left behind;
#   6. the benchmark in its --quick form, so it keeps working.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==== %s\n' "$*"; }

scripts/ensure-postgres.sh
command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked
unset DATABASE_URL

step "1/6 cargo test --workspace (embedded PostgreSQL)"
cargo test --workspace

step "2/6 cargo test --workspace with DATABASE_URL naming a database that holds user data"
# A database of the user's, with a schema and rows, on the embedded server:
# the whole suite runs with DATABASE_URL pointing at it, and afterwards its
# schema and data must be exactly as before.
server=$(cargo run -q -p db-test --example server_url)
psql "$server" -qc 'DROP DATABASE IF EXISTS user_app_data' -c 'CREATE DATABASE user_app_data'
user_db=$(cargo run -q -p db-test --example server_url -- user_app_data)
psql "$user_db" -q <<'SQL'
CREATE TABLE customers (id serial PRIMARY KEY, email text UNIQUE NOT NULL, balance numeric NOT NULL);
INSERT INTO customers (email, balance) SELECT 'c' || g || '@example.com', g * 10 FROM generate_series(1, 100) g;
CREATE TABLE users (id bigserial PRIMARY KEY, email text);  -- same name as the test schema's table
INSERT INTO users (email) VALUES ('real-user@example.com');
SQL
fingerprint() {
    { pg_dump --schema-only --no-owner "$1" | grep -v '^--' | grep -v '^$' | grep -v '^\\\(un\)\?restrict'
      pg_dump --data-only --no-owner "$1" | grep -v '^--' | grep -v '^$' | grep -v '^\\\(un\)\?restrict'
    } | sha256sum
}
# Runs the whole suite with DATABASE_URL=$1, and checks that the database it
# names is exactly as before and that nothing was left behind on its server.
suite_leaves_untouched() {
    local before after
    before=$(fingerprint "$1")
    DATABASE_URL="$1" cargo test --workspace
    after=$(fingerprint "$1")
    [ "$before" = "$after" ] || { echo "the database named in DATABASE_URL ($1) changed"; exit 1; }
    echo "safety: the database named in DATABASE_URL ($1) is unchanged after the whole suite"
    scripts/check-clean.sh "$1"
}
suite_leaves_untouched "$user_db"
psql "$server" -qc 'DROP DATABASE user_app_data'

external=${DB_TEST_EXTERNAL_URL:-postgres://postgres@127.0.0.1:5432/test}
if psql "$external" -Atc 'SELECT 1' >/dev/null 2>&1; then
    suite_leaves_untouched "$external"
else
    echo "(no external server at $external: skipped the external-server run)"
fi

step "3/6 cargo nextest run --workspace"
cargo nextest run --workspace --profile ci

step "4/6 sharded nextest run (hash:1/2 and hash:2/2 at once, one server)"
scripts/sharded-run.sh

step "5/6 nothing committed, nothing left behind"
scripts/check-clean.sh

if [ -x bench/run.sh ]; then
    step "6/6 benchmark (--quick)"
    bench/run.sh --quick
fi
echo
echo "test-all: all steps passed"
