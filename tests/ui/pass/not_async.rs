//! A test without `async`, as `#[sqlx::test]` accepts it (a suite's odd
//! synchronous test must not stop the rename of all the others). Its body
//! runs as the body of an async one would, with its parameters.

use db_test::{TestDb, db_test};
use sqlx::PgPool;

#[db_test]
fn not_async_without_parameters() {
    assert_eq!("kanban".len(), 6);
}

#[db_test]
fn not_async_with_a_test_db(db: TestDb) {
    // No `.await` in a synchronous body: what it can do with its database
    // is hand it on; it is the test's all the same.
    let name = db.connect_options().get_database().map(str::to_owned);
    assert!(
        name.is_some_and(|n| n.starts_with("dbtest_")),
        "the test's database"
    );
}

#[db_test]
fn not_async_with_a_pool(pool: PgPool) {
    assert!(!pool.is_closed());
}

#[db_test]
fn not_async_with_a_result() -> Result<(), String> {
    "42".parse::<i32>().map(drop).map_err(|e| e.to_string())
}
