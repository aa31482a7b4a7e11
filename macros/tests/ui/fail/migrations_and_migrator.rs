use db_test::{db_test, TestDb};

#[db_test(migrations = "migrations", migrator = "crate::MIGRATOR")]
async fn both(db: TestDb) {
    let _ = db;
}

#[db_test(migrator = "crate::MIGRATOR", migrations = false)]
async fn both_reversed(db: TestDb) {
    let _ = db;
}

fn main() {}
