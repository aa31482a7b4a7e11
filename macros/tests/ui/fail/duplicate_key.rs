use db_test::{db_test, TestDb};

#[db_test(timeout = "10s", timeout = "20s")]
async fn duplicate(db: TestDb) {
    let _ = db;
}

fn main() {}
