//! MySQL/MariaDB: transaction mode and database mode on a real server (the
//! embedded one, or `DB_TEST_MYSQL_URL`). The core suite every backend
//! shares is the backend matrix, `matrix.rs`; this file keeps what is
//! MySQL's own (implicit commits, session state, copies, timeouts).
//!
//! Tests whose names start with `child_` do their real work only when run
//! as a child process by another test here (`DB_TEST_MYSQL_CHILD=1`).

mod common;

use std::time::Duration;

use db_test::mysql::TestDb;
use db_test::{FromTestContext, TestContext, db_test};
use sqlx::mysql::MySqlConnection;
use sqlx::{Connection, MySqlPool};

fn is_child() -> bool {
    std::env::var_os("DB_TEST_MYSQL_CHILD").is_some()
}

/// A connection of its own to the test's database: it sees only what is
/// committed.
async fn outsider(db: &TestDb) -> MySqlConnection {
    MySqlConnection::connect_with(&db.connect_options())
        .await
        .expect("a second connection")
}

async fn committed_users(conn: &mut MySqlConnection, name: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM user WHERE username = ?")
        .bind(name)
        .fetch_one(conn)
        .await
        .unwrap()
}

async fn users<'e>(db: impl sqlx::Executor<'e, Database = sqlx::MySql>) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM user")
        .fetch_one(db)
        .await
        .unwrap()
}

// A plain transaction-mode test, also run as "a later process" by the
// child-process tests below.
#[db_test(migrations = "tests/mysql/migrations")]
async fn rollback_between_tests_a(db: TestDb) {
    assert_eq!(users(&db).await, 0);
    sqlx::query("INSERT INTO user (username) VALUES ('carol')")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(users(&db).await, 1);
}

#[db_test(migrations = "tests/mysql/migrations")]
// The refusal fails the test at its end, even though the test handled the error.
#[should_panic(expected = "refusing to run")]
async fn implicit_commit_ddl_is_refused_and_nothing_is_committed(db: TestDb) {
    sqlx::query("INSERT INTO user (username) VALUES ('gina')")
        .execute(&db)
        .await
        .unwrap();
    let err = sqlx::query("CREATE TABLE leak (a INT)")
        .execute(&db)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("CREATE TABLE"), "{err}");
    assert!(err.contains("isolation = \"database\""), "{err}");
    // The DDL never reached the server, so it committed nothing.
    let mut other = outsider(&db).await;
    assert_eq!(committed_users(&mut other, "gina").await, 0);
    let leak: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_name = 'leak'",
    )
    .fetch_one(&mut other)
    .await
    .unwrap();
    assert_eq!(leak, 0);
}

#[db_test(migrations = "tests/mysql/migrations")]
// The refusal fails the test at its end, even though the test handled the error.
#[should_panic(expected = "refusing to run")]
async fn truncate_on_a_raw_connection_guard_is_refused(db: TestDb) {
    sqlx::query("INSERT INTO user (username) VALUES ('hana')")
        .execute(&db)
        .await
        .unwrap();
    let mut conn = db.acquire().await.unwrap();
    let err = sqlx::query("TRUNCATE TABLE comment")
        .execute(&mut *conn)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("TRUNCATE"), "{err}");
    drop(conn);
    let mut other = outsider(&db).await;
    assert_eq!(committed_users(&mut other, "hana").await, 0);
}

#[db_test(migrations = "tests/mysql/migrations")]
// The refusal fails the test at its end, even though the test handled the error.
#[should_panic(expected = "refusing to run")]
async fn a_commit_hidden_in_a_multi_statement_string_is_refused(db: TestDb) {
    let err = sqlx::raw_sql(
        "INSERT INTO user (username) VALUES ('ivan'); /* harmless */ COMMIT; SELECT 1",
    )
    .execute(&db)
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("COMMIT"), "{err}");
    let err = sqlx::raw_sql("INSERT INTO user (username) VALUES ('ivan') /*! ; COMMIT */")
        .execute(&db)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("COMMIT"), "{err}");
    let mut other = outsider(&db).await;
    assert_eq!(committed_users(&mut other, "ivan").await, 0);
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn create_temporary_table_is_allowed(db: TestDb) {
    sqlx::query("CREATE TEMPORARY TABLE scratch (a INT)")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO scratch VALUES (1), (2)")
        .execute(&db)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM scratch")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 2);
    sqlx::query("DROP TEMPORARY TABLE scratch")
        .execute(&db)
        .await
        .unwrap();
}

#[db_test(migrations = "tests/mysql/migrations", isolation = "database")]
async fn database_mode_commits_for_real(db: TestDb, ctx: TestContext) {
    assert!(ctx.is_database_mode());
    assert!(ctx.database_name().starts_with("dbtest_"));
    sqlx::query("INSERT INTO user (username) VALUES ('jack')")
        .execute(&db)
        .await
        .unwrap();
    let mut other = outsider(&db).await;
    assert_eq!(committed_users(&mut other, "jack").await, 1);
    // DDL is fine on a database of the test's own.
    sqlx::query("CREATE TABLE extra (a INT)")
        .execute(&db)
        .await
        .unwrap();
    if is_child() {
        println!("DATABASE={}", ctx.database_name());
    }
}

