//! C on SQLite: `#[sqlx::test]`: a fresh database file and every migration
//! per test, under `target/sqlx/test-dbs/` of the working directory
//! (bench/run.sh runs it in a directory of its own and removes it).

use db_test_bench_suites::workload;
use sqlx::SqlitePool;

include!(concat!(env!("OUT_DIR"), "/c_sqlx_test_sqlite.rs"));
