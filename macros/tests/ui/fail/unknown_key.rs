use db_test::{db_test, TestDb};

#[db_test(retries = 3)]
async fn unknown(db: TestDb) {
    let _ = db;
}

fn main() {}
