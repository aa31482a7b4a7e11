//! 500 `#[db_test]` tests (generated). Built, and timed, by bench/run.sh.

use db_test::{TestDb, db_test};
use db_test_bench_suites::workload;

include!(concat!(env!("OUT_DIR"), "/db_test_500.rs"));
