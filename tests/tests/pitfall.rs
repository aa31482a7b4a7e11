//! The pitfall db-test exists to fix, and the fix.
//!
//! `#[tokio::test]` builds a runtime per test. A pool whose connections were
//! opened on runtime A is dead once A shuts down: using it from runtime B
//! fails ("A Tokio 1.x context was found, but it is being shutdown", an IO
//! driver error, or `PoolTimedOut`). Every `#[db_test]` runs on one shared
//! runtime, so a static pool stays valid for the whole process.

use std::time::Duration;

use db_test::{TestDb, db_test};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::OnceCell;

fn is_dead_runtime_error(err: &sqlx::Error) -> bool {
    let msg = err.to_string();
    matches!(err, sqlx::Error::PoolTimedOut)
        || msg.contains("being shutdown")
        || msg.contains("IO driver")
        || msg.contains("runtime")
}

/// Like a test that runs a few statements. The first may still get through
/// on readiness cached from runtime A; the next ones need the dead driver.
async fn keep_querying(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    for _ in 0..20 {
        sqlx::query("SELECT pg_sleep(0.001)")
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Runs `first` on runtime A, drops A, then runs `second` on runtime B, on a
/// plain thread: what two `#[tokio::test]`s sharing a static do.
fn across_two_runtimes<T: Send + 'static, R: Send + 'static>(
    first: impl std::future::Future<Output = T> + Send + 'static,
    second: impl FnOnce(T) -> std::pin::Pin<Box<dyn std::future::Future<Output = R> + Send>>
    + Send
    + 'static,
) -> R {
    std::thread::spawn(move || {
        let runtime_a = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let value = runtime_a.block_on(first);
        drop(runtime_a);
        let runtime_b = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime_b.block_on(second(value))
    })
    .join()
    .unwrap()
}

#[db_test]
async fn naive_runtime_per_test_breaks_a_shared_pool(db: TestDb) {
    let options = db.connect_options();
    // Test 1 (runtime A) opens the shared pool, uses it, and keeps a pooled
    // connection in a static cache; runtime A then shuts down.
    let result = across_two_runtimes(
        async move {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(2))
                .connect_with(options)
                .await
                .unwrap();
            sqlx::query("SELECT 1").execute(&pool).await.unwrap();
            let conn = pool.acquire().await.unwrap();
            (pool, conn)
        },
        // Test 2 (runtime B) uses the same pool and its connection.
        |(pool, mut conn)| {
            Box::pin(async move {
                let result = keep_querying(&mut conn).await;
                drop((conn, pool));
                result
            })
        },
    );
    let err = result.expect_err("a pooled connection must not survive its runtime");
    assert!(is_dead_runtime_error(&err), "unexpected error: {err}");
    // (sqlx 0.9's pool then discards such a connection and opens a new one,
    // a reconnect every such test pays again; under #[db_test] nothing ever
    // crosses runtimes.)
}

#[db_test]
async fn naive_runtime_per_test_breaks_a_shared_connection(db: TestDb) {
    use sqlx::ConnectOptions;
    let options = db.connect_options();
    let result = across_two_runtimes(
        async move {
            let mut conn = options.connect().await.unwrap();
            sqlx::query("SELECT 1").execute(&mut conn).await.unwrap();
            conn
        },
        |mut conn| Box::pin(async move { keep_querying(&mut conn).await }),
    );
    let err = result.expect_err("a connection must not survive its runtime");
    assert!(is_dead_runtime_error(&err), "unexpected error: {err}");
}

static POOL: OnceCell<PgPool> = OnceCell::const_new();

async fn shared_pool(db: &TestDb) -> &'static PgPool {
    POOL.get_or_init(|| async {
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(db.connect_options())
            .await
            .unwrap()
    })
    .await
}

// Fifty tests share one static pool: it was made by whichever test ran
// first, and it works in every later one, because they all run on db-test's
// one runtime.
macro_rules! static_pool_tests {
    ($($name:ident),*) => {$(
        #[db_test]
        async fn $name(db: TestDb) {
            let pool = shared_pool(&db).await;
            let n: i32 = sqlx::query_scalar("SELECT 41 + 1").fetch_one(pool).await.unwrap();
            assert_eq!(n, 42);
        }
    )*};
}

static_pool_tests!(
    pool_01, pool_02, pool_03, pool_04, pool_05, pool_06, pool_07, pool_08, pool_09, pool_10,
    pool_11, pool_12, pool_13, pool_14, pool_15, pool_16, pool_17, pool_18, pool_19, pool_20,
    pool_21, pool_22, pool_23, pool_24, pool_25, pool_26, pool_27, pool_28, pool_29, pool_30,
    pool_31, pool_32, pool_33, pool_34, pool_35, pool_36, pool_37, pool_38, pool_39, pool_40,
    pool_41, pool_42, pool_43, pool_44, pool_45, pool_46, pool_47, pool_48, pool_49, pool_50
);