/// A schema with a view, a trigger, a procedure, a function, a generated
/// column and seed rows: a per-test database is a faithful copy.
#[db_test(migrations = "tests/mysql/rich_migrations", isolation = "database")]
async fn database_mode_copies_views_routines_triggers_and_rows(pool: MySqlPool) {
    let seeded: Vec<String> = sqlx::query_scalar("SELECT name FROM item ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(seeded, ["seed-a", "seed-b"]);
    // The copy fired no trigger: the log holds only the migration's rows.
    let logged: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM item_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(logged, 2);
    sqlx::query("INSERT INTO item (name, price) VALUES ('new', 5)")
        .execute(&pool)
        .await
        .unwrap();
    let logged: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM item_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(logged, 3, "the trigger was copied");
    let doubled: i64 = sqlx::query_scalar("SELECT doubled FROM item WHERE name = 'new'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(doubled, 10, "the generated column was copied");
    let view: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cheap_items")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(view, 3, "the view reads this database's rows");
    let via_view_of_view: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cheap_item_names")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(via_view_of_view, 3);
    let label: String =
        sqlx::query_scalar("SELECT label FROM labelled_items WHERE name = 'seed-a'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        label, "$1",
        "a view that calls a stored function was copied"
    );
    let total: i64 = sqlx::query_scalar("SELECT total_price()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, 1 + 2 + 5);
    sqlx::query("CALL add_item('called')")
        .execute(&pool)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM item")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 4);
    let auto: i64 = sqlx::query_scalar("SELECT MAX(id) FROM item")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(auto, 4, "AUTO_INCREMENT goes on from the template's");
}

#[db_test(migrations = "tests/mysql/migrations", timeout = "1s")]
async fn child_transaction_timeout(db: TestDb) {
    if !is_child() {
        return;
    }
    let _: Option<i64> = sqlx::query_scalar("SELECT SLEEP(30) + 0 * LENGTH('dbtest-tx-sleep')")
        .fetch_optional(&db)
        .await
        .unwrap();
}

#[db_test(
    migrations = "tests/mysql/migrations",
    timeout = "1s",
    isolation = "database"
)]
async fn child_database_timeout(pool: MySqlPool) {
    if !is_child() {
        return;
    }
    let _: Option<i64> = sqlx::query_scalar("SELECT SLEEP(30) + 0 * LENGTH('dbtest-db-sleep')")
        .fetch_optional(&pool)
        .await
        .unwrap();
}

async fn running(conn: &mut MySqlConnection, marker: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.processlist \
         WHERE info LIKE CONCAT('%', ?, '%') AND id <> CONNECTION_ID()",
    )
    .bind(marker)
    .fetch_one(conn)
    .await
    .unwrap()
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn a_timed_out_test_has_its_statement_cancelled(db: TestDb) {
    let mut other = outsider(&db).await;
    for (test, marker) in [
        ("child_transaction_timeout", "dbtest-tx-sleep"),
        ("child_database_timeout", "dbtest-db-sleep"),
    ] {
        let mut cmd = common::children(&[test]);
        cmd.env("DB_TEST_MYSQL_CHILD", "1");
        let (out, text) =
            tokio::task::spawn_blocking(move || common::run_until(cmd, Duration::from_secs(25)))
                .await
                .unwrap();
        assert!(!out.status.success(), "{text}");
        assert!(text.contains("timed out after 1s"), "{text}");
        // The child is gone; its statement must not run on in the server.
        assert_eq!(running(&mut other, marker).await, 0, "{text}");
    }
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn per_test_databases_are_dropped(db: TestDb) {
    let mut cmd = common::children(&["database_mode_commits_for_real"]);
    cmd.env("DB_TEST_MYSQL_CHILD", "1");
    let text = tokio::task::spawn_blocking(move || common::run_ok(cmd, "database mode child"))
        .await
        .unwrap();
    let name = common::word_after(&text, "DATABASE=").expect("the child names its database");
    // The child may have kept it as a spare (reset, for its next test) when
    // it exited: the next process's sweep drops what a gone process left,
    // in the background (its test waits for it).
    let mut cmd = common::children(&["child_waits_for_the_sweep"]);
    cmd.env("DB_TEST_MYSQL_CHILD", "1")
        .env("DB_TEST_SWEPT_NAME", &name);
    tokio::task::spawn_blocking(move || common::run_ok(cmd, "a later process"))
        .await
        .unwrap();
    let mut other = outsider(&db).await;
    assert_eq!(
        schemata_named(&mut other, &name).await,
        0,
        "{name} was left behind"
    );
}

async fn schemata_named(conn: &mut MySqlConnection, name: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = ?")
        .bind(name)
        .fetch_one(conn)
        .await
        .unwrap()
}

/// A later process: its start sweeps what gone processes left, off the
/// tests' time; this test waits (30 s at most) for the database it is told
/// of to be gone.
#[db_test(migrations = "tests/mysql/migrations")]
async fn child_waits_for_the_sweep(db: TestDb) {
    let Ok(name) = std::env::var("DB_TEST_SWEPT_NAME") else {
        return;
    };
    let mut other = outsider(&db).await;
    for _ in 0..300 {
        if schemata_named(&mut other, &name).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} was not swept within 30 s");
}

// Session state survives ROLLBACK on MySQL: these two must not inherit each
// other's temporary table or user variable when they share a connection.
#[db_test(migrations = "tests/mysql/migrations")]
async fn child_session_a(db: TestDb) {
    fresh_session_then_dirty_it(&db).await;
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_session_b(db: TestDb) {
    fresh_session_then_dirty_it(&db).await;
}

async fn fresh_session_then_dirty_it(db: &TestDb) {
    let v: Option<i64> = sqlx::query_scalar("SELECT @dbtest_v")
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(v, None, "a user variable of an earlier test");
    sqlx::query("SET @dbtest_v = 1").execute(db).await.unwrap();
    sqlx::query("CREATE TEMPORARY TABLE leftover (a INT)")
        .execute(db)
        .await
        .unwrap();
}

#[test]
fn session_state_does_not_leak_to_the_next_test() {
    // One connection in the pool: the second test gets the first's.
    let mut cmd = common::children(&["child_session_a", "child_session_b"]);
    cmd.env("DB_TEST_POOL_SIZE", "1");
    common::run_ok(cmd, "two tests on one connection");
}

// The same through the bare connection of a guard, which db-test does not
// read: a test that took one gets a connection closed at its end.
#[db_test(migrations = "tests/mysql/migrations")]
async fn child_bare_session_a(db: TestDb) {
    fresh_session_then_dirty_it_bare(&db).await;
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_bare_session_b(db: TestDb) {
    fresh_session_then_dirty_it_bare(&db).await;
}

async fn fresh_session_then_dirty_it_bare(db: &TestDb) {
    let mut conn = db.acquire().await.unwrap();
    let bare: &mut MySqlConnection = &mut conn;
    let (fk, tz, v): (i64, String, Option<i64>) =
        sqlx::query_as("SELECT @@foreign_key_checks, @@time_zone, @dbtest_bare")
            .fetch_one(&mut *bare)
            .await
            .unwrap();
    assert_eq!(fk, 1, "FOREIGN_KEY_CHECKS=0 of an earlier test");
    assert_ne!(tz, "+05:00", "the time zone of an earlier test");
    assert_eq!(v, None, "a user variable of an earlier test");
    sqlx::raw_sql(
        "SET SESSION foreign_key_checks = 0; SET SESSION time_zone = '+05:00'; \
         SET @dbtest_bare = 1; CREATE TEMPORARY TABLE bare_leftover (a INT)",
    )
    .execute(&mut *bare)
    .await
    .unwrap();
}

#[test]
fn session_state_set_on_a_bare_connection_does_not_leak_to_the_next_test() {
    let mut cmd = common::children(&["child_bare_session_a", "child_bare_session_b"]);
    cmd.env("DB_TEST_POOL_SIZE", "1");
    common::run_ok(cmd, "two tests on one connection slot");
}

#[db_test(migrations = "tests/mysql/migrations")]
// The refusal fails the test at its end, even though the test handled the error.
#[should_panic(expected = "refusing to run")]
async fn a_commit_in_a_compound_statement_is_refused(db: TestDb) {
    let err = sqlx::raw_sql(
        "INSERT INTO user (username) VALUES ('compound'); BEGIN NOT ATOMIC COMMIT; END",
    )
    .execute(&db)
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("compound statement"), "{err}");
    let mut other = outsider(&db).await;
    assert_eq!(committed_users(&mut other, "compound").await, 0);
}

#[db_test(migrations = "tests/mysql/migrations")]
// The refusal fails the test at its end, even though the test handled the error.
#[should_panic(expected = "refusing to run")]
async fn a_commit_after_a_string_ended_by_no_backslash_escapes_is_refused(db: TestDb) {
    sqlx::query("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")
        .execute(&db)
        .await
        .unwrap();
    let err = sqlx::raw_sql("INSERT INTO user (username) VALUES ('nbe\\'); COMMIT; -- ')")
        .execute(&db)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("COMMIT"), "{err}");
    let mut other = outsider(&db).await;
    assert_eq!(committed_users(&mut other, "nbe\\").await, 0);
}

/// A statement whose future is dropped while it runs (a `tokio::time::timeout`
/// around it, an HTTP request given up): it is stopped on the server (`KILL
/// QUERY`), as PostgreSQL's cancel request does, so the test's next
/// statement does not wait for it to end.
#[db_test(migrations = "tests/mysql/migrations")]
async fn a_dropped_long_statement_is_stopped(db: TestDb) {
    let dropped = tokio::time::timeout(
        Duration::from_millis(200),
        sqlx::query("SELECT SLEEP(60)").execute(&db),
    )
    .await;
    assert!(dropped.is_err());
    let t0 = std::time::Instant::now();
    let one: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&db).await.unwrap();
    assert_eq!(one, 1);
    // A hang check, not a speed check: without the stop it waits 60 s.
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let running: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.processlist WHERE info = 'SELECT SLEEP(60)'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(running, 0);
}

/// The same, after the test wrote: the stopped read's error ("query
/// execution was interrupted") does not undo the write before it, nor end
/// the transaction.
#[db_test(migrations = "tests/mysql/migrations")]
async fn a_read_stopped_after_a_write_keeps_the_write(db: TestDb) {
    sqlx::query("INSERT INTO user (username) VALUES ('pre-stop')")
        .execute(&db)
        .await
        .unwrap();
    let dropped = tokio::time::timeout(
        Duration::from_millis(200),
        sqlx::query("SELECT SLEEP(60) FROM user").fetch_all(&db),
    )
    .await;
    assert!(dropped.is_err());
    let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM user WHERE username = 'pre-stop'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(kept, 1);
    sqlx::query("INSERT INTO user (username) VALUES ('post-stop')")
        .execute(&db)
        .await
        .unwrap();
}

/// A test that took a guard, dropped a statement and then timed out in
/// another: it fails for its timeout, and the stopped statement's late error
/// is not read as a commit of its transaction.
#[db_test(migrations = "tests/mysql/migrations", timeout = "2s")]
async fn child_timeout_after_a_dropped_statement(db: TestDb) {
    drop(db.acquire().await.unwrap());
    sqlx::query("INSERT INTO user (username) VALUES ('drop-timeout')")
        .execute(&db)
        .await
        .unwrap();
    if !is_child() {
        return;
    }
    let _ = tokio::time::timeout(
        Duration::from_millis(200),
        sqlx::query("SELECT SLEEP(3600)").execute(&db),
    )
    .await;
    sqlx::query("SELECT SLEEP(30)").execute(&db).await.unwrap();
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn a_timeout_after_a_dropped_statement_is_reported_as_a_timeout(db: TestDb) {
    let cmd = {
        let mut cmd = common::children(&["child_timeout_after_a_dropped_statement"]);
        cmd.env("DB_TEST_MYSQL_CHILD", "1");
        cmd
    };
    let (out, text) =
        tokio::task::spawn_blocking(move || common::run_until(cmd, Duration::from_secs(120)))
            .await
            .unwrap();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("timed out"), "{text}");
    assert!(!text.contains("COMMITTED"), "{text}");
    let mut other = outsider(&db).await;
    assert_eq!(committed_users(&mut other, "drop-timeout").await, 0);
}

// Concurrent inserts of the unique values an earlier test wrote into the
// same (recycled) database: as in a fresh clone, they do not deadlock.
// Deleted rows would stay in the unique index until purged, and inserts of
// the same values take shared locks on them.
async fn insert_concurrently(pool: &MySqlPool) {
    let inserts = (0..16).map(|i| {
        let pool = pool.clone();
        async move {
            sqlx::query("INSERT INTO user (username) VALUES (?)")
                .bind(format!("same-{i}"))
                .execute(&pool)
                .await
        }
    });
    for result in futures_util::future::join_all(inserts).await {
        result.expect("an insert into a recycled database");
    }
}

#[db_test(migrations = "tests/mysql/migrations", isolation = "database")]
async fn child_same_values_a(pool: MySqlPool) {
    insert_concurrently(&pool).await;
}

#[db_test(migrations = "tests/mysql/migrations", isolation = "database")]
async fn child_same_values_b(pool: MySqlPool) {
    insert_concurrently(&pool).await;
}

#[db_test(migrations = "tests/mysql/migrations", isolation = "database")]
async fn child_same_values_c(pool: MySqlPool) {
    insert_concurrently(&pool).await;
}

#[test]
fn concurrent_inserts_of_an_earlier_tests_values_do_not_deadlock() {
    for _ in 0..3 {
        let cmd = common::children(&[
            "child_same_values_a",
            "child_same_values_b",
            "child_same_values_c",
        ]);
        common::run_ok(cmd, "three tests on one recycled database");
    }
}

// Run one after another in one process: each gets the database the one
// before used, reset (or, after a schema change, a fresh clone).
#[db_test(migrations = "tests/mysql/migrations", isolation = "database")]
async fn child_recycled_a(db: TestDb) {
    first_insert_gets_id_1(&db).await;
}

#[db_test(migrations = "tests/mysql/migrations", isolation = "database")]
async fn child_recycled_b(db: TestDb) {
    first_insert_gets_id_1(&db).await;
    sqlx::query("ALTER TABLE user ADD COLUMN extra INT")
        .execute(&db)
        .await
        .unwrap();
}

#[db_test(migrations = "tests/mysql/migrations", isolation = "database")]
async fn child_recycled_c(db: TestDb) {
    let extra: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.columns \
         WHERE table_schema = DATABASE() AND table_name = 'user' AND column_name = 'extra'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(extra, 0, "a schema change of an earlier test");
    first_insert_gets_id_1(&db).await;
}

async fn first_insert_gets_id_1(db: &TestDb) {
    let name: String = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(db)
        .await
        .unwrap();
    println!("USED {name}");
    assert_eq!(users(db).await, 0, "rows of an earlier test");
    let id = sqlx::query("INSERT INTO user (username) VALUES ('mia')")
        .execute(db)
        .await
        .unwrap()
        .last_insert_id();
    assert_eq!(id, 1, "AUTO_INCREMENT moved by an earlier test");
}

// A connection the test opened itself, on a thread of its own (out of
// db-test's sight: not its pool, not a task of the test's runtime), writes
// after the test ended. Its database must not go to the next test.
#[db_test(migrations = "tests/mysql/migrations", isolation = "database")]
async fn child_straggler_a(db: TestDb) {
    first_insert_gets_id_1(&db).await;
    let options = db.connect_options();
    let (connected, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut conn = MySqlConnection::connect_with(&options).await.unwrap();
            connected.send(()).unwrap();
            tokio::time::sleep(Duration::from_millis(600)).await;
            // Fails once the database is dropped: what it must not do is
            // land in the next test's database.
            let _ = sqlx::query("INSERT INTO user (username) VALUES ('late')")
                .execute(&mut conn)
                .await;
        });
    });
    ready.recv().unwrap();
}

