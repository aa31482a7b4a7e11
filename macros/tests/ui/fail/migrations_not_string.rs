use db_test::{db_test, TestDb};

#[db_test(migrations = 5)]
async fn migrations_number(db: TestDb) {
    let _ = db;
}

fn main() {}
