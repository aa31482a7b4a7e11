use db_test::{Db, TestDb, db_test};

#[db_test(
    timeout = "30s",
    migrations = false,
    check_constraints = false,
    isolation = "database",
    fixtures("fixtures/some.sql"),
    fixtures(path = "fixtures", scripts("some"))
)]
async fn all_keys(db: TestDb, other: Db) {
    // No migrations; the one fixture, applied once for each attribute.
    let notes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM fixture_notes")
        .fetch_one(&other)
        .await
        .unwrap();
    assert_eq!(notes, 2);
    let migrated: bool = sqlx::query_scalar("SELECT to_regclass('users') IS NOT NULL")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(!migrated);
}

#[db_test(
    migrations = "../example-app/migrations",
    isolation = "transaction",
    timeout = "2500ms"
)]
async fn path_migrations(db: Db) {
    // The example app's schema, not this crate's (`migrations/`).
    let tokens: bool = sqlx::query_scalar("SELECT to_regclass('api_tokens') IS NOT NULL")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(tokens);
}
