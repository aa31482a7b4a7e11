#!/usr/bin/env sh
# The db-test benchmark: A #[db_test], B #[db_test(isolation = "database")],
# C #[sqlx::test], D hand-rolled #[tokio::test] + pool + TRUNCATE, E a bare
# BEGIN/ROLLBACK loop, F #[db_test(flavor = "current_thread")] on PostgreSQL,
# and A, B, C on MySQL/MariaDB (with E) and SQLite, all in the same rounds. Prints one
# table, writes bench/results.json and bench/chart.svg. See bench/README.md.
#
#   bench/run.sh           full run (N = 50, 200, 1000; 5 rounds; compile and nextest comparisons;
#                          30-60 min on a 2-core VM, most of it B and C at N = 1000; --scaling-rounds 1 is shorter)
#   bench/run.sh --quick   N = 50, 3 rounds, no compile benchmark (about 3 min once built; CI runs it);
#                          writes target/db-test-bench/quick/ instead of bench/
#   bench/run.sh --chart-only   redraw bench/chart.svg from bench/results.json
#   bench/run.sh --help    all options
#
# Uses DATABASE_URL if set, otherwise db-test's embedded PostgreSQL; for
# MySQL/MariaDB DB_TEST_MYSQL_URL if set, otherwise db-test's embedded MariaDB
# (left out with a note when there are no mariadbd/mysqld binaries; --no-mysql,
# --no-sqlite leave a backend out).
set -eu
cd "$(dirname "$0")/.."
exec cargo run -q -p db-test-bench -- "$@"
