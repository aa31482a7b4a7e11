//! The backend matrix: the core transaction-mode and database-mode suite,
//! written once (`matrix!`) and run on PostgreSQL, MySQL/MariaDB and SQLite
//! (modules `postgres`, `mysql`, `sqlite`).
//!
//! The body uses only SQL that every backend runs as it is (no binds, no
//! `RETURNING`; `COUNT(*)` decodes as `i64` everywhere), so what differs
//! between backends is only what `matrix!` takes: the backend, its
//! migrations (`tests/matrix/<backend>/migrations`: the same tables `items`
//! and `tags` in each dialect), its types, and the one statement with a
//! bind (`$1` or `?`). Backend-specific behaviour (MySQL's implicit
//! commits, SQLite's pragmas, PostgreSQL's commit guard, child processes)
//! stays in `core.rs`, `mysql_core.rs` and `sqlite_core.rs`.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use db_test::{Backend, ErrorKind, FromTestContext, TestApp, TestClient, TestContext, db_test};

/// The database of a pool type (`Pool<DB>`), for the matrix's `Acquire` test.
trait PoolDatabase {
    type Database: sqlx::Database;
}

impl<DB: sqlx::Database> PoolDatabase for sqlx::Pool<DB> {
    type Database = DB;
}

/// The kind of a db-test error, if `err` is one.
fn kind(err: &sqlx::Error) -> Option<ErrorKind> {
    db_test::Error::of(err).map(|e| e.kind())
}

