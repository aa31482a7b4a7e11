//! B on SQLite: `#[db_test(isolation = "database")]`: a database file of the
//! test's own, a copy of db-test's migrated template.

use db_test::db_test;
use db_test::sqlite::TestDb;
use db_test_bench_suites::workload;

include!(concat!(env!("OUT_DIR"), "/b_db_test_database_sqlite.rs"));
