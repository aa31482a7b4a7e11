//! C on MySQL/MariaDB: `#[sqlx::test]`: a fresh database and every migration
//! per test. Needs `DATABASE_URL`; bench/run.sh points it at a database it
//! created, where sqlx keeps its `_sqlx_test_databases` bookkeeping.

use db_test_bench_suites::workload;
use sqlx::MySqlPool;

include!(concat!(env!("OUT_DIR"), "/c_sqlx_test_mysql.rs"));
