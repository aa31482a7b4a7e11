use db_test::{db_test, Db, TestDb};

#[db_test(
    timeout = "30s",
    migrations = false,
    check_constraints = false,
    isolation = "database",
    fixtures("fixtures/some.sql"),
    fixtures(path = "fixtures", scripts("some"))
)]
async fn all_keys(db: TestDb, other: Db) {
    let _ = (db, other);
}

#[db_test(migrations = "../../migrations", isolation = "transaction", timeout = "250ms")]
async fn path_migrations(db: Db) {
    let _ = db;
}

fn main() {}
