use db_test::{db_test, TestDb};

#[db_test(flavor = "current_thread", worker_threads = 2)]
async fn worker_threads_on_current_thread(db: TestDb) {
    let _ = db;
}

fn main() {}
