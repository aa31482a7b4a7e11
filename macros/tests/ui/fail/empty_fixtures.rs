use db_test::{db_test, TestDb};

#[db_test(fixtures())]
async fn empty(db: TestDb) {
    let _ = db;
}

fn main() {}