#[db_test(migrations = "tests/mysql/migrations", isolation = "database")]
async fn child_straggler_b(db: TestDb) {
    first_insert_gets_id_1(&db).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let late: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM user WHERE username = 'late'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(late, 0, "a row written by an earlier test's own connection");
}

#[test]
fn a_database_with_a_session_the_test_opened_itself_is_not_recycled() {
    let text = common::run_ok(
        common::children(&["child_straggler_a", "child_straggler_b"]),
        "a test leaving a connection of its own, then another",
    );
    let used = used_databases(&text);
    assert_eq!(used.len(), 2, "{text}");
    assert_ne!(used[0], used[1], "{text}");
}

/// The databases the `child_*` tests of a run printed as `USED <name>`, in
/// order.
fn used_databases(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.split("USED ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect()
}

#[test]
fn per_test_databases_are_reset_between_tests() {
    let text = common::run_ok(
        common::children(&["child_recycled_a", "child_recycled_b", "child_recycled_c"]),
        "three database-mode tests in a row",
    );
    let used = used_databases(&text);
    assert_eq!(used.len(), 3, "{text}");
    assert_eq!(
        used[0], used[1],
        "the second test reuses the first's database"
    );
    assert_ne!(used[1], used[2], "a changed schema is not reused");
}

// Every kind of change a database-mode test can make to its own schema.
// After each, the database must not be handed to another test (it is
// dropped, not recycled); between two tests that change nothing, it is.
// Run one after another in one process, so that each gets the database
// the one before used whenever that one could be reset.
const SCHEMA_CHANGES: &[(&str, &str)] = &[
    (
        "trigger",
        "CREATE TRIGGER t_user BEFORE INSERT ON user FOR EACH ROW SET NEW.username = UPPER(NEW.username)",
    ),
    ("procedure", "CREATE PROCEDURE p_noop() SELECT 1"),
    (
        "function",
        "CREATE FUNCTION f_one() RETURNS INT DETERMINISTIC RETURN 1",
    ),
    ("view", "CREATE VIEW v_user AS SELECT user_id FROM user"),
    ("index", "CREATE INDEX user_name_idx ON user (username)"),
    (
        "check",
        "ALTER TABLE user ADD CONSTRAINT short_name CHECK (CHAR_LENGTH(username) < 5)",
    ),
    (
        "default",
        "ALTER TABLE post ALTER COLUMN content SET DEFAULT 'x'",
    ),
    ("comment", "ALTER TABLE user COMMENT 'changed'"),
    (
        "charset",
        "ALTER DATABASE CHARACTER SET latin1 COLLATE latin1_swedish_ci",
    ),
    ("table", "CREATE TABLE extra (a INT)"),
    ("drop", "DROP TABLE comment"),
    ("rename", "RENAME TABLE comment TO comment2"),
    ("sequence", "CREATE SEQUENCE s_extra"),
    (
        "event",
        "CREATE EVENT e_noop ON SCHEDULE EVERY 1 DAY DO SELECT 1",
    ),
];

#[db_test(migrations = "tests/mysql/migrations", isolation = "database")]
async fn child_schema_probe(db: TestDb) {
    first_insert_gets_id_1(&db).await;
}

#[db_test(migrations = "tests/mysql/migrations", isolation = "database")]
async fn child_schema_change(db: TestDb) {
    first_insert_gets_id_1(&db).await;
    if !is_child() {
        return;
    }
    let change = std::env::var("DB_TEST_SCHEMA_CHANGE").unwrap();
    let (_, sql) = SCHEMA_CHANGES.iter().find(|(k, _)| *k == change).unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
        .execute(&db)
        .await
        .unwrap_or_else(|e| panic!("{change}: {e}"));
}

#[test]
fn a_changed_schema_is_never_recycled() {
    for (change, _) in SCHEMA_CHANGES {
        let mut cmd = common::children(&[
            "child_schema_probe",
            "child_schema_change",
            "child_schema_probe",
        ]);
        cmd.env("DB_TEST_MYSQL_CHILD", "1")
            .env("DB_TEST_SCHEMA_CHANGE", change);
        // libtest runs the named tests in name order, whatever the order
        // given: change, then probe; the probe runs once only.
        let text = common::run_ok(cmd, change);
        let used = used_databases(&text);
        assert_eq!(used.len(), 2, "{change}: {text}");
        assert_ne!(
            used[0], used[1],
            "{change}: a changed database was reused\n{text}"
        );
    }
}

// A task that outlives its test, holding a connection to the test's own
// database: the test ends at once, the next test gets another database,
// and the process does not hang on it.
#[db_test(
    migrations = "tests/mysql/migrations",
    isolation = "database",
    flavor = "multi_thread"
)]
async fn child_held_a(pool: MySqlPool) {
    let name: String = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(&pool)
        .await
        .unwrap();
    println!("USED {name}");
    let conn = pool.acquire().await.unwrap();
    if is_child() {
        tokio::spawn(async move {
            let _conn = conn;
            std::future::pending::<()>().await;
        });
    }
}

