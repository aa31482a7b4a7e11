use db_test::{db_test, TestDb};

#[db_test]
fn not_async(db: TestDb) {
    let _ = db;
}

fn main() {}