macro_rules! matrix {
    (
        $module:ident,
        backend: $backend:expr,
        migrations: $migrations:tt,
        db: $Db:ty,
        test_db: $TestDb:ty,
        pool: $Pool:ty,
        connection: $Conn:ty,
        outsider_in_transaction_mode: $outsider:literal,
        insert_bound: $insert_bound:literal $(,)?
    ) => {
        mod $module {
            use super::*;

            const BACKEND: Backend = $backend;
            type Db = $Db;
            type TestDb = $TestDb;
            type Pool = $Pool;
            type Conn = $Conn;
            const OUTSIDER_IN_TRANSACTION_MODE: bool = $outsider;

            async fn count(db: &TestDb, table: &str) -> i64 {
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                    .fetch_one(db)
                    .await
                    .unwrap()
            }

            async fn items(db: &TestDb) -> i64 {
                count(db, "items").await
            }

            async fn names(db: &TestDb) -> Vec<String> {
                sqlx::query_scalar("SELECT name FROM items ORDER BY name")
                    .fetch_all(db)
                    .await
                    .unwrap()
            }

            /// The rows of `items` that a connection of its own sees: only
            /// what was really committed. `None` where no such connection
            /// reaches the test's database: in transaction mode on SQLite
            /// the test runs on a private in-memory copy (a leak would show
            /// in a later test instead, the copies being reused).
            async fn committed(db: &TestDb) -> Option<i64> {
                if !OUTSIDER_IN_TRANSACTION_MODE && db.db().pool().is_none() {
                    return None;
                }
                let mut other = <Conn as sqlx::Connection>::connect_with(&db.connect_options())
                    .await
                    .expect("a connection of its own");
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items")
                    .fetch_one(&mut other)
                    .await
                    .unwrap();
                sqlx::Connection::close(other).await.unwrap();
                Some(n)
            }

            /// Asserts that nobody outside the test sees any of its rows.
            async fn assert_nothing_committed(db: &TestDb) {
                if let Some(n) = committed(db).await {
                    assert_eq!(n, 0, "rows were committed");
                }
            }

            // ---- transaction mode ----

            #[db_test(migrations = $migrations)]
            async fn writes_are_visible_through_test_db_and_app_db(
                db: TestDb,
                app: Db,
                ctx: TestContext,
            ) {
                assert_eq!(ctx.backend(), BACKEND);
                assert!(!ctx.is_database_mode());
                assert!(
                    app.pool().is_none(),
                    "under test, `Db` is the test's transaction"
                );
                assert_eq!(items(&db).await, 0, "migrated and empty");
                sqlx::query("INSERT INTO items (name) VALUES ('via-test-db')")
                    .execute(&db)
                    .await
                    .unwrap();
                sqlx::query("INSERT INTO items (name) VALUES ('via-app-db')")
                    .execute(&app)
                    .await
                    .unwrap();
                sqlx::query("INSERT INTO items (name) VALUES ('via-db-db')")
                    .execute(&db.db())
                    .await
                    .unwrap();
                // The same transaction, whichever handle reads.
                let seen_by_app: Vec<String> =
                    sqlx::query_scalar("SELECT name FROM items ORDER BY name")
                        .fetch_all(&app)
                        .await
                        .unwrap();
                assert_eq!(seen_by_app, ["via-app-db", "via-db-db", "via-test-db"]);
                assert_eq!(names(&db).await, seen_by_app);
                assert_nothing_committed(&db).await;
            }

            /// Each of the pair inserts the same unique name: both pass, in
            /// any order or in parallel, only if each one's insert is
            /// rolled back.
            async fn insert_the_same_name(db: &TestDb) {
                assert_eq!(items(db).await, 0, "rows of an earlier test");
                sqlx::query("INSERT INTO items (name) VALUES ('the-same-name')")
                    .execute(db)
                    .await
                    .unwrap();
                assert_eq!(items(db).await, 1);
                assert_nothing_committed(&db).await;
            }

            #[db_test(migrations = $migrations)]
            async fn rollback_between_tests_a(db: TestDb) {
                insert_the_same_name(&db).await;
            }

            #[db_test(migrations = $migrations)]
            async fn rollback_between_tests_b(db: TestDb) {
                insert_the_same_name(&db).await;
            }

            #[db_test(migrations = $migrations)]
            async fn an_app_commit_is_a_savepoint(db: TestDb) {
                let app: Db = db.db();
                let mut tx = app.begin().await.unwrap();
                sqlx::query("INSERT INTO items (name) VALUES ('app-committed')")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query(
                    "INSERT INTO tags (item_id, label) \
                     SELECT id, 'in-app-tx' FROM items WHERE name = 'app-committed'",
                )
                .execute(&mut *tx)
                .await
                .unwrap();
                tx.commit().await.unwrap();
                // The test sees the app's commit...
                assert_eq!(names(&db).await, ["app-committed"]);
                assert_eq!(count(&db, "tags").await, 1);
                // ...and nobody else does: it was a savepoint.
                assert_nothing_committed(&db).await;
            }

            /// `begin_with` (SQLite's `BEGIN IMMEDIATE`, say): a savepoint
            /// under test, the app's own statement in production.
            #[db_test(migrations = $migrations)]
            async fn an_app_begin_with_is_a_savepoint(db: TestDb) {
                let app: Db = db.db();
                let mut tx = app.begin_with("BEGIN").await.unwrap();
                sqlx::query("INSERT INTO items (name) VALUES ('begun-with')")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                assert_eq!(names(&db).await, ["begun-with"]);
                assert_nothing_committed(&db).await;
            }

            #[db_test(migrations = $migrations, isolation = "database")]
            async fn begin_with_on_a_pool_sends_the_apps_statement(pool: Pool) {
                let app = Db::from_pool(pool.clone());
                let mut tx = app.begin_with("BEGIN").await.unwrap();
                sqlx::query("INSERT INTO items (name) VALUES ('committed')")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                assert_eq!(n, 1, "committed on the test's own database");
                assert!(
                    app.begin_with("SELECT 1").await.is_err(),
                    "sqlx checks that the statement began a transaction"
                );
            }

            #[db_test(migrations = $migrations)]
            async fn app_rollback_and_drop_undo_only_the_app_transaction(db: TestDb) {
                sqlx::query("INSERT INTO items (name) VALUES ('kept')")
                    .execute(&db)
                    .await
                    .unwrap();
                let mut tx = db.begin().await.unwrap();
                sqlx::query("INSERT INTO items (name) VALUES ('rolled-back')")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.rollback().await.unwrap();
                assert_eq!(names(&db).await, ["kept"]);
                {
                    let mut tx = db.begin().await.unwrap();
                    sqlx::query("INSERT INTO items (name) VALUES ('dropped')")
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    // Dropped without commit.
                }
                assert_eq!(names(&db).await, ["kept"]);
                // The test's transaction goes on: a later app commit works.
                let mut tx = db.begin().await.unwrap();
                sqlx::query("INSERT INTO items (name) VALUES ('after')")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                assert_eq!(names(&db).await, ["after", "kept"]);
                assert_nothing_committed(&db).await;
            }

            /// An app's `begin()` cut short (a `timeout` or `select!` around
            /// a handler, at any point of its round trip): only the
            /// savepoint it was making is undone, never the test's
            /// transaction, whose writes stay (sqlx's own `begin()`, dropped
            /// inside a transaction, rolls back the one around it).
            #[db_test(migrations = $migrations)]
            async fn an_app_begin_dropped_mid_way_undoes_only_its_savepoint(db: TestDb) {
                let app: Db = db.db();
                sqlx::query("INSERT INTO items (name) VALUES ('kept')")
                    .execute(&db)
                    .await
                    .unwrap();
                let cut = tokio::time::timeout(std::time::Duration::ZERO, app.begin()).await;
                drop(cut);
                for polls in 1..25 {
                    let mut begin = Box::pin(app.begin());
                    for _ in 0..polls {
                        if futures_util::poll!(begin.as_mut()).is_ready() {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                }
                // `Acquire::begin` on the app's handle, the same way.
                for polls in 1..10 {
                    let mut begin = Box::pin(sqlx::Acquire::begin(&app));
                    for _ in 0..polls {
                        if futures_util::poll!(begin.as_mut()).is_ready() {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                }
                // A transaction cut after its statements: they are undone.
                let cut = tokio::time::timeout(std::time::Duration::from_millis(1), async {
                    let mut tx = app.begin().await.unwrap();
                    sqlx::query("INSERT INTO items (name) VALUES ('cut')")
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    std::future::pending::<()>().await;
                })
                .await;
                assert!(cut.is_err());
                let mut tx = app.begin().await.unwrap();
                sqlx::query("INSERT INTO items (name) VALUES ('after')")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                assert_eq!(names(&db).await, ["after", "kept"]);
                assert_nothing_committed(&db).await;
            }

            /// An app's `commit()` or `rollback()` cut short: the savepoint
            /// is ended all the same (released, or rolled back), and the
            /// next app transactions behave: one dropped without commit
            /// keeps nothing (SQLite's worker swallowed that rollback after
            /// a cut commit), `Acquire::begin` works (MySQL's depth stayed
            /// one too high).
            #[db_test(migrations = $migrations)]
            async fn an_app_commit_or_rollback_cut_short_ends_its_savepoint(db: TestDb) {
                let app: Db = db.db();
                for (round, commit) in [(1, true), (2, false), (3, true), (4, false)] {
                    let mut tx = app.begin().await.unwrap();
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "INSERT INTO items (name) VALUES ('cut-{round}')"
                    )))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                    let mut end: std::pin::Pin<
                        Box<dyn std::future::Future<Output = sqlx::Result<()>>>,
                    > = if commit {
                        Box::pin(tx.commit())
                    } else {
                        Box::pin(tx.rollback())
                    };
                    for _ in 0..round {
                        if futures_util::poll!(end.as_mut()).is_ready() {
                            break;
                        }
                    }
                    drop(end);
                    let mut dropped = app.begin().await.unwrap();
                    sqlx::query("INSERT INTO items (name) VALUES ('dropped')")
                        .execute(&mut *dropped)
                        .await
                        .unwrap();
                    drop(dropped);
                    let mut tx = sqlx::Acquire::begin(&app).await.unwrap();
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "INSERT INTO items (name) VALUES ('after-{round}')"
                    )))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                    tx.commit().await.unwrap();
                }
                let names = names(&db).await;
                assert!(!names.contains(&"dropped".to_string()), "{names:?}");
                for round in 1..=4 {
                    assert!(names.contains(&format!("after-{round}")), "{names:?}");
                }
                // A cut commit may or may not have released its savepoint
                // (as in production it may or may not have committed); a
                // cut rollback undid it.
                assert!(!names.contains(&"cut-2".to_string()), "{names:?}");
                assert!(!names.contains(&"cut-4".to_string()), "{names:?}");
                assert_nothing_committed(&db).await;
            }

            /// The `commit()` of sqlx's own transaction from
            /// `Acquire::begin(&db)` cut short: sqlx then queues a
            /// `ROLLBACK TO` a savepoint the server may have released
            /// already, whose error comes back with the connection; the
            /// test goes on.
            #[db_test(migrations = $migrations)]
            async fn an_acquire_begin_commit_cut_short_leaves_the_test_usable(db: TestDb) {
                let app: Db = db.db();
                for polls in 1..6 {
                    let mut tx = sqlx::Acquire::begin(&app).await.unwrap();
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "INSERT INTO items (name) VALUES ('maybe-{polls}')"
                    )))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                    let mut commit = Box::pin(tx.commit());
                    for _ in 0..polls {
                        if futures_util::poll!(commit.as_mut()).is_ready() {
                            break;
                        }
                    }
                    drop(commit);
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "INSERT INTO items (name) VALUES ('next-{polls}')"
                    )))
                    .execute(&app)
                    .await
                    .unwrap();
                }
                assert_eq!(count(&db, "items WHERE name LIKE 'next-%'").await, 5);
                assert_nothing_committed(&db).await;
            }

            #[db_test(migrations = $migrations)]
            async fn a_failing_statement_does_not_poison_the_test(db: TestDb) {
                sqlx::query("INSERT INTO items (name) VALUES ('unique-once')")
                    .execute(&db)
                    .await
                    .unwrap();
                let dup = sqlx::query("INSERT INTO items (name) VALUES ('unique-once')")
                    .execute(&db)
                    .await
                    .unwrap_err();
                assert!(
                    dup.as_database_error()
                        .is_some_and(|e| e.is_unique_violation()),
                    "a unique violation: {dup}"
                );
                // The next statement works, and the earlier write is there.
                sqlx::query("INSERT INTO items (name) VALUES ('after-failure')")
                    .execute(&db)
                    .await
                    .unwrap();
                assert_eq!(names(&db).await, ["after-failure", "unique-once"]);
                // A foreign key violation, likewise.
                let orphan =
                    sqlx::query("INSERT INTO tags (item_id, label) VALUES (999999, 'orphan')")
                        .execute(&db)
                        .await
                        .unwrap_err();
                assert!(
                    orphan
                        .as_database_error()
                        .is_some_and(|e| e.is_foreign_key_violation()),
                    "a foreign key violation: {orphan}"
                );
                sqlx::query(
                    "INSERT INTO tags (item_id, label) \
                     SELECT id, 'ok' FROM items WHERE name = 'unique-once'",
                )
                .execute(&db)
                .await
                .unwrap();
                assert_eq!(count(&db, "tags").await, 1);
                assert_eq!(items(&db).await, 2);
                assert_nothing_committed(&db).await;
            }

            /// A raw COMMIT in a multi-statement string is refused before it
            /// reaches the server: the test's writes stay uncommitted and
            /// every later statement gets the same error.
            #[db_test(migrations = $migrations)]
            #[should_panic(expected = "refusing to run")]
            async fn a_commit_hidden_in_a_multi_statement_string_is_refused(db: TestDb) {
                sqlx::query("INSERT INTO items (name) VALUES ('before-commit')")
                    .execute(&db)
                    .await
                    .unwrap();
                let err = sqlx::raw_sql(
                    "INSERT INTO items (name) VALUES ('smuggled'); /* harmless */ COMMIT; SELECT 1",
                )
                .execute(&db)
                .await
                .expect_err("a raw COMMIT must be refused");
                let msg = err.to_string();
                // (The messages below avoid the words `should_panic` expects.)
                assert!(
                    msg.contains("refusing to run") && msg.contains("COMMIT"),
                    "not db-test's refusal: {}",
                    msg.replace("refusing", "REFUSING")
                );
                assert_eq!(kind(&err), Some(ErrorKind::TransactionEnded));
                // The test cannot go on as if it had committed.
                let later = sqlx::query("SELECT COUNT(*) FROM items")
                    .execute(&db)
                    .await
                    .expect_err("a statement after the refusal must fail");
                assert_eq!(kind(&later), Some(ErrorKind::TransactionEnded));
                // Nothing reached the server: neither the test's earlier
                // write nor the smuggled one was committed.
                assert_nothing_committed(&db).await;
                // A test that does not swallow the error fails with it.
                panic!("{later}");
            }

            /// The same refusal, its error swallowed and nothing run after
            /// it: db-test fails the test at its end all the same, so a
            /// refused COMMIT can never go unnoticed.
            #[db_test(migrations = $migrations)]
            #[should_panic(expected = "refusing to run")]
            async fn a_swallowed_refusal_still_fails_the_test(db: TestDb) {
                let err = sqlx::raw_sql("INSERT INTO items (name) VALUES ('swallowed'); COMMIT")
                    .execute(&db)
                    .await
                    .expect_err("a raw COMMIT must be refused");
                assert_eq!(kind(&err), Some(ErrorKind::TransactionEnded));
            }

            /// Sends an insert of 'dropped', polls it until it is on its
            /// way, and drops it.
            async fn drop_an_insert_partway(db: &TestDb) {
                let mut dropped = Box::pin(
                    sqlx::query("INSERT INTO items (name) VALUES ('dropped')").execute(db),
                );
                for _ in 0..3 {
                    if futures_util::poll!(dropped.as_mut()).is_ready() {
                        break;
                    }
                }
            }

            /// After 'kept' and a dropped insert: inserts 'after' and checks
            /// the rows. The dropped one is gone if it was dropped before
            /// the server finished it, and kept if it finished within the
            /// polls, as in production.
            async fn insert_after_a_dropped_one(db: &TestDb) -> Vec<String> {
                sqlx::query("INSERT INTO items (name) VALUES ('after')")
                    .execute(db)
                    .await
                    .unwrap();
                let names = names(db).await;
                assert!(names.contains(&"kept".to_string()), "{names:?}");
                assert!(names.contains(&"after".to_string()), "{names:?}");
                assert!(
                    names.len() == 2 || names.contains(&"dropped".to_string()),
                    "{names:?}"
                );
                names
            }

            /// A statement whose future is dropped after it was sent (a
            /// `select!` or a timeout that fired): the next statement works
            /// and sees what completed before; nothing is committed.
            #[db_test(migrations = $migrations)]
            async fn a_statement_dropped_mid_way_leaves_the_test_usable(db: TestDb) {
                sqlx::query("INSERT INTO items (name) VALUES ('kept')")
                    .execute(&db)
                    .await
                    .unwrap();
                drop_an_insert_partway(&db).await;
                insert_after_a_dropped_one(&db).await;
                assert_nothing_committed(&db).await;
            }

            /// A read that fails, or whose future is dropped, after the
            /// test wrote: the write stays (a read has nothing to undo, and
            /// undoing the read must not undo what came before it), and the
            /// test goes on.
            #[db_test(migrations = $migrations)]
            async fn a_failing_or_dropped_read_after_a_write_keeps_the_write(db: TestDb) {
                sqlx::query("INSERT INTO items (name) VALUES ('written')")
                    .execute(&db)
                    .await
                    .unwrap();
                let err = sqlx::query("SELECT no_such_column FROM items")
                    .fetch_all(&db)
                    .await
                    .unwrap_err();
                assert!(err.as_database_error().is_some(), "{err}");
                assert_eq!(names(&db).await, ["written"]);
                sqlx::query("INSERT INTO items (name) VALUES ('second')")
                    .execute(&db)
                    .await
                    .unwrap();
                {
                    let mut dropped =
                        Box::pin(sqlx::query("SELECT name FROM items").fetch_all(&db));
                    for _ in 0..3 {
                        if futures_util::poll!(dropped.as_mut()).is_ready() {
                            break;
                        }
                    }
                }
                assert_eq!(names(&db).await, ["second", "written"]);
                // A failing write after them is still undone alone.
                sqlx::query("INSERT INTO items (name) VALUES ('written')")
                    .execute(&db)
                    .await
                    .unwrap_err();
                sqlx::query("INSERT INTO items (name) VALUES ('third')")
                    .execute(&db)
                    .await
                    .unwrap();
                assert_eq!(names(&db).await, ["second", "third", "written"]);
                assert_nothing_committed(&db).await;
            }

            /// A multi-statement string whose second statement fails keeps
            /// what production keeps: MySQL and SQLite commit each statement
            /// of a string on its own, so the first one stays; PostgreSQL
            /// runs the string in one implicit transaction, so nothing stays.
            #[db_test(migrations = $migrations)]
            async fn a_failing_multi_statement_string_keeps_what_production_keeps(db: TestDb) {
                sqlx::query("INSERT INTO items (name) VALUES ('taken')")
                    .execute(&db)
                    .await
                    .unwrap();
                sqlx::raw_sql(
                    "INSERT INTO items (name) VALUES ('first-of-two'); \
                     INSERT INTO items (name) VALUES ('taken')",
                )
                .execute(&db)
                .await
                .unwrap_err();
                let expected: &[&str] = if BACKEND == Backend::Postgres {
                    &["taken"]
                } else {
                    &["first-of-two", "taken"]
                };
                assert_eq!(names(&db).await, expected);
                assert_nothing_committed(&db).await;
            }

            #[db_test(migrations = $migrations, fixtures("matrix/fixtures/items.sql"))]
            async fn fixtures_run_in_the_test_transaction(db: TestDb) {
                assert_eq!(names(&db).await, ["fixture-a", "fixture-b"]);
                assert_eq!(count(&db, "tags").await, 1);
                assert_nothing_committed(&db).await;
                // The test's writes go on top of them.
                sqlx::query("INSERT INTO items (name) VALUES ('fixture-c')")
                    .execute(&db)
                    .await
                    .unwrap();
                assert_eq!(items(&db).await, 3);
            }

            // ---- a TestClient over an axum app on the backend's `Db` ----

            pub struct App;

            impl TestApp for App {
                const BACKEND: Backend = BACKEND;

                async fn build(ctx: &TestContext) -> Router {
                    let db = <Db as FromTestContext>::from_context(ctx)
                        .await
                        .expect("the test's Db");
                    Router::new()
                        .route("/items", get(list_items).post(add_item))
                        .with_state(db)
                }
            }

            async fn list_items(State(db): State<Db>) -> String {
                let names: Vec<String> = sqlx::query_scalar("SELECT name FROM items ORDER BY name")
                    .fetch_all(&db)
                    .await
                    .unwrap();
                names.join(",")
            }

            async fn add_item(State(db): State<Db>, name: String) -> StatusCode {
                let mut tx = db.begin().await.unwrap();
                let inserted = sqlx::query($insert_bound)
                    .bind(name)
                    .execute(&mut *tx)
                    .await;
                match inserted {
                    Ok(_) => {
                        tx.commit().await.unwrap();
                        StatusCode::CREATED
                    }
                    Err(_) => StatusCode::CONFLICT,
                }
            }

            #[db_test(migrations = $migrations)]
            async fn a_test_client_post_writes_a_row_the_test_sees(
                client: TestClient<App>,
                db: TestDb,
            ) {
                client
                    .post("/items")
                    .text("posted")
                    .await
                    .assert_status(StatusCode::CREATED);
                client
                    .post("/items")
                    .text("posted")
                    .await
                    .assert_status(StatusCode::CONFLICT);
                assert_eq!(names(&db).await, ["posted"]);
                sqlx::query("INSERT INTO items (name) VALUES ('by-the-test')")
                    .execute(&db)
                    .await
                    .unwrap();
                client.get("/items").await.assert_text("by-the-test,posted");
                assert_nothing_committed(&db).await;
            }

            // Only the app names the backend here.
            #[db_test(migrations = $migrations)]
            async fn the_app_alone_chooses_the_backend(client: TestClient<App>, ctx: TestContext) {
                assert_eq!(ctx.backend(), BACKEND);
                assert!(!ctx.is_database_mode());
                client.get("/items").await.assert_text("");
            }

            // ---- `Acquire` on the app's handle ----

            /// Written the common sqlx way, to take a pool, a connection or
            /// the app's `&Db`.
            async fn add_in_a_transaction<'a>(
                conn: impl sqlx::Acquire<'a, Database = <Pool as PoolDatabase>::Database>,
                name: &str,
                commit: bool,
            ) {
                let mut tx = conn.begin().await.unwrap();
                sqlx::query($insert_bound)
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                if commit {
                    tx.commit().await.unwrap();
                }
            }

            /// `Acquire::begin` on `&Db` is sqlx's transaction, a savepoint
            /// of the test's: committed, it stays for the test; dropped, it
            /// is undone; nothing is committed for real; the test's other
            /// calls work again once it ends.
            #[db_test(migrations = $migrations)]
            async fn acquire_begin_on_the_app_handle_is_a_savepoint(db: TestDb) {
                let app: Db = db.db();
                add_in_a_transaction(&app, "begun-and-committed", true).await;
                add_in_a_transaction(&app, "begun-and-dropped", false).await;
                add_in_a_transaction(&db, "begun-on-test-db", true).await;
                assert_eq!(
                    names(&db).await,
                    ["begun-and-committed", "begun-on-test-db"]
                );
                assert_nothing_committed(&db).await;
            }

            /// The same as the last statement of a test on a runtime of its
            /// own: the transaction's connection returns to its pool through
            /// a task on that runtime, which must run before it is dropped.
            #[db_test(migrations = $migrations, flavor = "current_thread")]
            async fn acquire_begin_as_the_last_call_of_a_current_thread_test(db: TestDb) {
                let app: Db = db.db();
                add_in_a_transaction(&app, "first", true).await;
                assert_eq!(items(&db).await, 1);
                add_in_a_transaction(&app, "last", true).await;
            }

            // ---- a current-thread runtime of the test's own ----

            std::thread_local! {
                static MARK: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
            }

            /// What a `#[tokio::test]` suite relies on: spawned tasks run on
            /// the test's thread (its thread-locals), a paused clock
            /// auto-advances, and the database still answers through all of it.
            async fn on_a_paused_current_thread(db: Db) {
                MARK.with(|m| m.set(7));
                let t0 = tokio::time::Instant::now();
                let task = tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                    let mark = MARK.with(|m| m.get());
                    let names: Vec<String> = futures_util::future::join_all((0..4).map(|i| {
                        let db = db.clone();
                        async move {
                            let name = format!("paused-{i}");
                            sqlx::query($insert_bound)
                                .bind(&name)
                                .execute(&db)
                                .await
                                .unwrap();
                            name
                        }
                    }))
                    .await;
                    (mark, names)
                });
                let (mark, names) = task.await.unwrap();
                assert_eq!(mark, 7, "the spawned task ran on the test's thread");
                assert_eq!(names.len(), 4);
                assert!(t0.elapsed() >= std::time::Duration::from_secs(3600));
            }

            #[db_test(migrations = $migrations, flavor = "current_thread", start_paused = true)]
            async fn a_paused_current_thread_test_in_transaction_mode(db: TestDb) {
                on_a_paused_current_thread(db.db()).await;
                assert_eq!(items(&db).await, 4);
            }

            /// Database mode: the body opens pool connections on its own
            /// runtime (four at once), which is dropped before the teardown;
            /// the pair passes only if neither the teardown nor the next
            /// test trips on a connection of a dead runtime.
            async fn paused_with_its_own_pool(pool: Pool) {
                on_a_paused_current_thread(Db::from_pool(pool.clone())).await;
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                assert_eq!(
                    n, 4,
                    "a database of its own, migrated and empty at the start"
                );
            }

            #[db_test(migrations = $migrations, flavor = "current_thread", start_paused = true)]
            async fn a_paused_current_thread_test_with_a_pool_a(pool: Pool) {
                paused_with_its_own_pool(pool).await;
            }

            #[db_test(migrations = $migrations, flavor = "current_thread", start_paused = true)]
            async fn a_paused_current_thread_test_with_a_pool_b(pool: Pool) {
                paused_with_its_own_pool(pool).await;
            }

            // ---- database mode ----

            /// Each of the pair commits the same unique name on its pool:
            /// both pass only if each has a database of its own, migrated
            /// and empty.
            async fn commit_the_same_name(pool: &Pool, ctx: &TestContext) {
                assert_eq!(ctx.backend(), BACKEND);
                assert!(ctx.is_database_mode(), "a pool selects database mode");
                let mut a = pool.acquire().await.unwrap();
                let mut b = pool.acquire().await.unwrap();
                let tables: (i64, i64) = sqlx::query_as(
                    "SELECT (SELECT COUNT(*) FROM items), (SELECT COUNT(*) FROM tags)",
                )
                .fetch_one(&mut *a)
                .await
                .unwrap();
                assert_eq!(tables, (0, 0), "migrated and empty");
                sqlx::query("INSERT INTO items (name) VALUES ('committed-name')")
                    .execute(&mut *a)
                    .await
                    .unwrap();
                let mut tx = sqlx::Connection::begin(&mut *a).await.unwrap();
                sqlx::query("INSERT INTO items (name) VALUES ('in-a-real-tx')")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                // Another connection of the pool sees both: real commits.
                let seen: Vec<String> = sqlx::query_scalar("SELECT name FROM items ORDER BY name")
                    .fetch_all(&mut *b)
                    .await
                    .unwrap();
                assert_eq!(seen, ["committed-name", "in-a-real-tx"]);
            }

            #[db_test(migrations = $migrations)]
            async fn a_pool_gets_a_database_of_its_own_a(pool: Pool, ctx: TestContext) {
                commit_the_same_name(&pool, &ctx).await;
            }

            #[db_test(migrations = $migrations)]
            async fn a_pool_gets_a_database_of_its_own_b(pool: Pool, ctx: TestContext) {
                commit_the_same_name(&pool, &ctx).await;
            }

            /// Suites written for `#[sqlx::test]` often end with
            /// `pool.close().await`: the teardown copes, and the next test
            /// still gets a database of its own, migrated and empty.
            async fn write_then_close(pool: Pool) {
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                assert_eq!(n, 0, "migrated and empty");
                sqlx::query("INSERT INTO items (name) VALUES ('closed-by-the-test')")
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                assert!(pool.is_closed());
            }

            #[db_test(migrations = $migrations)]
            async fn a_pool_the_test_closes_a(pool: Pool) {
                write_then_close(pool).await;
            }

            #[db_test(migrations = $migrations)]
            async fn a_pool_the_test_closes_b(pool: Pool) {
                write_then_close(pool).await;
            }

            #[db_test(migrations = $migrations, isolation = "database")]
            async fn database_isolation_with_test_db_commits_for_real(
                db: TestDb,
                ctx: TestContext,
            ) {
                assert_eq!(ctx.backend(), BACKEND);
                assert!(ctx.is_database_mode());
                assert!(db.db().pool().is_some(), "in database mode `Db` is a pool");
                assert_eq!(items(&db).await, 0, "migrated and empty");
                assert_eq!(count(&db, "tags").await, 0);
                sqlx::query("INSERT INTO items (name) VALUES ('db-mode')")
                    .execute(&db)
                    .await
                    .unwrap();
                let mut tx = db.begin().await.unwrap();
                sqlx::query("INSERT INTO items (name) VALUES ('db-mode-tx')")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                // A connection of its own sees both: they were committed.
                assert_eq!(committed(&db).await, Some(2));
                // DDL is the test's own business on a database of its own.
                sqlx::query("CREATE TABLE extra (a INT)")
                    .execute(&db)
                    .await
                    .unwrap();
                assert_eq!(count(&db, "extra").await, 0);
            }

            /// A database-mode test whose app (or the test itself) closes
            /// the pool behind its `Db` after using it, as a graceful
            /// shutdown does: the close ends, although the `Db` keeps its
            /// last statement's connection aside for the next one, and the
            /// `Db` then says the pool is closed.
            #[db_test(migrations = $migrations, isolation = "database")]
            async fn a_database_mode_db_used_then_its_pool_closed(db: TestDb) {
                assert_eq!(items(&db).await, 0, "migrated and empty");
                sqlx::query("INSERT INTO items (name) VALUES ('before-close')")
                    .execute(&db)
                    .await
                    .unwrap();
                let pool = db.db().pool().cloned().expect("a pool in database mode");
                tokio::time::timeout(std::time::Duration::from_secs(20), pool.close())
                    .await
                    .expect("Pool::close waits for a connection the test's Db keeps");
                assert!(pool.is_closed());
                let err = sqlx::query("SELECT 1")
                    .execute(&db)
                    .await
                    .expect_err("the pool is closed");
                assert!(matches!(err, sqlx::Error::PoolClosed), "{err}");
            }

            /// After statements through its `Db`, a database-mode test can
            /// still hold as many connections of its pool at once as
            /// `DB_TEST_DATABASE_POOL_SIZE` (5) says, and its `Db` goes on
            /// working after it gives them back.
            #[db_test(migrations = $migrations, isolation = "database")]
            async fn a_database_mode_test_holds_its_pool_size_after_using_its_db(db: TestDb) {
                sqlx::query("INSERT INTO items (name) VALUES ('first')")
                    .execute(&db)
                    .await
                    .unwrap();
                assert_eq!(items(&db).await, 1);
                let size: usize = std::env::var("DB_TEST_DATABASE_POOL_SIZE")
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(5);
                let pool = db.db().pool().cloned().expect("a pool in database mode");
                let held = tokio::time::timeout(
                    std::time::Duration::from_secs(20),
                    futures_util::future::try_join_all((0..size).map(|_| pool.acquire())),
                )
                .await
                .expect("the pool's connections, all at once")
                .unwrap();
                assert_eq!(held.len(), size);
                drop(held);
                sqlx::query("INSERT INTO items (name) VALUES ('second')")
                    .execute(&db)
                    .await
                    .unwrap();
                assert_eq!(names(&db).await, ["first", "second"]);
            }

            /// Database mode: a statement through the `Db` that fails, or
            /// whose future is dropped after it was sent, leaves the next
            /// statements right (each on a connection in step with it), and
            /// what completed is committed.
            #[db_test(migrations = $migrations, isolation = "database")]
            async fn a_database_mode_statement_failed_or_dropped_leaves_the_db_usable(db: TestDb) {
                sqlx::query("INSERT INTO items (name) VALUES ('kept')")
                    .execute(&db)
                    .await
                    .unwrap();
                sqlx::query("INSERT INTO items (name) VALUES ('kept')")
                    .execute(&db)
                    .await
                    .expect_err("a duplicate name");
                drop_an_insert_partway(&db).await;
                {
                    // A read dropped after its first row.
                    use futures_util::TryStreamExt;
                    let mut rows = sqlx::query_scalar::<_, String>(
                        "SELECT name FROM items UNION ALL SELECT name FROM items",
                    )
                    .fetch(&db);
                    assert!(rows.try_next().await.unwrap().is_some());
                }
                let names = insert_after_a_dropped_one(&db).await;
                assert_eq!(committed(&db).await, Some(names.len() as i64));
            }

            /// Database mode on a current-thread runtime of the test's own:
            /// the connection its `Db` keeps for the next statement may have
            /// been opened on that runtime, which is gone before teardown
            /// (two statements at once open a second connection there).
            /// Teardown copes, and the pair's second test gets a database
            /// of its own, migrated and empty.
            async fn two_at_once_then_a_write(db: &TestDb) {
                let (a, b) = tokio::join!(items(db), count(db, "tags"));
                assert_eq!((a, b), (0, 0), "migrated and empty");
                sqlx::query("INSERT INTO items (name) VALUES ('own-runtime')")
                    .execute(db)
                    .await
                    .unwrap();
                let (a, b) = tokio::join!(items(db), items(db));
                assert_eq!((a, b), (1, 1));
            }

            #[db_test(migrations = $migrations, isolation = "database", flavor = "current_thread")]
            async fn a_database_mode_db_on_a_runtime_of_its_own_a(db: TestDb) {
                two_at_once_then_a_write(&db).await;
            }

            #[db_test(migrations = $migrations, isolation = "database", flavor = "current_thread")]
            async fn a_database_mode_db_on_a_runtime_of_its_own_b(db: TestDb) {
                two_at_once_then_a_write(&db).await;
            }

            /// A task left holding an open transaction from `Acquire::begin`
            /// when the test returns is dropped with the test's own runtime,
            /// as under `#[tokio::test]`, and so is its transaction: the test
            /// passes (it failed, saying a COMMIT or ROLLBACK had ended the
            /// test's transaction).
            #[db_test(migrations = $migrations, flavor = "current_thread")]
            async fn a_task_dropped_with_the_runtime_may_hold_an_acquire_begin_transaction(
                db: TestDb,
            ) {
                let app = db.db();
                tokio::spawn(async move {
                    let mut tx = sqlx::Acquire::begin(&app).await.unwrap();
                    sqlx::query("INSERT INTO items (name) VALUES ('held')")
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    std::future::pending::<()>().await;
                });
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
}