#[db_test(migrations = "tests/mysql/migrations", isolation = "database")]
async fn child_held_b(db: TestDb) {
    first_insert_gets_id_1(&db).await;
}

#[test]
fn a_task_holding_a_connection_of_its_database_does_not_hang_or_leak() {
    let mut cmd = common::children(&["child_held_a", "child_held_b"]);
    cmd.env("DB_TEST_MYSQL_CHILD", "1");
    let (out, text) = common::run_until(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "{text}");
    let used = used_databases(&text);
    assert_eq!(used.len(), 2, "{text}");
    assert_ne!(
        used[0], used[1],
        "a database still in use was handed on\n{text}"
    );
}

// A template with seed rows: a recycled database has exactly those rows,
// and its counter where the template's is, whatever the test before did:
// changed rows, rows put back as they were but with the counter moved, a
// change of case only (equal under the column's collation, not in bytes).
#[db_test(migrations = "tests/mysql/seeded_migrations", isolation = "database")]
async fn child_seeded_a(db: TestDb) {
    seeded_is_pristine_then_dirty_it(&db, Dirt::Rows).await;
}

#[db_test(migrations = "tests/mysql/seeded_migrations", isolation = "database")]
async fn child_seeded_b(db: TestDb) {
    seeded_is_pristine_then_dirty_it(&db, Dirt::CounterOnly).await;
}

