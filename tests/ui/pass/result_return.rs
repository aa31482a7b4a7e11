use db_test::{db_test, TestDb};

#[db_test]
async fn returns_result(db: TestDb) -> Result<(), String> {
    let _ = db;
    Ok(())
}

fn main() {}
