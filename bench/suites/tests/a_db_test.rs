//! A: `#[db_test]` in transaction mode (the default). N tests from build.rs.

use db_test::{TestDb, db_test};
use db_test_bench_suites::workload;

include!(concat!(env!("OUT_DIR"), "/a_db_test.rs"));
