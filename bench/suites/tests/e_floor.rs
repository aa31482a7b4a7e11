//! E: the physical floor. One connection runs `BEGIN; <workload>; ROLLBACK`
//! N times, with no test framework. `harness = false`: this is `main`.
//!
//! `BENCH_E_MODE` adds, step by step, what `#[db_test]` does on top of the
//! floor, so that the benchmark can show where A's time goes:
//!
//! - `floor` (default): the floor above, on a current-thread runtime.
//! - `savepoints`: the statements db-test's transaction mode sends:
//!   `BEGIN; SAVEPOINT dbt_auto`, `RELEASE SAVEPOINT dbt_auto; SAVEPOINT
//!   dbt_auto` before every statement after the first, `RELEASE SAVEPOINT
//!   dbt_auto; SET CONSTRAINTS ALL IMMEDIATE`, `ROLLBACK`.
//! - `savepoints-mt`: the same, each iteration in `block_on` of a 2-worker
//!   multi-thread runtime (db-test's shared runtime), so that every IO
//!   wake-up hops from a worker thread to the blocked caller.
//! - `savepoints-mt-thread`: the same, each iteration on a new thread (as
//!   libtest runs each test on a thread of its own). This is A's shape.
//! - `savepoints-mt-spawn`, `savepoints-mt-thread-spawn`: like the two
//!   above, but the iteration runs as a task spawned onto the runtime and
//!   the caller only waits for it, so IO wake-ups stay on the worker threads.

use db_test_bench_suites::{database_url, floor_runtime, workload};
use sqlx::{Connection, Executor, PgConnection};

include!(concat!(env!("OUT_DIR"), "/e_floor.rs"));

async fn floor(conn: &mut PgConnection, i: usize) {
    let mut tx = conn.begin().await.expect("BEGIN");
    workload!(&mut *tx, i);
    tx.rollback().await.expect("ROLLBACK");
}

async fn savepoints(conn: &mut PgConnection, i: usize) {
    conn.execute("BEGIN; SAVEPOINT dbt_auto")
        .await
        .expect("BEGIN; SAVEPOINT");
    let first = std::cell::Cell::new(true);
    workload!(
        {
            if !first.replace(false) {
                conn.execute("RELEASE SAVEPOINT dbt_auto; SAVEPOINT dbt_auto")
                    .await
                    .expect("RELEASE; SAVEPOINT");
            }
            &mut *conn
        },
        i
    );
    conn.execute("RELEASE SAVEPOINT dbt_auto; SET CONSTRAINTS ALL IMMEDIATE")
        .await
        .expect("RELEASE; SET CONSTRAINTS");
    conn.execute("ROLLBACK").await.expect("ROLLBACK");
}

fn main() {
    if std::env::var_os("DATABASE_URL").is_none() {
        eprintln!("e_floor: DATABASE_URL is not set; skipped (bench/run.sh sets it)");
        return;
    }
    let mode = std::env::var("BENCH_E_MODE").unwrap_or_else(|_| "floor".into());
    let rt = floor_runtime(match mode.as_str() {
        "floor" | "savepoints" => false,
        "savepoints-mt"
        | "savepoints-mt-thread"
        | "savepoints-mt-spawn"
        | "savepoints-mt-thread-spawn" => true,
        other => panic!("unknown BENCH_E_MODE {other:?}"),
    });
    let mut conn = rt
        .block_on(PgConnection::connect(&database_url()))
        .expect("connect to DATABASE_URL");
    // The spawned task owns the connection and hands it back.
    let spawned = |rt: &tokio::runtime::Runtime, mut conn: PgConnection, i: usize| {
        rt.block_on(rt.spawn(async move {
            savepoints(&mut conn, i).await;
            conn
        }))
        .expect("the iteration's task")
    };
    let start = std::time::Instant::now();
    match mode.as_str() {
        "floor" => rt.block_on(async {
            for i in 0..N {
                floor(&mut conn, i).await;
            }
        }),
        "savepoints" => rt.block_on(async {
            for i in 0..N {
                savepoints(&mut conn, i).await;
            }
        }),
        "savepoints-mt" => {
            for i in 0..N {
                rt.block_on(savepoints(&mut conn, i));
            }
        }
        "savepoints-mt-thread" => {
            for i in 0..N {
                std::thread::scope(|s| {
                    s.spawn(|| rt.block_on(savepoints(&mut conn, i)))
                        .join()
                        .expect("the iteration's thread")
                });
            }
        }
        "savepoints-mt-spawn" => {
            for i in 0..N {
                conn = spawned(&rt, conn, i);
            }
        }
        _ => {
            for i in 0..N {
                conn = std::thread::scope(|s| {
                    s.spawn(|| spawned(&rt, conn, i))
                        .join()
                        .expect("the iteration's thread")
                });
            }
        }
    }
    let loop_time = start.elapsed();
    rt.block_on(conn.close()).expect("close the connection");
    println!(
        "e_floor ({mode}): {N} iterations in {:.3} ms",
        loop_time.as_secs_f64() * 1e3
    );
}
