//! A on SQLite: `#[db_test]` in transaction mode (the default), with
//! `db_test::sqlite::TestDb`, which chooses the backend. N tests from build.rs.

use db_test::db_test;
use db_test::sqlite::TestDb;
use db_test_bench_suites::workload;

include!(concat!(env!("OUT_DIR"), "/a_db_test_sqlite.rs"));
