//! Fixtures in transaction mode: applied inside the test's transaction and
//! rolled back with it.

use db_test::{TestDb, db_test};
use sqlx::Connection;

#[db_test(migrations = "sqlx_compat/migrations", fixtures("members", "threads"))]
async fn fixtures_run_inside_the_transaction(db: TestDb) {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM thread")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 2);
    // A fresh connection sees none of it: the fixtures are not committed.
    let mut other = sqlx::PgConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    let committed: i64 = sqlx::query_scalar("SELECT count(*) FROM member")
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(committed, 0);
}

#[db_test(migrations = "sqlx_compat/migrations", fixtures("members"))]
async fn every_test_gets_fresh_fixtures(db: TestDb) {
    sqlx::query("DELETE FROM member WHERE handle = 'ada'")
        .execute(&db)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM member")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[db_test(migrations = "sqlx_compat/migrations", fixtures("members"))]
async fn every_test_gets_fresh_fixtures_too(db: TestDb) {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM member")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 2);
}

#[db_test(migrations = "sqlx_compat/migrations", fixtures("broken"))]
#[should_panic(expected = "fixture `fixtures/broken.sql` failed")]
async fn a_broken_fixture_names_its_file(_db: TestDb) {}

#[db_test(
    isolation = "database",
    migrations = "sqlx_compat/migrations",
    fixtures("broken")
)]
#[should_panic(expected = "relation \"no_such_table\" does not exist")]
async fn a_broken_fixture_shows_the_database_error(_db: TestDb) {}

/// A `pg_dump` data file as a fixture in transaction mode: its rows are in
/// the test's transaction, its header's session settings (`search_path` =
/// '') are set back after it, as if it had run on a connection of its own.
#[db_test(migrations = "migrations", fixtures("pg_dump_users"))]
async fn a_pg_dump_fixtures_settings_are_set_back(db: TestDb) {
    let name: String =
        sqlx::query_scalar("SELECT name FROM users WHERE email = 'dump@example.com'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(name, "Dumped");
    let (path, messages): (String, String) = sqlx::query_as(
        "SELECT current_setting('search_path'), current_setting('client_min_messages')",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        (path.as_str(), messages.as_str()),
        ("\"$user\", public", "notice")
    );
}
