//! A Postgres test file in `#[sqlx::test]` style, ported by replacing
//! `sqlx::test` with `db_test` and nothing else (the database names it
//! checks for are db-test's).

use db_test::db_test;
use sqlx::PgPool;

static FORUM: sqlx::migrate::Migrator = sqlx::migrate!("sqlx_compat/migrations");

#[db_test(migrations = "sqlx_compat/migrations")]
async fn it_gets_a_pool(pool: PgPool) -> sqlx::Result<()> {
    let mut conn = pool.acquire().await?;
    let db_name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut *conn)
        .await?;
    assert!(db_name.starts_with("dbtest_"), "dbname: {db_name:?}");
    Ok(())
}

// Migrations, then `fixtures/members.sql`.
#[db_test(migrations = "sqlx_compat/migrations", fixtures("members"))]
async fn it_gets_members(pool: PgPool) -> sqlx::Result<()> {
    let handles: Vec<String> = sqlx::query_scalar("SELECT handle FROM member ORDER BY handle")
        .fetch_all(&pool)
        .await?;
    assert_eq!(handles, ["ada", "grace"]);
    let threads: bool = sqlx::query_scalar("SELECT exists(SELECT 1 FROM thread)")
        .fetch_one(&pool)
        .await?;
    assert!(!threads);
    Ok(())
}

#[db_test(migrations = "sqlx_compat/migrations", fixtures("members", "threads"))]
async fn it_gets_threads(pool: PgPool) -> sqlx::Result<()> {
    let titles: Vec<String> = sqlx::query_scalar("SELECT title FROM thread ORDER BY posted_at")
        .fetch_all(&pool)
        .await?;
    assert_eq!(
        titles,
        ["Analytical engines, a retrospective", "On compilers"]
    );
    Ok(())
}

#[db_test(
    migrations = "sqlx_compat/migrations",
    fixtures("../fixtures/postgres/members.sql", "../fixtures/postgres/threads.sql")
)]
async fn it_gets_threads_explicit_fixture_paths(pool: PgPool) -> sqlx::Result<()> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM thread")
        .fetch_one(&pool)
        .await?;
    assert_eq!(n, 2);
    Ok(())
}

#[db_test(
    migrations = "sqlx_compat/migrations",
    fixtures("../fixtures/postgres/members.sql"),
    fixtures("threads")
)]
async fn it_gets_threads_mixed_fixture_paths(pool: PgPool) -> sqlx::Result<()> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM thread")
        .fetch_one(&pool)
        .await?;
    assert_eq!(n, 2);
    Ok(())
}

#[db_test(migrator = "FORUM", fixtures("members", "threads", "replies"))]
async fn it_gets_replies(pool: PgPool) -> sqlx::Result<()> {
    let bodies: Vec<String> =
        sqlx::query_scalar("SELECT body FROM reply WHERE thread_id = $1 ORDER BY posted_at")
            .bind(10_i64)
            .fetch_all(&pool)
            .await?;
    assert_eq!(bodies, ["Still the best machine.", "Thank you!"]);
    Ok(())
}

#[db_test(
    migrations = "sqlx_compat/migrations",
    fixtures(path = "../fixtures/postgres", scripts("members", "threads"))
)]
async fn fixtures_with_path_and_scripts(pool: PgPool) -> sqlx::Result<()> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM member")
        .fetch_one(&pool)
        .await?;
    assert_eq!(n, 2);
    Ok(())
}

#[db_test(migrations = false)]
async fn no_migrations(pool: PgPool) -> sqlx::Result<()> {
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&pool)
    .await?;
    assert_eq!(tables, 0);
    Ok(())
}

macro_rules! macro_using_test {
    ($migrations: literal) => {
        #[db_test(
                            migrations = $migrations,
                            fixtures(path = "../fixtures/postgres", scripts("members", "threads"))
                        )]
        async fn macro_using_macro(pool: PgPool) -> sqlx::Result<()> {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM thread")
                .fetch_one(&pool)
                .await?;
            assert_eq!(n, 2);
            Ok(())
        }
    };
}
macro_using_test!("sqlx_compat/migrations");

// No parameters: `#[sqlx::test]` runs the body alone, on a current-thread
// runtime of its own, without a database (`adv_mysql.rs` and `adv_sqlite.rs`
// run one with a MySQL and a SQLite `DATABASE_URL`).
#[db_test]
async fn a_test_without_parameters_runs_alone() {
    assert_eq!(
        tokio::runtime::Handle::current().runtime_flavor(),
        tokio::runtime::RuntimeFlavor::CurrentThread
    );
}

// Its timeout and its panics are a test's as usual; a task it spawned goes
// with its runtime.
#[db_test(timeout = "200ms")]
#[should_panic(expected = "timed out after 200ms")]
async fn a_test_without_parameters_has_its_timeout() {
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
}

#[db_test]
#[should_panic(expected = "the body's own panic")]
async fn a_test_without_parameters_fails_with_its_panic() {
    panic!("the body's own panic");
}

// A body that ends in `return` lints clean, as under `#[tokio::test]`.
#[db_test]
async fn a_test_body_may_end_in_return() {
    return;
}