#[db_test(migrations = "tests/mysql/seeded_migrations", isolation = "database")]
async fn child_seeded_c(db: TestDb) {
    seeded_is_pristine_then_dirty_it(&db, Dirt::CaseOnly).await;
}

#[db_test(migrations = "tests/mysql/seeded_migrations", isolation = "database")]
async fn child_seeded_d(db: TestDb) {
    seeded_is_pristine_then_dirty_it(&db, Dirt::Rows).await;
}

enum Dirt {
    Rows,
    CounterOnly,
    CaseOnly,
}

async fn seeded_is_pristine_then_dirty_it(db: &TestDb, dirt: Dirt) {
    let name: String = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(db)
        .await
        .unwrap();
    println!("USED {name}");
    let roles: Vec<(i32, String)> =
        sqlx::query_as("SELECT role_id, name FROM role ORDER BY role_id")
            .fetch_all(db)
            .await
            .unwrap();
    assert_eq!(
        roles,
        vec![(1, "admin".to_string()), (2, "user".to_string())]
    );
    let id = sqlx::query("INSERT INTO role (name) VALUES ('guest')")
        .execute(db)
        .await
        .unwrap()
        .last_insert_id();
    assert_eq!(id, 3, "the counter of an earlier test");
    let dirt = match dirt {
        Dirt::Rows => [
            "DELETE FROM role WHERE name = 'admin'",
            "UPDATE role SET name = 'x' WHERE name = 'user'",
        ]
        .as_slice(),
        Dirt::CounterOnly => ["DELETE FROM role WHERE name = 'guest'"].as_slice(),
        Dirt::CaseOnly => [
            "DELETE FROM role WHERE name = 'guest'",
            "UPDATE role SET name = 'USER' WHERE role_id = 2",
        ]
        .as_slice(),
    };
    for sql in dirt {
        sqlx::query(*sql).execute(db).await.unwrap();
    }
}

#[test]
fn a_recycled_database_gets_the_templates_rows_back() {
    let text = common::run_ok(
        common::children(&[
            "child_seeded_a",
            "child_seeded_b",
            "child_seeded_c",
            "child_seeded_d",
        ]),
        "four database-mode tests on a seeded template",
    );
    let used = used_databases(&text);
    assert_eq!(used.len(), 4, "{text}");
    assert!(
        used.iter().all(|u| *u == used[0]),
        "each test reuses the first's database\n{text}"
    );
}

// MySQL has no deferred constraints: every one is checked when its
// statement runs, so `check_constraints` has nothing to add (a no-op).
#[db_test(migrations = "tests/mysql/migrations", check_constraints = true)]
async fn check_constraints_is_a_no_op(db: TestDb) {
    let orphan = sqlx::query("INSERT INTO post (user_id, content) VALUES (42, 'x')")
        .execute(&db)
        .await;
    assert!(orphan.is_err(), "the foreign key is checked at once");
    assert_eq!(users(&db).await, 0);
}

#[db_test(migrations = "tests/mysql/migrations", isolation = "database")]
async fn child_fails_in_its_own_database(db: TestDb) {
    if !is_child() {
        return;
    }
    sqlx::query("INSERT INTO user (username) VALUES ('kept')")
        .execute(&db)
        .await
        .unwrap();
    panic!("deliberately failing");
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn a_failed_tests_database_is_kept_on_request(db: TestDb) {
    let mut cmd = common::children(&["child_fails_in_its_own_database"]);
    cmd.env("DB_TEST_MYSQL_CHILD", "1")
        .env("DB_TEST_KEEP_FAILED", "1");
    let (out, text) =
        tokio::task::spawn_blocking(move || common::run_until(cmd, Duration::from_secs(60)))
            .await
            .unwrap();
    assert!(!out.status.success(), "{text}");
    let name = text
        .split("(DB_TEST_KEEP_FAILED=1): ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no kept database named:\n{text}"))
        .to_string();
    // A later process's sweep leaves it alone.
    let cmd = common::children(&["rollback_between_tests_a"]);
    tokio::task::spawn_blocking(move || common::run_ok(cmd, "a later process"))
        .await
        .unwrap();
    let mut other = outsider(&db).await;
    let kept: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM `{name}`.user WHERE username = 'kept'"
    )))
    .fetch_one(&mut other)
    .await
    .unwrap();
    assert_eq!(kept, 1, "the failed test's rows are there to look at");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE `{name}`")))
        .execute(&mut other)
        .await
        .unwrap();
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_waits_for_a_lock(db: TestDb) {
    if !is_child() {
        return;
    }
    // Another session (another test, say) holds the row this test wants.
    let mut other = outsider(&db).await;
    sqlx::raw_sql("BEGIN; INSERT INTO user (username) VALUES ('locked')")
        .execute(&mut other)
        .await
        .unwrap();
    let err = sqlx::query("INSERT INTO user (username) VALUES ('locked')")
        .execute(&db)
        .await
        .unwrap_err();
    println!("LOCK ERROR {err}");
    sqlx::raw_sql("ROLLBACK").execute(&mut other).await.unwrap();
}

#[test]
fn a_lock_wait_ends_after_the_lock_timeout() {
    let mut cmd = common::children(&["child_waits_for_a_lock"]);
    cmd.env("DB_TEST_MYSQL_CHILD", "1")
        .env("DB_TEST_LOCK_TIMEOUT", "1s");
    // InnoDB's own default would wait 50s: a hang here is the failure.
    let (out, text) = common::run_until(cmd, Duration::from_secs(40));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("LOCK ERROR"), "{text}");
    assert!(text.contains("Lock wait timeout exceeded"), "{text}");
}

