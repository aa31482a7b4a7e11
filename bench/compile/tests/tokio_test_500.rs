//! The same 500 tests under `#[tokio::test]` with a pool per test (generated).
//! Built, and timed, by bench/run.sh.

use db_test_bench_suites::{fresh_pool, workload};

include!(concat!(env!("OUT_DIR"), "/tokio_test_500.rs"));
