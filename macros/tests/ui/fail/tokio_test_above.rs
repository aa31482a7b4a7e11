use db_test::{db_test, TestDb};

#[tokio::test]
#[db_test]
async fn stacked(db: TestDb) {
    let _ = db;
}

fn main() {}
