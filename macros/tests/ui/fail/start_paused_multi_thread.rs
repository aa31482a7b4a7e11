use db_test::{db_test, TestDb};

#[db_test(flavor = "multi_thread", start_paused = true)]
async fn paused_multi_thread(db: TestDb) {
    let _ = db;
}

#[db_test(worker_threads = 4, start_paused = true)]
async fn paused_with_workers(db: TestDb) {
    let _ = db;
}

fn main() {}
