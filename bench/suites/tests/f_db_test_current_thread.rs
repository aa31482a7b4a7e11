//! F: `#[db_test(flavor = "current_thread")]` in transaction mode: the body
//! runs on a current-thread tokio runtime of the test's own (built per test,
//! dropped at its end), while db-test's engine, pools and the test's
//! connection stay on the shared multi-thread runtime. N tests from build.rs.

use db_test::{TestDb, db_test};
use db_test_bench_suites::workload;

include!(concat!(env!("OUT_DIR"), "/f_db_test_current_thread.rs"));