// A named lock (`GET_LOCK`) a test leaves held: the next test, right after
// it, gets it from another session, as after a `#[sqlx::test]`, whose pool
// is closed before the next test starts. Locks are server-wide, so the two
// run one after the other, each trying the lock from a session of its own.
async fn lock_is_free_then_leave_it_held(db: &TestDb, pool: Option<&MySqlPool>) {
    if !is_child() {
        // Run alongside the others, a held lock would fail a parallel one.
        return;
    }
    let mut other = outsider(db).await;
    let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK('dbtest_left_held', 0)")
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(
        got,
        Some(1),
        "an earlier test's session still holds the lock"
    );
    let _: Option<i64> = sqlx::query_scalar("SELECT RELEASE_LOCK('dbtest_left_held')")
        .fetch_one(&mut other)
        .await
        .unwrap();
    other.close().await.unwrap();
    let got: Option<i64> = match pool {
        Some(pool) => sqlx::query_scalar("SELECT GET_LOCK('dbtest_left_held', 0)")
            .fetch_one(pool)
            .await
            .unwrap(),
        None => sqlx::query_scalar("SELECT GET_LOCK('dbtest_left_held', 0)")
            .fetch_one(db)
            .await
            .unwrap(),
    };
    assert_eq!(got, Some(1));
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_lock_1_transaction(db: TestDb) {
    lock_is_free_then_leave_it_held(&db, None).await;
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_lock_2_transaction(db: TestDb) {
    lock_is_free_then_leave_it_held(&db, None).await;
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_lock_3_pool(pool: MySqlPool, ctx: TestContext) {
    let db = TestDb::from_context(&ctx).await.unwrap();
    lock_is_free_then_leave_it_held(&db, Some(&pool)).await;
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_lock_4_pool(pool: MySqlPool, ctx: TestContext) {
    let db = TestDb::from_context(&ctx).await.unwrap();
    lock_is_free_then_leave_it_held(&db, Some(&pool)).await;
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_lock_5_transaction(db: TestDb) {
    lock_is_free_then_leave_it_held(&db, None).await;
}

// In database mode the test's `Db` keeps its last statement's connection
// aside for the next one: the lock taken through it is released too.
#[db_test(migrations = "tests/mysql/migrations", isolation = "database")]
async fn child_lock_6_database_db(db: TestDb) {
    lock_is_free_then_leave_it_held(&db, None).await;
}

#[db_test(migrations = "tests/mysql/migrations", isolation = "database")]
async fn child_lock_7_database_db(db: TestDb) {
    lock_is_free_then_leave_it_held(&db, None).await;
}

#[test]
fn a_named_lock_left_held_is_free_for_the_next_test() {
    for _ in 0..5 {
        let cmd = common::children(&[
            "child_lock_1_transaction",
            "child_lock_2_transaction",
            "child_lock_3_pool",
            "child_lock_4_pool",
            "child_lock_5_transaction",
            "child_lock_6_database_db",
            "child_lock_7_database_db",
        ]);
        let out = common::run_ok(cmd, "named locks left held");
        assert!(out.contains("7 passed"), "{out}");
    }
}

// A transaction from `Acquire::begin` on `&Db` that a task keeps past the
// end of its test: the test fails saying so, and its session is ended, so
// the next test neither sees its row nor waits on its row lock.
static LEFT_OPEN: std::sync::Mutex<Option<sqlx::Transaction<'static, sqlx::MySql>>> =
    std::sync::Mutex::new(None);

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_lent_1_left_open(db: TestDb) {
    let app: &'static db_test::mysql::Db = Box::leak(Box::new(db.db()));
    let mut tx = sqlx::Acquire::begin(app).await.unwrap();
    sqlx::query("INSERT INTO user (username) VALUES ('lent-open')")
        .execute(&mut *tx)
        .await
        .unwrap();
    if is_child() {
        *LEFT_OPEN.lock().unwrap() = Some(tx);
    }
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_lent_2_next_test(db: TestDb) {
    if !is_child() {
        return;
    }
    // The same unique name: it would wait for the left-open row's lock.
    sqlx::query("INSERT INTO user (username) VALUES ('lent-open')")
        .execute(&db)
        .await
        .unwrap();
    let mut other = outsider(&db).await;
    assert_eq!(committed_users(&mut other, "lent-open").await, 0);
}

#[test]
fn an_acquire_begin_transaction_left_open_fails_its_test_and_ends_its_session() {
    let mut cmd = common::children(&["child_lent_1_left_open", "child_lent_2_next_test"]);
    cmd.env("DB_TEST_MYSQL_CHILD", "1");
    let (out, text) = common::run_until(cmd, Duration::from_secs(120));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("1 passed; 1 failed"), "{text}");
    assert!(
        text.contains("while a transaction from `Acquire::begin` on its `Db` was still open"),
        "{text}"
    );
    assert!(
        text.contains("test child_lent_2_next_test ... ok"),
        "{text}"
    );
}

/// A statement dropped mid-way inside a transaction from `Acquire::begin`:
/// the transaction is dropped too, and the test goes on without its rows.
#[db_test(migrations = "tests/mysql/migrations")]
async fn a_statement_dropped_inside_an_acquire_begin_transaction(db: TestDb) {
    let app = db.db();
    let mut tx = sqlx::Acquire::begin(&app).await.unwrap();
    sqlx::query("INSERT INTO user (username) VALUES ('dropped-in-tx')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let cut = tokio::time::timeout(
        Duration::from_millis(50),
        sqlx::query("SELECT SLEEP(1)").execute(&mut *tx),
    )
    .await;
    assert!(cut.is_err(), "the timeout cut the statement");
    drop(tx);
    assert_eq!(users(&db).await, 0);
    sqlx::query("INSERT INTO user (username) VALUES ('after-the-cut')")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(users(&db).await, 1);
}

// Deadlocks. Transaction-mode tests share the working database, so two of
// them (or a test and a session of its own) can deadlock; InnoDB then rolls
// back the victim's whole transaction, app savepoints and all. An app that
// swallows the error and retries, as apps do after a deadlock, would then
// write outside the test's transaction: committed, into the database every
// test of the run shares. db-test finds the transaction gone at the failure
// and fails the test before anything else runs.

/// A tag for the names a deadlock test writes, of this process alone: they
/// also run in a child process, alongside the same tests here.
fn tag(base: &str) -> String {
    format!("{base}p{}", std::process::id() % 10000)
}

/// Another session (another test, say) writes six rows and `{tag}_a`,
/// uncommitted: heavier than the test's transaction, so that InnoDB picks
/// the test's as the deadlock's victim.
async fn deadlock_partner(db: &TestDb, tag: &str) -> MySqlConnection {
    let mut other = outsider(db).await;
    let rows: Vec<String> = (1..=6)
        .map(|i| format!("('{tag}_o{i}')"))
        .chain([format!("('{tag}_a')")])
        .collect();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN; INSERT INTO user (username) VALUES {}",
        rows.join(", ")
    )))
    .execute(&mut other)
    .await
    .unwrap();
    other
}

/// The partner then waits for `{tag}_b`, which the test wrote: the test's
/// next write of `{tag}_a` closes the cycle.
async fn partner_waits_for_b(mut other: MySqlConnection, tag: &str) -> tokio::task::JoinHandle<()> {
    let name = format!("{tag}_b");
    let waiting = tokio::spawn(async move {
        let _ = insert_user(&mut other, &name).await;
        sqlx::raw_sql("ROLLBACK").execute(&mut other).await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    waiting
}

async fn insert_user<'e>(
    conn: impl sqlx::Executor<'e, Database = sqlx::MySql>,
    name: &str,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO user (username) VALUES (?)")
        .bind(name)
        .execute(conn)
        .await
        .map(|_| ())
}

fn assert_deadlock(err: &sqlx::Error) {
    let code = err
        .as_database_error()
        .and_then(|e| e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .map(|e| e.number());
    assert_eq!(code, Some(1213), "not a deadlock: {err}");
}

/// The app retries after a deadlock: the retry fails and nothing commits.
async fn retry_commits_nothing(db: &TestDb, name: &str) {
    let retry = async {
        let mut tx = sqlx::Acquire::begin(db).await?;
        insert_user(&mut *tx, name).await?;
        tx.commit().await
    }
    .await;
    assert!(
        retry.is_err(),
        "the retry ran outside the test's transaction"
    );
    let mut check = outsider(db).await;
    assert_eq!(
        committed_users(&mut check, name).await,
        0,
        "the retry committed"
    );
}

#[db_test(migrations = "tests/mysql/migrations")]
#[should_panic(expected = "ended the transaction of test")]
async fn a_deadlock_in_an_app_transaction_fails_the_test_and_a_retry_commits_nothing(db: TestDb) {
    let t = tag("dl1");
    let other = deadlock_partner(&db, &t).await;
    let mut tx = db.begin().await.unwrap();
    insert_user(&mut *tx, &format!("{t}_b")).await.unwrap();
    let waiting = partner_waits_for_b(other, &t).await;
    assert_deadlock(&insert_user(&mut *tx, &format!("{t}_a")).await.unwrap_err());
    waiting.await.unwrap();
    let _ = tx.rollback().await;
    // Through the test's own `Db`, as the app's next request would.
    let after = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO user (username) VALUES ('{t}_after')"
    )))
    .execute(&db)
    .await;
    assert!(after.is_err(), "a write ran outside the test's transaction");
    retry_commits_nothing(&db, &format!("{t}_retry")).await;
}

/// The same through `Acquire::begin` (generic app code taking `impl
/// Acquire`), whose statements db-test does not see: found when the
/// connection comes back.
#[db_test(migrations = "tests/mysql/migrations")]
#[should_panic(expected = "the database ended it (a deadlock does on MySQL")]
async fn a_deadlock_in_an_acquire_begin_transaction_fails_the_test_and_a_retry_commits_nothing(
    db: TestDb,
) {
    let t = tag("dl2");
    let other = deadlock_partner(&db, &t).await;
    let mut tx = sqlx::Acquire::begin(&db).await.unwrap();
    insert_user(&mut *tx, &format!("{t}_b")).await.unwrap();
    let waiting = partner_waits_for_b(other, &t).await;
    assert_deadlock(&insert_user(&mut *tx, &format!("{t}_a")).await.unwrap_err());
    waiting.await.unwrap();
    let _ = tx.rollback().await;
    retry_commits_nothing(&db, &format!("{t}_retry")).await;
}

/// A deadlock outside any app transaction (the app's autocommit write).
#[db_test(migrations = "tests/mysql/migrations")]
#[should_panic(expected = "ended the transaction of test")]
async fn a_deadlock_of_an_autocommit_write_fails_the_test_and_nothing_after_commits(db: TestDb) {
    let t = tag("dl3");
    let other = deadlock_partner(&db, &t).await;
    let mut conn = db.acquire().await.unwrap();
    insert_user(&mut *conn, &format!("{t}_b")).await.unwrap();
    let waiting = partner_waits_for_b(other, &t).await;
    assert_deadlock(
        &insert_user(&mut *conn, &format!("{t}_a"))
            .await
            .unwrap_err(),
    );
    waiting.await.unwrap();
    drop(conn);
    retry_commits_nothing(&db, &format!("{t}_retry")).await;
}

/// Releasing db-test's own savepoint on a bare connection does not end the
/// test's transaction: nothing is committed, and the test is not failed for
/// a commit that did not happen.
#[db_test(migrations = "tests/mysql/migrations")]
async fn releasing_db_tests_savepoint_on_a_bare_connection_ends_nothing(db: TestDb) {
    let mut conn = db.acquire().await.unwrap();
    let bare: &mut MySqlConnection = &mut conn;
    insert_user(&mut *bare, "released").await.unwrap();
    sqlx::raw_sql("RELEASE SAVEPOINT db_test_auto")
        .execute(&mut *bare)
        .await
        .unwrap();
    drop(conn);
    let mut check = outsider(&db).await;
    assert_eq!(committed_users(&mut check, "released").await, 0);
    assert_eq!(users(&db).await, 1);
}

/// The app gave up on its transaction while a write of it waited for a
/// lock (a timeout around the whole transaction), and the deadlock closed
/// after that: the next statement says it was a deadlock (not "the
/// connection broke", from the `ROLLBACK TO` sqlx queued behind it).
#[db_test(migrations = "tests/mysql/migrations")]
#[should_panic(expected = "Deadlock found")]
async fn an_app_transaction_dropped_while_it_waits_then_deadlocked_is_reported_as_a_deadlock(
    db: TestDb,
) {
    let t = tag("dl4");
    let other = deadlock_partner(&db, &t).await;
    let gave_up = tokio::time::timeout(Duration::from_millis(300), async {
        let mut tx = db.begin().await?;
        insert_user(&mut *tx, &format!("{t}_b")).await?;
        // Waits for the partner's row.
        insert_user(&mut *tx, &format!("{t}_a")).await?;
        tx.commit().await
    })
    .await;
    assert!(gave_up.is_err(), "{gave_up:?}");
    partner_waits_for_b(other, &t).await.await.unwrap();
    let err = insert_user(&db, &format!("{t}_after")).await.unwrap_err();
    assert!(err.to_string().contains("Deadlock found"), "{err}");
    retry_commits_nothing(&db, &format!("{t}_retry")).await;
}

/// A deadlock inside `db.begin()` (a guard, out of db-test's sight at the
/// end) is reported as what it was, not as a commit on a bare connection.
#[test]
fn a_deadlock_is_reported_as_a_deadlock_not_as_a_commit() {
    let cmd = common::children(&[
        "a_deadlock_in_an_app_transaction_fails_the_test_and_a_retry_commits_nothing",
        "an_app_transaction_dropped_while_it_waits_then_deadlocked_is_reported_as_a_deadlock",
    ]);
    let (out, text) = common::run_until(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("2 passed"), "{text}");
    assert!(!text.contains("COMMITTED"), "{text}");
    assert!(!text.contains("broke"), "{text}");
}

/// The same on MySQL: the probe after a failure sets and releases a
/// savepoint of its own, and the test's stay.
#[db_test(migrations = "tests/mysql/migrations")]
async fn a_failure_leaves_the_tests_own_savepoints_alone(db: TestDb) {
    sqlx::query("SAVEPOINT mine").execute(&db).await.unwrap();
    insert_user(&db, "sp_a").await.unwrap();
    assert!(insert_user(&db, "sp_a").await.is_err());
    sqlx::query("ROLLBACK TO SAVEPOINT mine")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(users(&db).await, 0);
}

#[db_test(migrations = "tests/mysql/migrations")]
#[should_panic(expected = "refusing to run")]
async fn a_commit_after_a_quoted_user_variable_name_is_refused(db: TestDb) {
    insert_user(&db, "quoted_var").await.unwrap();
    let _ = sqlx::raw_sql(r"SET @'a\'b' = 1; COMMIT; SELECT 'c'")
        .execute(&db)
        .await;
    let mut check = outsider(&db).await;
    assert_eq!(committed_users(&mut check, "quoted_var").await, 0);
}

/// MariaDB skips a versioned comment whose version is above its own (and
/// MySQL any `/*M!`), so the quote or comment mark inside it starts nothing
/// there, and the COMMIT after it runs: refused, and nothing committed.
async fn commit_after_skipped_comment_is_refused(db: &TestDb, user: &str, sql: &str) {
    let err = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(db)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("refusing to run") && err.contains("COMMIT"),
        "{err}"
    );
    let mut check = outsider(db).await;
    assert_eq!(committed_users(&mut check, user).await, 0, "{sql}");
}

