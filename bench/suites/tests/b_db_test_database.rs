//! B: `#[db_test(isolation = "database")]`: a template clone per test.

use db_test::{TestDb, db_test};
use db_test_bench_suites::workload;

include!(concat!(env!("OUT_DIR"), "/b_db_test_database.rs"));
