//! sqlx 0.9.0's `tests/sqlite/test-attr.rs`, ported by renaming
//! `#[sqlx::test]` to `#[db_test]`. Its migrations and fixtures are copied
//! into `tests/sqlite/`. Two adaptations, each marked `db-test:` below:
//! the database path `it_gets_a_pool` checks is db-test's, and the fixtures
//! are named by path (`sqlite/fixtures`), because `tests/fixtures/` next to
//! this file holds other backends' fixtures of the same names.

// sqlx's code is kept as written (`.bind(&1)`).
#![allow(clippy::needless_borrows_for_generic_args)]

// The no-arg variant is covered by other tests already.

use db_test::db_test;
use sqlx::{Row, SqlitePool};

const MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("tests/sqlite/migrations");

#[db_test]
async fn it_gets_a_pool(pool: SqlitePool) -> sqlx::Result<()> {
    let mut conn = pool.acquire().await?;

    // https://www.sqlite.org/pragma.html#pragma_database_list
    let db = sqlx::query("PRAGMA database_list")
        .fetch_one(&mut *conn)
        .await?;

    let db_name = db.get::<String, _>(2);

    // db-test: sqlx checks for `target/sqlx/test-dbs/sqlite_test_attr/it_gets_a_pool.sqlite`;
    // db-test's copies are `db-<pid>-<n>.sqlite` files (under `target/debug/db-test-sqlite/`
    // unless DB_TEST_SQLITE_DIR or a `sqlite:` URL names another directory).
    let file = db_name.rsplit('/').next().unwrap_or_default();
    assert!(
        file.starts_with("db-") && file.ends_with(".sqlite"),
        "db_name: {:?}",
        db_name
    );

    Ok(())
}

// This should apply migrations and then `fixtures/users.sql`
// db-test: `fixtures(path = "sqlite/fixtures", scripts("users"))` for `fixtures("users")`.
#[db_test(
    migrations = "tests/sqlite/migrations",
    fixtures(path = "sqlite/fixtures", scripts("users"))
)]
async fn it_gets_users(pool: SqlitePool) -> sqlx::Result<()> {
    let usernames: Vec<String> =
        sqlx::query_scalar(r#"SELECT username FROM "user" ORDER BY username"#)
            .fetch_all(&pool)
            .await?;

    assert_eq!(usernames, ["alice", "bob"]);

    let post_exists: bool = sqlx::query_scalar("SELECT exists(SELECT 1 FROM post)")
        .fetch_one(&pool)
        .await?;

    assert!(!post_exists);

    let comment_exists: bool = sqlx::query_scalar("SELECT exists(SELECT 1 FROM comment)")
        .fetch_one(&pool)
        .await?;

    assert!(!comment_exists);

    Ok(())
}

// db-test: fixtures by path, as above.
#[db_test(
    migrations = "tests/sqlite/migrations",
    fixtures(path = "sqlite/fixtures", scripts("users", "posts"))
)]
async fn it_gets_posts(pool: SqlitePool) -> sqlx::Result<()> {
    let post_contents: Vec<String> =
        sqlx::query_scalar("SELECT content FROM post ORDER BY created_at")
            .fetch_all(&pool)
            .await?;

    assert_eq!(
        post_contents,
        [
            "This new computer is lightning-fast!",
            "@alice is a haxxor :("
        ]
    );

    let comment_exists: bool = sqlx::query_scalar("SELECT exists(SELECT 1 FROM comment)")
        .fetch_one(&pool)
        .await?;

    assert!(!comment_exists);

    Ok(())
}

// Try `migrator`
// db-test: fixtures by path, as above.
#[db_test(
    migrator = "MIGRATOR",
    fixtures(path = "sqlite/fixtures", scripts("users", "posts", "comments"))
)]
async fn it_gets_comments(pool: SqlitePool) -> sqlx::Result<()> {
    let post_1_comments: Vec<String> =
        sqlx::query_scalar("SELECT content FROM comment WHERE post_id = ? ORDER BY created_at")
            .bind(&1)
            .fetch_all(&pool)
            .await?;

    assert_eq!(
        post_1_comments,
        ["lol bet ur still bad, 1v1 me", "you're on!"]
    );

    let post_2_comments: Vec<String> =
        sqlx::query_scalar("SELECT content FROM comment WHERE post_id = ? ORDER BY created_at")
            .bind(&2)
            .fetch_all(&pool)
            .await?;

    assert_eq!(post_2_comments, ["lol you're just mad you lost :P"]);

    Ok(())
}

// db-test: `./sqlite/fixtures` for `./fixtures`, as above.
#[db_test(
    migrations = "tests/sqlite/migrations",
    fixtures(path = "./sqlite/fixtures", scripts("users", "posts"))
)]
async fn this_should_compile(_pool: SqlitePool) -> sqlx::Result<()> {
    Ok(())
}
