//! SQLite: transaction mode (each test in a rolled-back transaction on an
//! in-memory copy of the template), database mode (a file copy of its own),
//! and what db-test refuses or recovers from. Real SQLite databases, built
//! from `tests/sqlite_core/migrations` (one table `item` with a seed row).
//! The core suite every backend shares is the backend matrix, `matrix.rs`;
//! this file keeps what goes further on SQLite or is SQLite's own.
//!
//! Tests named `child_*` are run by other tests of this file in a child
//! process, with `DB_TEST_SQLITE_CHILD` naming the scenario; without it
//! (the normal run) they only do their plain part.

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use db_test::sqlite::{Db, TestDb};
use db_test::{ErrorKind, TestContext, db_test};
use sqlx::{Executor, SqlitePool};

fn scenario() -> String {
    std::env::var("DB_TEST_SQLITE_CHILD").unwrap_or_default()
}

async fn names<'e>(db: impl sqlx::Executor<'e, Database = sqlx::Sqlite>) -> Vec<String> {
    sqlx::query_scalar("SELECT name FROM item ORDER BY id")
        .fetch_all(db)
        .await
        .unwrap()
}

async fn insert(db: &TestDb, name: &str) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO item (name) VALUES (?)")
        .bind(name)
        .execute(db)
        .await
        .map(|_| ())
}

