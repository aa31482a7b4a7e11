use db_test::{db_test, TestDb};

#[db_test]
#[tokio::test]
async fn stacked(db: TestDb) {
    let _ = db;
}

fn main() {}
