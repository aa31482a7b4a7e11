// A project that renamed the dependency (or re-exports db-test from a
// crate of its own) says where it is.
use ::db_test as testing;
use testing::{TestDb, db_test};

#[db_test(crate = "testing", timeout = "1.5s")]
async fn renamed(db: TestDb) {
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&db).await.unwrap();
    assert_eq!(one, 1);
}
