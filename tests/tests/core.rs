//! Core behaviour of #[db_test] in transaction mode.

use db_test::{db_test, Db, TestDb};

#[db_test]
async fn inserts_are_visible_inside_the_test(db: TestDb) {
    sqlx::query("INSERT INTO users (email) VALUES ('a@example.com')")
        .execute(&db)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[db_test]
async fn app_commit_becomes_savepoint(db: TestDb) {
    let app: Db = db.db();
    let mut tx = app.begin().await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('tx@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[db_test]
async fn failed_statement_then_working_one(db: TestDb) {
    sqlx::query("INSERT INTO users (email) VALUES ('dup@example.com')")
        .execute(&db)
        .await
        .unwrap();
    let err = sqlx::query("INSERT INTO users (email) VALUES ('dup@example.com')")
        .execute(&db)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("23505")
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
}
