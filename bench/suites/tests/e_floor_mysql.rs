//! E on MySQL/MariaDB: the floor there. One connection runs `BEGIN;
//! <workload in MySQL's dialect>; ROLLBACK` N times, with no test framework.
//! `harness = false`: this is `main`.
//!
//! `BENCH_E_MODE`:
//!
//! - `floor` (default): the loop on a current-thread runtime.
//! - `mt-thread`: each iteration on a new thread, in `block_on` of a 2-worker
//!   multi-thread runtime: the shape libtest (a thread per test) and db-test
//!   (its shared runtime) give a test, with nothing else of theirs. What A
//!   pays at least on top of the statements.

use db_test_bench_suites::{database_url, floor_runtime, workload};
use sqlx::{Connection, MySqlConnection};

// N: the same generated constant as PostgreSQL's floor.
include!(concat!(env!("OUT_DIR"), "/e_floor.rs"));

async fn floor(conn: &mut MySqlConnection, i: usize) {
    let mut tx = conn.begin().await.expect("BEGIN");
    workload!(mysql: &mut *tx, i);
    tx.rollback().await.expect("ROLLBACK");
}

fn main() {
    if std::env::var_os("DATABASE_URL").is_none() {
        eprintln!("e_floor_mysql: DATABASE_URL is not set; skipped (bench/run.sh sets it)");
        return;
    }
    let mode = std::env::var("BENCH_E_MODE").unwrap_or_else(|_| "floor".into());
    let rt = floor_runtime(match mode.as_str() {
        "floor" => false,
        "mt-thread" => true,
        other => panic!("unknown BENCH_E_MODE {other:?}"),
    });
    let mut conn = rt
        .block_on(MySqlConnection::connect(&database_url()))
        .expect("connect to DATABASE_URL");
    let start = std::time::Instant::now();
    if mode == "floor" {
        rt.block_on(async {
            for i in 0..N {
                floor(&mut conn, i).await;
            }
        });
    } else {
        for i in 0..N {
            std::thread::scope(|s| {
                s.spawn(|| rt.block_on(floor(&mut conn, i)))
                    .join()
                    .expect("the iteration's thread")
            });
        }
    }
    let loop_time = start.elapsed();
    rt.block_on(conn.close()).expect("close the connection");
    println!(
        "e_floor_mysql ({mode}): {N} iterations in {:.3} ms",
        loop_time.as_secs_f64() * 1e3
    );
}
