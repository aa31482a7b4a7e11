use db_test::{TestDb, db_test};

#[db_test]
async fn plain(db: TestDb) {
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&db).await.unwrap();
    assert_eq!(one, 1);
}
