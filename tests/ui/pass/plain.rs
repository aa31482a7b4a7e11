use db_test::{db_test, TestDb};

#[db_test]
async fn plain(db: TestDb) {
    let _ = db;
}

fn main() {}
