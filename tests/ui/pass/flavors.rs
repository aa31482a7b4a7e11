use db_test::{db_test, Db, TestDb};
use sqlx::PgPool;

#[db_test(flavor = "current_thread", start_paused = true)]
async fn current_thread_paused(db: TestDb) {
    let _ = db;
}

#[db_test(flavor = "multi_thread", worker_threads = 2)]
async fn own_multi_thread(db: Db) {
    let _ = db;
}

#[db_test(flavor = "multi_thread")]
async fn shared_multi_thread(pool: PgPool) {
    let _ = pool;
}

#[db_test(flavor = "current_thread", start_paused = false, isolation = "database")]
async fn current_thread_database(db: TestDb) {
    let _ = db;
}

fn main() {}
