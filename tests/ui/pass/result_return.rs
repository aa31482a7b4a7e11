use db_test::{TestDb, db_test};

#[db_test]
async fn returns_result(db: TestDb) -> Result<(), String> {
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&db)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(one, 1);
    Ok(())
}