#[db_test(migrations = "tests/mysql/migrations")]
#[should_panic(expected = "refusing to run")]
async fn a_commit_after_a_versioned_comment_the_server_skips_is_refused(db: TestDb) {
    commit_after_skipped_comment_is_refused(
        &db,
        "skipped_1",
        "INSERT INTO user (username) VALUES ('skipped_1'); /*!99999 ' */ COMMIT; /*!99999 ' */ SELECT 1",
    )
    .await;
}

#[db_test(migrations = "tests/mysql/migrations")]
#[should_panic(expected = "refusing to run")]
async fn a_commit_after_a_mariadb_comment_with_a_line_comment_in_it_is_refused(db: TestDb) {
    commit_after_skipped_comment_is_refused(
        &db,
        "skipped_2",
        "INSERT INTO user (username) VALUES ('skipped_2'); /*M!999999 -- */ COMMIT;\nSELECT 1",
    )
    .await;
}

/// PostgreSQL's connect options, asked of the context of a MySQL test: the
/// panic says where this test's own are.
#[db_test(migrations = "tests/mysql/migrations")]
#[should_panic(expected = "`db: db_test::mysql::TestDb` and use `db.connect_options()`")]
async fn the_contexts_postgres_options_in_a_mysql_test_point_to_its_own(
    db: TestDb,
    ctx: db_test::TestContext,
) {
    let _ = db.connect_options();
    let _ = ctx.connect_options();
}

