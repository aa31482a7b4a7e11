//! D: the hand-rolled way: `#[tokio::test]`, a fresh `PgPool` per test and a
//! `TRUNCATE` of every table afterwards. The tests share tables, so they must
//! run one at a time: `--test-threads=1`.

use db_test_bench_suites::{fresh_pool, truncate_all, workload};

include!(concat!(env!("OUT_DIR"), "/d_hand_rolled.rs"));
