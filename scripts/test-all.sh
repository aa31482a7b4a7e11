#!/usr/bin/env bash
# The whole test suite, as CI runs it. Installs what it needs (PostgreSQL
# binaries, cargo-nextest) and starts what it needs (db-test's embedded
# server). Steps:
#   1. every test of the workspace on the embedded server (DATABASE_URL unset);
#   2. the same suite through DATABASE_URL: the embedded server's URL, and an
#      external server too when one answers at DB_TEST_EXTERNAL_URL (default
#      postgres://postgres@127.0.0.1:5432/test), whose own database must be
#      left untouched;
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

step "2/6 cargo test --workspace with DATABASE_URL"
embedded_url=$(cargo run -q -p db-test --example server_url)
DATABASE_URL="$embedded_url" cargo test --workspace
external=${DB_TEST_EXTERNAL_URL:-postgres://postgres@127.0.0.1:5432/test}
if psql "$external" -Atc 'SELECT 1' >/dev/null 2>&1; then
    fingerprint() {
        { pg_dump --schema-only --no-owner "$external" 2>/dev/null | grep -v '^--' | grep -v '^$' | grep -v '^\\\(un\)\?restrict'
          psql "$external" -Atc "SELECT coalesce(sum((xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', schemaname, relname), false, true, '')))[1]::text::bigint), 0) FROM pg_stat_user_tables"
        } | sha256sum
    }
    before=$(fingerprint)
    DATABASE_URL="$external" cargo test --workspace
    after=$(fingerprint)
    [ "$before" = "$after" ] || { echo "the database named in DATABASE_URL changed"; exit 1; }
    echo "external server: the database in DATABASE_URL is unchanged"
    scripts/check-clean.sh "$external"
else
    echo "(no external server at $external: skipped that half of step 2)"
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