matrix!(
    postgres,
    backend: Backend::Postgres,
    migrations: "tests/matrix/postgres/migrations",
    db: db_test::Db,
    test_db: db_test::TestDb,
    pool: sqlx::PgPool,
    connection: sqlx::PgConnection,
    outsider_in_transaction_mode: true,
    insert_bound: "INSERT INTO items (name) VALUES ($1)",
);

matrix!(
    mysql,
    backend: Backend::MySql,
    migrations: "tests/matrix/mysql/migrations",
    db: db_test::mysql::Db,
    test_db: db_test::mysql::TestDb,
    pool: sqlx::MySqlPool,
    connection: sqlx::MySqlConnection,
    outsider_in_transaction_mode: true,
    insert_bound: "INSERT INTO items (name) VALUES (?)",
);

matrix!(
    sqlite,
    backend: Backend::Sqlite,
    migrations: "tests/matrix/sqlite/migrations",
    db: db_test::sqlite::Db,
    test_db: db_test::sqlite::TestDb,
    pool: sqlx::SqlitePool,
    connection: sqlx::SqliteConnection,
    // `TestDb::connect_options()` opens an empty `sqlite::memory:` there.
    outsider_in_transaction_mode: false,
    insert_bound: "INSERT INTO items (name) VALUES (?)",
);
