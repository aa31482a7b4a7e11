use db_test::{Db, TestDb, db_test};
use sqlx::PgPool;

async fn one<'e>(db: impl sqlx::PgExecutor<'e>) -> i32 {
    sqlx::query_scalar("SELECT 1").fetch_one(db).await.unwrap()
}

#[db_test(flavor = "current_thread", start_paused = true)]
async fn current_thread_paused(db: TestDb) {
    let t0 = tokio::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    assert!(t0.elapsed() >= std::time::Duration::from_secs(3600));
    assert_eq!(one(&db).await, 1);
}

#[db_test(flavor = "multi_thread", worker_threads = 2)]
async fn own_multi_thread(db: Db) {
    assert_eq!(one(&db).await, 1);
}

#[db_test(flavor = "multi_thread")]
async fn shared_multi_thread(pool: PgPool) {
    assert_eq!(one(&pool).await, 1);
}

#[db_test(
    flavor = "current_thread",
    start_paused = false,
    isolation = "database"
)]
async fn current_thread_database(db: TestDb) {
    assert_eq!(one(&db).await, 1);
}