// Rollback between tests: each of these starts from the seed row alone and
// inserts the same unique name. The in-memory copies are pooled and reused
// by later tests, so a write that survived its test would show up here.
macro_rules! starts_clean {
    ($($name:ident),*) => {$(
        #[db_test(migrations = "tests/sqlite_core/migrations")]
        async fn $name(db: TestDb) {
            assert_eq!(names(&db).await, ["seed"]);
            insert(&db, "same").await.unwrap();
            assert_eq!(names(&db).await, ["seed", "same"]);
        }
    )*};
}
starts_clean!(
    starts_clean_1,
    starts_clean_2,
    starts_clean_3,
    starts_clean_4,
    starts_clean_5,
    starts_clean_6
);

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn app_commit_is_a_savepoint(db: TestDb) {
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO item (name) VALUES ('committed')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(names(&db).await, ["seed", "committed"]);
    // A failing statement after it undoes itself, not the committed savepoint.
    assert!(insert(&db, "seed").await.is_err());
    assert_eq!(names(&db).await, ["seed", "committed"]);
    // Nor what was written on the bare connection of a guard.
    {
        let mut conn = db.acquire().await.unwrap();
        let raw: &mut sqlx::SqliteConnection = &mut conn;
        raw.execute("INSERT INTO item (name) VALUES ('raw')")
            .await
            .unwrap();
    }
    assert!(insert(&db, "seed").await.is_err());
    assert_eq!(names(&db).await, ["seed", "committed", "raw"]);

    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO item (name) VALUES ('rolled back')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    {
        let mut tx = db.begin().await.unwrap();
        sqlx::query("INSERT INTO item (name) VALUES ('dropped')")
            .execute(&mut *tx)
            .await
            .unwrap();
        // Nested: a savepoint inside the savepoint, through sqlx's own API.
        let mut inner = sqlx::Connection::begin(&mut **tx).await.unwrap();
        sqlx::query("INSERT INTO item (name) VALUES ('inner')")
            .execute(&mut *inner)
            .await
            .unwrap();
        inner.commit().await.unwrap();
        // `tx` dropped without commit: rolled back, with `inner`.
    }
    assert_eq!(names(&db).await, ["seed", "committed", "raw"]);
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn a_failing_statement_does_not_poison_the_test(db: TestDb) {
    insert(&db, "one").await.unwrap();
    let dup = insert(&db, "one").await.unwrap_err();
    assert!(dup.to_string().contains("UNIQUE"), "{dup}");
    // A multi-statement string whose second statement fails keeps its
    // first, as SQLite's autocommit does in production.
    let err = sqlx::raw_sql(
        "INSERT INTO item (name) VALUES ('two'); INSERT INTO item (name) VALUES ('one')",
    )
    .execute(&db)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("UNIQUE"), "{err}");
    insert(&db, "three").await.unwrap();
    assert_eq!(names(&db).await, ["seed", "one", "two", "three"]);
    // Inside an app transaction too.
    let mut tx = db.begin().await.unwrap();
    assert!(
        sqlx::query("INSERT INTO item (name) VALUES ('one')")
            .execute(&mut *tx)
            .await
            .is_err()
    );
    sqlx::query("INSERT INTO item (name) VALUES ('four')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(names(&db).await, ["seed", "one", "two", "three", "four"]);
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
// The refusal fails the test at its end, even though the test handled the error.
#[should_panic(expected = "refusing to run")]
async fn a_commit_on_a_connection_guard_is_refused(db: TestDb) {
    let mut conn = db.acquire().await.unwrap();
    conn.execute("INSERT INTO item (name) VALUES ('guarded')")
        .await
        .unwrap();
    let err = conn.execute("END TRANSACTION").await.unwrap_err();
    assert!(err.to_string().contains("refusing to run"), "{err}");
    let err = conn.execute("RELEASE db_test_auto").await.unwrap_err();
    assert!(err.to_string().contains("refusing to run"), "{err}");
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn what_is_not_a_commit_runs(db: TestDb) {
    // A trigger's body has `;` and `END`; strings and identifiers may say COMMIT.
    sqlx::raw_sql(
        "CREATE TRIGGER item_tag AFTER INSERT ON item BEGIN \
           INSERT INTO tag (item_id, label) VALUES (new.id, CASE WHEN new.name = 'commit' \
           THEN 'end' ELSE 'begin' END); \
         END; \
         INSERT INTO item (name) VALUES ('commit');",
    )
    .execute(&db)
    .await
    .unwrap();
    let labels: Vec<String> = sqlx::query_scalar("SELECT label FROM tag")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(labels, ["end"]);
    sqlx::raw_sql(
        "SAVEPOINT mine; INSERT INTO item (name) VALUES ('m'); ROLLBACK TO mine; RELEASE mine",
    )
    .execute(&db)
    .await
    .unwrap();
    assert_eq!(names(&db).await, ["seed", "commit"]);
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn a_write_dropped_mid_way_runs_to_its_end_and_the_connection_stays_usable(db: TestDb) {
    // Long enough that its first poll cannot see it finished: 200 000 rows.
    // Dropped, it runs to its end (SQLite would roll back the whole
    // transaction of an interrupted write) and stays, as it would in
    // production, where it commits.
    let slow = sqlx::query(
        "INSERT INTO item (name) \
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000) \
         SELECT 'slow-' || x FROM c",
    );
    let mut fut = Box::pin(slow.execute(&*db));
    assert!(futures_util::poll!(&mut fut).is_pending());
    drop(fut);
    let slow: i64 = sqlx::query_scalar("SELECT count(*) FROM item WHERE name LIKE 'slow-%'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(slow, 200_000);
    insert(&db, "after").await.unwrap();
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM item WHERE name = 'after'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(after, 1);
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn foreign_keys_are_on_as_under_sqlx(db: TestDb) {
    let on: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(on, 1);
    let err = sqlx::query("INSERT INTO tag (item_id, label) VALUES (999, 'orphan')")
        .execute(&db)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn statements_are_counted(db: TestDb) {
    let app = db.db();
    db.assert_queries(2, async {
        sqlx::query("SELECT count(*) FROM item")
            .fetch_one(&app)
            .await
            .unwrap();
        let mut tx = app.begin().await.unwrap();
        sqlx::query("INSERT INTO item (name) VALUES ('c')")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    })
    .await;
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn a_busy_connection_times_out_with_a_hint(db: TestDb) {
    db.set_checkout_timeout(Duration::from_millis(50));
    let held = db.acquire().await.unwrap();
    let err = sqlx::query("SELECT 1").execute(&db).await.unwrap_err();
    assert_eq!(
        db_test::Error::of(&err).map(|e| e.kind()),
        Some(ErrorKind::CheckoutTimeout)
    );
    drop(held);
    sqlx::query("SELECT 1").execute(&db).await.unwrap();
}

async fn count_items<'a>(conn: impl sqlx::Acquire<'a, Database = sqlx::Sqlite>) -> i64 {
    let mut conn = conn.acquire().await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM item")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn db_is_an_acquire(db: TestDb) {
    let app = db.db();
    assert_eq!(count_items(&app).await, 1);
    let mut tx = sqlx::Acquire::begin(&app).await.unwrap();
    sqlx::query("INSERT INTO item (name) VALUES ('through begin')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut conn = app.acquire().await.unwrap();
    let mut tx = sqlx::Acquire::begin(&mut *conn).await.unwrap();
    sqlx::query("INSERT INTO item (name) VALUES ('acquired')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    drop(conn);
    assert_eq!(names(&db).await, ["seed", "through begin", "acquired"]);
}

// ---- database mode ----

/// A long read that endlessly counts: about a minute of SQLite's work.
const LONG_READ: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
     WHERE x < 10000000000) SELECT SUM(x) FROM c";

// A long read cut short by a timeout in database mode: SQLite's worker
// thread runs a dropped statement on to its end, and the end of the test
// waited for it and then failed the test ("a task still held a
// connection"). The test goes on, on another connection, and passes.
#[db_test(migrations = "tests/sqlite_core/migrations", isolation = "database")]
async fn database_mode_a_long_read_cut_by_a_timeout_does_not_fail_the_test(
    db: TestDb,
    pool: SqlitePool,
) {
    let cut = tokio::time::timeout(
        Duration::from_millis(100),
        sqlx::query(LONG_READ).execute(&db),
    )
    .await;
    assert!(cut.is_err(), "the read should still run after 100 ms");
    sqlx::query("INSERT INTO item (name) VALUES ('after the cut')")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(names(&db).await, ["seed", "after the cut"]);
}

#[db_test(migrations = "tests/sqlite_core/migrations", isolation = "database")]
async fn database_mode_test_db_is_a_pool(db: TestDb, ctx: TestContext) {
    assert!(ctx.is_database_mode());
    assert!(db.pool().is_some());
    assert!(ctx.database_name().ends_with(".sqlite"));
    // A raw COMMIT is the test's own business here.
    sqlx::raw_sql("BEGIN; INSERT INTO item (name) VALUES ('raw'); COMMIT")
        .execute(db.pool().unwrap())
        .await
        .unwrap();
    assert_eq!(names(&db).await, ["seed", "raw"]);
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn database_mode_pool_connection(mut conn: sqlx::pool::PoolConnection<sqlx::Sqlite>) {
    sqlx::query("INSERT INTO item (name) VALUES ('conn')")
        .execute(&mut *conn)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM item")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(n, 2);
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn database_mode_options(
    (pool_options, connect_options): (
        sqlx::sqlite::SqlitePoolOptions,
        sqlx::sqlite::SqliteConnectOptions,
    ),
) {
    let pool = pool_options.connect_with(connect_options).await.unwrap();
    sqlx::query("INSERT INTO item (name) VALUES ('own pool')")
        .execute(&pool)
        .await
        .unwrap();
    let seen: Vec<String> = sqlx::query_scalar("SELECT name FROM item ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(seen, ["seed", "own pool"]);
    pool.close().await;
}

// `#[sqlx::test]`'s own form: two parameters rather than a tuple.
#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn database_mode_options_as_two_parameters(
    pool_options: sqlx::sqlite::SqlitePoolOptions,
    connect_options: sqlx::sqlite::SqliteConnectOptions,
) {
    let pool = pool_options.connect_with(connect_options).await.unwrap();
    let seen: Vec<String> = sqlx::query_scalar("SELECT name FROM item ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(seen, ["seed"]);
    pool.close().await;
}

/// A statement whose future is dropped while it runs: it is interrupted,
/// so the test's next statement does not wait for it to end.
#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn a_dropped_long_statement_is_interrupted(db: TestDb) {
    let dropped = tokio::time::timeout(
        Duration::from_millis(200),
        sqlx::query_scalar::<_, i64>(RUNAWAY)
            .bind(1_000_000_000_000_i64)
            .fetch_one(&db),
    )
    .await;
    assert!(dropped.is_err());
    let t0 = std::time::Instant::now();
    assert_eq!(names(&db).await, ["seed"]);
    // A hang check, not a speed check: without the interrupt it runs for hours.
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    // And the next long-ish statement is not interrupted any more.
    let n: i64 = sqlx::query_scalar(RUNAWAY)
        .bind(100_000_i64)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 100_000);
}

// ---- child processes ----

// A test that times out inside a long statement (a query that would run
// for hours): it fails saying so, and its statement is interrupted, so its
// teardown neither waits for it nor leaves it running.
const RUNAWAY: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) \
                       SELECT count(*) FROM c";

fn runaway_rows() -> i64 {
    if scenario() == "timeout" {
        1_000_000_000_000
    } else {
        10
    }
}

#[db_test(migrations = "tests/sqlite_core/migrations", timeout = "300ms")]
async fn child_timeout_in_a_statement(db: TestDb) {
    let n: i64 = sqlx::query_scalar(RUNAWAY)
        .bind(runaway_rows())
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, runaway_rows());
}

#[db_test(
    migrations = "tests/sqlite_core/migrations",
    timeout = "300ms",
    isolation = "database"
)]
async fn child_timeout_in_a_statement_database(pool: SqlitePool) {
    let n: i64 = sqlx::query_scalar(RUNAWAY)
        .bind(runaway_rows())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, runaway_rows());
}

/// Run after the two above in the same process: no SQLite worker thread is
/// still running a statement (a thread that is runnable in every one of ten
/// looks, 50 ms apart; an idle worker sleeps on its channel).
#[test]
fn child_timeout_then_no_statement_runs_on() {
    if scenario() != "timeout" {
        return;
    }
    let always_running = common::sqlite_workers_always_running(10);
    assert!(
        always_running.is_empty(),
        "SQLite worker threads still running a statement: {always_running:?}"
    );
    println!("NO RUNAWAY STATEMENT");
}

// A pragma that outlives the rollback: run one after the other (on the
// same pooled copy, were it reused), the second must still write.
#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn child_pragma_1_query_only(db: TestDb) {
    sqlx::query("PRAGMA query_only = 1")
        .execute(&db)
        .await
        .unwrap();
    assert!(insert(&db, "read only").await.is_err());
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn child_pragma_2_writes(db: TestDb) {
    insert(&db, "written").await.unwrap();
}

#[test]
fn a_session_pragma_does_not_reach_the_next_test() {
    let cmd = common::children(&["child_pragma_1_query_only", "child_pragma_2_writes"]);
    let out = common::run_ok(cmd, "the pragma scenario");
    assert!(out.contains("2 passed"), "{out}");
}

// The same pragma on the bare connection of a guard, which db-test does not
// read: the test's connection is closed at its end.
#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn child_bare_pragma_1_query_only(db: TestDb) {
    let mut conn = db.acquire().await.unwrap();
    let bare: &mut sqlx::SqliteConnection = &mut conn;
    sqlx::query("PRAGMA query_only = 1")
        .execute(bare)
        .await
        .unwrap();
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn child_bare_pragma_2_writes(db: TestDb) {
    insert(&db, "written").await.unwrap();
}

#[test]
fn a_pragma_set_on_a_bare_connection_does_not_reach_the_next_test() {
    let mut cmd = common::children(&[
        "child_bare_pragma_1_query_only",
        "child_bare_pragma_2_writes",
    ]);
    cmd.env("DB_TEST_POOL_SIZE", "1");
    let out = common::run_ok(cmd, "the bare pragma scenario");
    assert!(out.contains("2 passed"), "{out}");
}

// A COMMIT on the bare connection of a guard is out of db-test's sight
// until the end, where it fails the test.
#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn child_raw_commit(db: TestDb) {
    let mut conn = db.acquire().await.unwrap();
    let raw: &mut sqlx::SqliteConnection = &mut conn;
    raw.execute("INSERT INTO item (name) VALUES ('raw')")
        .await
        .unwrap();
    if scenario() == "rawcommit" {
        raw.execute("COMMIT").await.unwrap();
    }
}

#[test]
fn a_commit_on_a_bare_connection_fails_the_test() {
    let mut cmd = common::children(&["child_raw_commit"]);
    cmd.env("DB_TEST_SQLITE_CHILD", "rawcommit");
    let (out, text) = common::run_until(cmd, Duration::from_secs(300));
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("was ended by a COMMIT or ROLLBACK sent on the bare connection"),
        "{text}"
    );
}

#[test]
fn a_test_timing_out_in_a_statement_fails_and_ends() {
    let dir = std::env::temp_dir().join(format!("db-test-sqlite-timeout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = common::children(&[
        "child_timeout_in_a_statement",
        "child_timeout_in_a_statement_database",
        "child_timeout_then_no_statement_runs_on",
    ]);
    cmd.env("DB_TEST_SQLITE_CHILD", "timeout")
        .env("DB_TEST_SQLITE_DIR", &dir);
    let (out, text) = common::run_until(cmd, Duration::from_secs(300));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("1 passed; 2 failed"), "{text}");
    assert!(text.contains("NO RUNAWAY STATEMENT"), "{text}");
    assert_eq!(text.matches("timed out after 300ms").count(), 2, "{text}");
    // Interrupted: the database-mode pool closed (a statement still running
    // would have held its connection past the grace period), and the copy
    // was removed.
    assert!(!text.contains("still held a connection"), "{text}");
    assert_eq!(leftovers(&dir), Vec::<String>::new(), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

static LEFT: Mutex<Option<Db>> = Mutex::new(None);

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn child_outlive_1_leaves_its_db(db: TestDb) {
    insert(&db, "left").await.unwrap();
    if scenario() == "outlive" {
        *LEFT.lock().unwrap() = Some(db.db());
    }
}

#[test]
fn child_outlive_2_uses_it() {
    let Some(db) = LEFT.lock().unwrap().take() else {
        return;
    };
    let err = db_test::runtime()
        .block_on(sqlx::query("SELECT 1").execute(&db))
        .unwrap_err();
    println!("OUTLIVED: {err}");
    assert_eq!(
        db_test::Error::of(&err).map(|e| e.kind()),
        Some(ErrorKind::TestOver)
    );
}

#[test]
fn a_handle_used_after_its_test_gets_test_is_over() {
    let mut cmd = common::children(&["child_outlive_1_leaves_its_db", "child_outlive_2_uses_it"]);
    cmd.env("DB_TEST_SQLITE_CHILD", "outlive");
    let out = common::run_ok(cmd, "the outlive scenario");
    assert!(out.contains("OUTLIVED: "), "{out}");
    assert!(
        out.contains("child_outlive_1_leaves_its_db` is over"),
        "{out}"
    );
    assert!(out.contains("is over"), "{out}");
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn child_files_database_mode(pool: SqlitePool) {
    sqlx::query("INSERT INTO item (name) VALUES ('file')")
        .execute(&pool)
        .await
        .unwrap();
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn child_files_failing(pool: SqlitePool) {
    sqlx::query("INSERT INTO item (name) VALUES ('kept')")
        .execute(&pool)
        .await
        .unwrap();
    assert!(scenario() != "files", "failing on purpose");
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn child_files_transaction(db: TestDb) {
    insert(&db, "tx").await.unwrap();
}

/// The files in `dir` other than the templates and their locks.
fn leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("db-test-tmpl-"))
        .collect()
}

#[test]
fn no_files_are_left_behind_and_a_failed_database_can_be_kept() {
    let dir = std::env::temp_dir().join(format!("db-test-sqlite-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tests = [
        "child_files_database_mode",
        "child_files_failing",
        "child_files_transaction",
    ];
    let run = |keep: bool| {
        let mut cmd = common::children(&tests);
        cmd.env("DB_TEST_SQLITE_CHILD", "files")
            .env("DB_TEST_SQLITE_DIR", &dir)
            .env("DB_TEST_KEEP_FAILED", if keep { "1" } else { "0" });
        common::run_until(cmd, Duration::from_secs(300))
    };

    // What killed test processes left: removed by the next one (one left
    // its lock file, unlocked now; another's was already removed).
    std::fs::write(dir.join("db-test-00000000deadbeef.lock"), b"").unwrap();
    for suffix in ["", "-wal", "-shm"] {
        for owner in ["00000000deadbeef", "0123456789abcdef"] {
            std::fs::write(dir.join(format!("db-test-{owner}-0.sqlite{suffix}")), b"").unwrap();
        }
    }
    std::fs::write(
        dir.join("db-test-tmpl-0badc0de.00000000deadbeef.building"),
        b"",
    )
    .unwrap();
    // A live owner's files (its lock held: here by this process, standing
    // for a test process in another PID namespace or container) stay.
    let live_lock = std::fs::File::create(dir.join("db-test-1111111111111111.lock")).unwrap();
    live_lock.lock().unwrap();
    let live = "db-test-1111111111111111-0.sqlite";
    std::fs::write(dir.join(live), b"").unwrap();
    // Files of other names, if not of db-test's own scheme, are never
    // removed (a user's backup, say).
    let foreign = [
        "db-2024-01-15.sqlite",
        "db-1-0.sqlite",
        "db-test-notanid-0.sqlite",
        "db-test-00000000deadbeef-0.sqlite.bak",
    ];
    for f in foreign {
        std::fs::write(dir.join(f), b"").unwrap();
    }

    let (out, text) = run(false);
    assert!(!out.status.success(), "one child test fails:\n{text}");
    assert!(text.contains("failing on purpose"), "{text}");
    assert!(text.contains("2 passed; 1 failed"), "{text}");
    let mut left = leftovers(&dir);
    left.sort();
    let mut expected = foreign.map(String::from).to_vec();
    expected.extend([
        "db-test-1111111111111111.lock".to_string(),
        live.to_string(),
    ]);
    expected.sort();
    assert_eq!(left, expected, "{text}");
    for f in foreign {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    // Its owner gone, the next process removes them.
    drop(live_lock);

    let (_, text) = run(true);
    let kept = text
        .lines()
        .find_map(|l| l.split("(DB_TEST_KEEP_FAILED=1): ").nth(1))
        .unwrap_or_else(|| panic!("no kept database in:\n{text}"))
        .trim()
        .to_string();
    let rows: Vec<String> = db_test::runtime().block_on(async {
        let pool = SqlitePool::connect(&format!("sqlite:{kept}"))
            .await
            .unwrap();
        let rows = sqlx::query_scalar("SELECT name FROM item ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows
    });
    assert_eq!(rows, ["seed", "kept"]);
    // The next test processes sweep the files of processes that are gone
    // (the one that kept it among them), never a kept one.
    assert!(kept.contains("kept-db-"), "{kept}");
    let (_, text) = run(false);
    assert!(
        std::path::Path::new(&kept).exists(),
        "the next process removed the kept database:\n{text}"
    );
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{kept}{suffix}"));
    }
    assert_eq!(leftovers(&dir), Vec::<String>::new(), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// db-test's own variable for SQLite naming another database is a clear
/// error. (A `DATABASE_URL` of another database is not read on SQLite, as
/// under `#[sqlx::test]`: `adv_sqlite.rs`.)
#[test]
fn a_sqlite_url_variable_naming_another_database_is_a_clear_error() {
    let mut cmd = common::children(&["child_files_transaction"]);
    cmd.env("DB_TEST_SQLITE_CHILD", "url")
        .env("DB_TEST_SQLITE_URL", "postgres://app:s3cret@db.example/app")
        .env_remove("DATABASE_URL")
        .env_remove("DB_TEST_SQLITE_DIR");
    let (out, text) = common::run_until(cmd, Duration::from_secs(300));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("DB_TEST_SQLITE_URL=postgres://"), "{text}");
    assert!(text.contains("PostgreSQL"), "{text}");
    assert!(text.contains("SQLite"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

// Two tests hold a write transaction at the same time: on one shared file
// the second would wait for the first (SQLITE_BUSY); each has its own copy.
static TX_ARRIVED: AtomicUsize = AtomicUsize::new(0);
static FILE_ARRIVED: AtomicUsize = AtomicUsize::new(0);

/// In the `parallel` scenario, waits until both tests of a pair are here.
async fn meet(arrived: &AtomicUsize) {
    arrived.fetch_add(1, Ordering::SeqCst);
    if scenario() != "parallel" {
        return;
    }
    // A hang guard, not a speed check.
    for _ in 0..6000 {
        if arrived.load(Ordering::SeqCst) >= 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the other test never came");
}

macro_rules! parallel_pair {
    ($($tx:ident, $file:ident, $name:literal);*) => {$(
        #[db_test(migrations = "tests/sqlite_core/migrations")]
        async fn $tx(db: TestDb) {
            let mut tx = db.begin().await.unwrap();
            sqlx::query(concat!("INSERT INTO item (name) VALUES ('", $name, "')")).execute(&mut *tx).await.unwrap();
            drop(tx);
            insert(&db, $name).await.unwrap();
            meet(&TX_ARRIVED).await;
            insert(&db, concat!($name, " again")).await.unwrap();
            assert_eq!(names(&db).await, ["seed", $name, concat!($name, " again")]);
        }

        #[db_test(migrations = "tests/sqlite_core/migrations")]
        async fn $file(pool: SqlitePool) {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(concat!("INSERT INTO item (name) VALUES ('", $name, "')")).execute(&mut *tx).await.unwrap();
            meet(&FILE_ARRIVED).await;
            sqlx::query(concat!("INSERT INTO item (name) VALUES ('", $name, " again')"))
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    )*};
}
parallel_pair!(
    child_parallel_tx_a, child_parallel_file_a, "a";
    child_parallel_tx_b, child_parallel_file_b, "b"
);

#[test]
fn parallel_tests_do_not_contend() {
    for pair in ["child_parallel_tx_", "child_parallel_file_"] {
        let mut cmd = common::child(pair, 2);
        cmd.env("DB_TEST_SQLITE_CHILD", "parallel");
        let out = common::run_ok(cmd, pair);
        assert!(out.contains("2 passed"), "{out}");
    }
}

// `check_constraints`: a deferred foreign key that COMMIT would reject.
#[db_test(migrations = "tests/sqlite_core/migrations", check_constraints = true)]
async fn child_fk_deferred_violation(db: TestDb) {
    sqlx::raw_sql(
        "CREATE TABLE note (id INTEGER PRIMARY KEY, \
           item_id INTEGER REFERENCES item (id) DEFERRABLE INITIALLY DEFERRED)",
    )
    .execute(&db)
    .await
    .unwrap();
    let id = if scenario() == "fk" { 999 } else { 1 };
    // On the bare connection, out of db-test's sight until the end (through
    // `Db` the statement itself would fail: see below).
    let mut conn = db.acquire().await.unwrap();
    let bare: &mut sqlx::SqliteConnection = &mut conn;
    sqlx::query("INSERT INTO note (item_id) VALUES (?)")
        .bind(id)
        .execute(bare)
        .await
        .unwrap();
}

async fn notes(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM note")
        .fetch_one(db)
        .await
        .unwrap()
}

// A deferred foreign key is checked where production's COMMIT checks it:
// a statement outside a transaction commits on its own, and fails; an app
// transaction's `commit()` fails and rolls it back.
#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn a_deferred_key_fails_the_statement_or_the_commit_that_would_commit_it(db: TestDb) {
    sqlx::raw_sql(
        "CREATE TABLE note (id INTEGER PRIMARY KEY, \
           item_id INTEGER REFERENCES item (id) DEFERRABLE INITIALLY DEFERRED)",
    )
    .execute(&db)
    .await
    .unwrap();
    let err = sqlx::query("INSERT INTO note (item_id) VALUES (999)")
        .execute(&db)
        .await
        .unwrap_err();
    assert!(
        err.as_database_error()
            .is_some_and(|e| e.is_foreign_key_violation()),
        "{err}"
    );
    assert_eq!(notes(&db).await, 0);
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO note (item_id) VALUES (999)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = tx.commit().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "error returned from database: FOREIGN KEY constraint failed"
    );
    assert_eq!(notes(&db).await, 0);
    // What the key was made deferred for: the parent comes later in the
    // same transaction (or the same string).
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO note (item_id) VALUES (50)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO item (id, name) VALUES (50, 'later')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(notes(&db).await, 1);
    // A savepoint of the test's own, outside an app transaction, begins a
    // transaction (SQLite's own, in production): inside it nothing is
    // committed, or checked, statement by statement.
    for sql in [
        "SAVEPOINT mine",
        "INSERT INTO note (item_id) VALUES (51)",
        "INSERT INTO item (id, name) VALUES (51, 'x')",
        "SAVEPOINT inner_one",
        "INSERT INTO note (item_id) VALUES (50)",
        "ROLLBACK TO inner_one",
        "RELEASE mine",
    ] {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    assert_eq!(notes(&db).await, 2);
}

// What decides whether a statement commits on its own: a table whose name
// holds `release`, and a string that failed before its `SAVEPOINT`, open
// no savepoint of the test's.
#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn a_deferred_key_is_checked_after_look_alikes_of_savepoints(db: TestDb) {
    sqlx::raw_sql(
        "CREATE TABLE releases (id INTEGER PRIMARY KEY, \
           item_id INTEGER REFERENCES item (id) DEFERRABLE INITIALLY DEFERRED)",
    )
    .execute(&db)
    .await
    .unwrap();
    let orphan = "INSERT INTO releases (item_id) VALUES (999)";
    assert!(sqlx::query(orphan).execute(&db).await.is_err());
    assert!(
        sqlx::raw_sql("INSERT INTO nosuch VALUES (1); SAVEPOINT s")
            .execute(&db)
            .await
            .is_err()
    );
    assert!(sqlx::query(orphan).execute(&db).await.is_err());
}

async fn defers_keys(db: &TestDb) -> i64 {
    sqlx::query_scalar("PRAGMA defer_foreign_keys")
        .fetch_one(db)
        .await
        .unwrap()
}

// `PRAGMA defer_foreign_keys` lasts for one transaction: SQLite switches it
// off at every COMMIT and ROLLBACK, and the next transaction's keys are
// checked at once again.
#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn defer_foreign_keys_ends_with_its_transaction(db: TestDb) {
    for commit in [true, false] {
        let mut tx = db.begin().await.unwrap();
        sqlx::query("PRAGMA defer_foreign_keys = ON")
            .execute(&mut *tx)
            .await
            .unwrap();
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        assert_eq!(defers_keys(&db).await, 0);
    }
    // Outside a transaction it lasts until the next one ends: it opens none
    // itself, and neither does a read.
    sqlx::query("PRAGMA defer_foreign_keys = ON")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(defers_keys(&db).await, 1);
    let mut tx = db.begin().await.unwrap();
    for sql in [
        "INSERT INTO tag (item_id, label) VALUES (70, 'x')",
        "INSERT INTO item (id, name) VALUES (70, 'later')",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(defers_keys(&db).await, 0);
    let mut tx = db.begin().await.unwrap();
    let err = sqlx::query("INSERT INTO tag (item_id, label) VALUES (999, 'x')")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(
        err.as_database_error()
            .is_some_and(|e| e.is_foreign_key_violation()),
        "{err}"
    );
}

#[test]
fn check_constraints_reports_a_deferred_foreign_key_violation() {
    let mut cmd = common::children(&["child_fk_deferred_violation"]);
    cmd.env("DB_TEST_SQLITE_CHILD", "fk");
    let (out, text) = common::run_until(cmd, Duration::from_secs(300));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("1 constraint violation(s)"), "{text}");
    assert!(text.contains("pragma_foreign_key_check"), "{text}");
}

// DDL, then `SELECT *`: the test sees the new column; the next test, on
// the same pooled copy were it reused, sees the old shape again (sqlx's
// statement cache must not carry the first test's columns over).
#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn child_ddl_1_alters(db: TestDb) {
    use sqlx::Row;
    let row = sqlx::query("SELECT * FROM item")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(row.columns().len(), 2);
    sqlx::query("ALTER TABLE item ADD COLUMN extra TEXT DEFAULT 'x'")
        .execute(&db)
        .await
        .unwrap();
    let row = sqlx::query("SELECT * FROM item WHERE 1 = 1")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(row.columns().len(), 3);
    assert_eq!(row.get::<String, _>("extra"), "x");
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn child_ddl_2_selects_star(db: TestDb) {
    use sqlx::Row;
    let row = sqlx::query("SELECT * FROM item WHERE 1 = 1")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(row.columns().len(), 2);
    assert_eq!(row.get::<String, _>("name"), "seed");
}

#[test]
fn ddl_then_select_star_does_not_reach_the_next_test() {
    let cmd = common::children(&["child_ddl_1_alters", "child_ddl_2_selects_star"]);
    let out = common::run_ok(cmd, "the DDL scenario");
    assert!(out.contains("2 passed"), "{out}");
}

// The database ending the test's transaction: `INSERT OR ROLLBACK` (or a
// trigger's `RAISE(ROLLBACK)`) rolls back the whole transaction, the test's
// own included, at any depth. The test fails, rather than going on with its
// earlier writes gone and its later ones outside any transaction. SQLite's
// library says whether a transaction is open (`sqlite3_get_autocommit`).

#[db_test(migrations = "tests/sqlite_core/migrations")]
#[should_panic(expected = "ended the transaction of test")]
async fn insert_or_rollback_of_an_autocommit_write_fails_the_test(db: TestDb) {
    insert(&db, "before").await.unwrap();
    let err = sqlx::query("INSERT OR ROLLBACK INTO item (name) VALUES ('before')")
        .execute(&db)
        .await;
    assert!(err.is_err());
    assert!(
        insert(&db, "after").await.is_err(),
        "ran outside a transaction"
    );
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
#[should_panic(expected = "ended the transaction of test")]
async fn insert_or_rollback_inside_an_app_transaction_fails_the_test(db: TestDb) {
    insert(&db, "before").await.unwrap();
    let mut tx = db.begin().await.unwrap();
    let err = sqlx::query("INSERT OR ROLLBACK INTO item (name) VALUES ('before')")
        .execute(&mut *tx)
        .await;
    assert!(err.is_err());
    drop(tx);
    assert!(
        insert(&db, "after").await.is_err(),
        "ran outside a transaction"
    );
}

/// The check after a failed statement leaves the test's own savepoints
/// alone: `ROLLBACK TO` one set before the failure works, as in production.
#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn a_failure_leaves_the_tests_own_savepoints_alone(db: TestDb) {
    sqlx::query("SAVEPOINT mine").execute(&db).await.unwrap();
    insert(&db, "a").await.unwrap();
    assert!(insert(&db, "a").await.is_err());
    sqlx::query("ROLLBACK TO mine").execute(&db).await.unwrap();
    sqlx::query("RELEASE mine").execute(&db).await.unwrap();
    assert_eq!(names(&db).await, ["seed"]);
}

/// The project's own name for its pool: the backend comes from the type
/// behind the alias.
type AppPool = SqlitePool;

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn an_alias_of_sqlite_pool_gets_a_database_of_its_own(pool: AppPool) {
    sqlx::query("CREATE TABLE alias_t (a INT)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO item (name) VALUES ('alias')")
        .execute(&pool)
        .await
        .unwrap();
    let names = names(&pool).await;
    assert_eq!(names.last().map(String::as_str), Some("alias"));
}

/// `migrations = false`: an empty database, as under `#[sqlx::test]`
/// (no `_sqlx_migrations` either), in both modes.
async fn schema_objects<'e>(e: impl sqlx::Executor<'e, Database = sqlx::Sqlite>) -> Vec<String> {
    sqlx::query_scalar("SELECT name FROM sqlite_master ORDER BY name")
        .fetch_all(e)
        .await
        .unwrap()
}

#[db_test(migrations = false)]
async fn no_migrations_is_an_empty_database(pool: SqlitePool) {
    assert_eq!(schema_objects(&pool).await, Vec::<String>::new());
}

#[db_test(migrations = false)]
async fn no_migrations_is_an_empty_database_in_transaction_mode(db: TestDb) {
    assert_eq!(schema_objects(&db).await, Vec::<String>::new());
    db.execute("CREATE TABLE t (a INTEGER)").await.unwrap();
    assert_eq!(schema_objects(&db).await, vec!["t".to_string()]);
}

// A database-mode pool has `#[sqlx::test]`'s `max_connections` (1000);
// with a paused clock db-test opens `DB_TEST_DATABASE_POOL_SIZE` (5) of
// them before the body starts, as it did when that was the pool's size (a
// connection opened under a paused clock would time out: the clock jumps
// to the acquire timeout while SQLite's thread opens the file).
#[db_test(
    migrations = "tests/sqlite_core/migrations",
    flavor = "current_thread",
    start_paused = true
)]
async fn a_paused_database_mode_test_gets_five_connections_at_once(pool: SqlitePool) {
    assert_eq!(pool.options().get_max_connections(), 1000);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(pool.acquire().await.unwrap());
    }
    for conn in &mut held {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM item")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
}

// DDL, then `SELECT *` of the table it changed. sqlx caches each prepared
// statement with its columns; SQLite re-prepares a statement after a
// schema change, so a `SELECT *` cached before the `ALTER` returns one more
// column than sqlx's cached list (sqlx-sqlite panics, index out of bounds).
// The `SELECT *` cached earlier in the same test:
#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn ddl_then_select_star_reads_the_new_column(db: TestDb) {
    let before: Vec<(i64, String)> = sqlx::query_as("SELECT * FROM item")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(before.len(), 1);
    sqlx::query("ALTER TABLE item ADD COLUMN price INTEGER NOT NULL DEFAULT 7")
        .execute(&db)
        .await
        .unwrap();
    let after: Vec<(i64, String, i64)> = sqlx::query_as("SELECT * FROM item")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(after, [(1, "seed".to_string(), 7)]);
    // Undone by an app transaction's rollback: the old columns again.
    let mut tx = db.begin().await.unwrap();
    sqlx::query("ALTER TABLE item ADD COLUMN kind TEXT")
        .execute(&mut *tx)
        .await
        .unwrap();
    let wide: Vec<(i64, String, i64, Option<String>)> = sqlx::query_as("SELECT * FROM item")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(wide.len(), 1);
    tx.rollback().await.unwrap();
    let back: Vec<(i64, String, i64)> = sqlx::query_as("SELECT * FROM item")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(back, [(1, "seed".to_string(), 7)]);
}

// The `SELECT *` cached by an earlier test on the same pooled copy: the
// second test is fine under `#[sqlx::test]` (a fresh connection), so it
// must be here too.
#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn child_ddl_1_select_star(db: TestDb) {
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT * FROM item")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn child_ddl_2_alter_then_select_star(db: TestDb) {
    sqlx::query("ALTER TABLE item ADD COLUMN price INTEGER NOT NULL DEFAULT 7")
        .execute(&db)
        .await
        .unwrap();
    let rows: Vec<(i64, String, i64)> = sqlx::query_as("SELECT * FROM item")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(rows, [(1, "seed".to_string(), 7)]);
}

// The same on the bare connection of a guard, which db-test does not read.
#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn child_ddl_3_bare_alter_then_select_star(db: TestDb) {
    let mut conn = db.acquire().await.unwrap();
    let bare: &mut sqlx::SqliteConnection = &mut conn;
    sqlx::query("ALTER TABLE item ADD COLUMN price INTEGER NOT NULL DEFAULT 7")
        .execute(&mut *bare)
        .await
        .unwrap();
    let rows: Vec<(i64, String, i64)> = sqlx::query_as("SELECT * FROM item")
        .fetch_all(&mut *bare)
        .await
        .unwrap();
    assert_eq!(rows, [(1, "seed".to_string(), 7)]);
    drop(conn);
    // And through `Db` after it.
    let rows: Vec<(i64, String, i64)> = sqlx::query_as("SELECT * FROM item")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
}

#[test]
fn ddl_does_not_meet_a_select_star_an_earlier_test_cached() {
    let mut cmd = common::children(&[
        "child_ddl_1_select_star",
        "child_ddl_2_alter_then_select_star",
    ]);
    cmd.env("DB_TEST_POOL_SIZE", "1");
    let out = common::run_ok(cmd, "the DDL scenario");
    assert!(out.contains("2 passed"), "{out}");
    let mut cmd = common::children(&[
        "child_ddl_1_select_star",
        "child_ddl_3_bare_alter_then_select_star",
    ]);
    cmd.env("DB_TEST_POOL_SIZE", "1");
    let out = common::run_ok(cmd, "the DDL scenario");
    assert!(out.contains("2 passed"), "{out}");
}

// The same in database mode, on the test's own pool, which db-test does not
// read: one connection caches `SELECT *`, then alters the table.
#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn database_mode_ddl_then_select_star_reads_the_new_column(pool: SqlitePool) {
    let mut conn = pool.acquire().await.unwrap();
    let before: Vec<(i64, String)> = sqlx::query_as("SELECT * FROM item")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert_eq!(before.len(), 1);
    sqlx::query("ALTER TABLE item ADD COLUMN price INTEGER NOT NULL DEFAULT 7")
        .execute(&mut *conn)
        .await
        .unwrap();
    let after: Vec<(i64, String, i64)> = sqlx::query_as("SELECT * FROM item")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert_eq!(after, [(1, "seed".to_string(), 7)]);
}
