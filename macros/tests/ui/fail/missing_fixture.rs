use db_test::{db_test, TestDb};

#[db_test(fixtures("does_not_exist"))]
async fn missing(db: TestDb) {
    let _ = db;
}

fn main() {}