/// The project's own name for its pool: the backend comes from the type
/// behind the alias, as `#[sqlx::test]` (which sees only the name) cannot.
type AppPool = MySqlPool;

#[db_test(migrations = "tests/mysql/migrations")]
async fn an_alias_of_mysql_pool_gets_a_database_of_its_own(pool: AppPool) {
    let name: String = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(name.contains("_d"), "a per-test database, not {name}");
    // DDL and real commits: the database is the test's alone.
    sqlx::query("CREATE TABLE alias_t (a INT)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO user (username) VALUES ('alias')")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(users(&pool).await, 1);
}

/// A table whose engine ignores transactions (MyISAM, MEMORY): a write to
/// it would outlive the test's rollback, so transaction mode refuses it,
/// saying where such a test belongs.
#[db_test(migrations = "tests/mysql/engines")]
// The refusal fails the test at its end, even though the test handled the error.
#[should_panic(expected = "cannot roll back")]
async fn writes_to_a_table_that_cannot_roll_back_are_refused(db: TestDb) {
    let e = sqlx::query("INSERT INTO hits (page, n) VALUES ('home', 1)")
        .execute(&db)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("isolation = \"database\""), "{e}");
    let mut other = outsider(&db).await;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM hits")
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(n, 0, "the write reached the server");
}

/// Writes that reach such a table without naming it as their target: a
/// view of it (or of such a view), a parenthesised target, a procedure or a
/// function that writes it. Each is refused in the same way.
macro_rules! refused_non_transactional {
    ($($name:ident: $sql:literal;)*) => {$(
        #[db_test(migrations = "tests/mysql/engines")]
        #[should_panic(expected = "cannot roll back")]
        async fn $name(db: TestDb) {
            let e = sqlx::raw_sql($sql).execute(&db).await.unwrap_err();
            assert!(e.to_string().contains("isolation = \"database\""), "{e}");
            let mut other = outsider(&db).await;
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM hits")
                .fetch_one(&mut other)
                .await
                .unwrap();
            assert_eq!(n, 0, "the write reached the server");
        }
    )*};
}

refused_non_transactional! {
    a_write_through_a_view_is_refused: "INSERT INTO hit_view (page, n) VALUES ('v', 1)";
    a_write_through_a_view_of_a_view_is_refused: "UPDATE hit_pages SET page = 'x'";
    a_parenthesised_target_is_refused: "UPDATE (hits) SET n = 2";
    a_procedure_that_writes_it_is_refused: "CALL record_hit('p')";
    a_function_that_writes_it_is_refused: "SELECT count_hit()";
    a_function_that_writes_it_in_a_condition_is_refused:
        "INSERT INTO pages (name) SELECT 'x' FROM DUAL WHERE count_hit() = 1";
}

#[db_test(migrations = "tests/mysql/engines")]
async fn reading_it_through_a_view_and_an_innodb_function_is_not_refused(db: TestDb) {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM hit_pages")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 0);
    sqlx::query("INSERT INTO pages (name) VALUES ('home')")
        .execute(&db)
        .await
        .unwrap();
    let pages: i64 = sqlx::query_scalar("SELECT page_count()")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(pages, 1);
}

#[db_test(migrations = "tests/mysql/engines", isolation = "database")]
async fn database_mode_writes_it_through_a_view_and_routines(pool: MySqlPool) {
    sqlx::raw_sql(
        "INSERT INTO hit_view (page, n) VALUES ('v', 1); CALL record_hit('p'); \
         SELECT count_hit()",
    )
    .execute(&pool)
    .await
    .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM hits")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 3);
}

#[db_test(migrations = "tests/mysql/engines")]
async fn the_transactional_tables_beside_it_are_written_as_usual(db: TestDb) {
    sqlx::query("INSERT INTO pages (name) VALUES ('home')")
        .execute(&db)
        .await
        .unwrap();
}

#[db_test(migrations = "tests/mysql/engines", isolation = "database")]
async fn database_mode_writes_it(pool: MySqlPool) {
    sqlx::query("INSERT INTO hits (page, n) VALUES ('home', 1)")
        .execute(&pool)
        .await
        .unwrap();
}

// A parameter type of the app's own whose `FromTestContext` names no
// database: the test runs on PostgreSQL, and when the setup fails there
// (here: MySQL migrations), the message says why and how to name one.
struct AppUser;

impl FromTestContext for AppUser {
    async fn from_context(_ctx: &TestContext) -> Result<Self, db_test::BoxError> {
        Ok(AppUser)
    }
}

#[db_test(migrations = "tests/mysql/migrations")]
#[should_panic(expected = "none of its parameters names a database")]
async fn a_type_naming_no_database_runs_on_postgresql_and_a_failure_says_so(_user: AppUser) {}
