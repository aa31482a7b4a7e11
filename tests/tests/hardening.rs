//! The cases users hit that break the promises (every test starts clean,
//! nothing is committed, nothing hangs): dropped statements, leftover
//! tasks, timeouts inside long statements, smuggled COMMITs, and session
//! state that survives ROLLBACK.
//!
//! Several cases need to look at what happens after a test ends: the parent
//! tests run `child_*` tests of this binary in a child process. Run on
//! their own (without the `DB_TEST_HARDENING` variable) the `child_*` tests
//! are ordinary tests that pass.

use std::process::{Command, Output};
use std::time::Duration;

mod common;
use common::{children, run_until};

use db_test::{TestContext, TestDb, db_test};
use sqlx::{Connection, Executor, PgConnection};

fn misbehave() -> bool {
    std::env::var("DB_TEST_HARDENING").is_ok()
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(db)
        .await
        .unwrap()
}

/// A connection of the test's own to its database, outside its transaction:
/// it sees only what is committed.
async fn outside(ctx: &TestContext) -> PgConnection {
    PgConnection::connect_with(&ctx.connect_options())
        .await
        .unwrap()
}

// ---- 1. a statement future dropped mid-flight ----------------------------

const LATE_FAILURE: &str = "DO $$ BEGIN \
    INSERT INTO users (email) VALUES ('dropped@example.com'); \
    PERFORM pg_sleep(0.1); \
    RAISE EXCEPTION 'late failure of the dropped statement'; END $$";

#[db_test]
async fn a_dropped_statement_does_not_break_the_next_one(db: TestDb) {
    sqlx::query("INSERT INTO users (email) VALUES ('kept@example.com')")
        .execute(&db)
        .await
        .unwrap();
    let dropped = tokio::time::timeout(
        Duration::from_millis(50),
        sqlx::query(LATE_FAILURE).execute(&db),
    )
    .await;
    assert!(dropped.is_err(), "the statement should still be running");
    // The next, unrelated statement gets its own result, not the old error.
    let seven: i32 = sqlx::query_scalar("SELECT 7").fetch_one(&db).await.unwrap();
    assert_eq!(seven, 7);
    // The dropped statement failed: what it did is undone; what completed stays.
    let emails: Vec<String> = sqlx::query_scalar("SELECT email FROM users ORDER BY email")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(emails, ["kept@example.com"]);
}

/// One that completes soon after its caller dropped it keeps its effects,
/// as it would in production.
#[db_test]
async fn a_dropped_statement_that_succeeds_keeps_its_effects(ctx: TestContext) {
    let db = ctx.db();
    let mut other = outside(&ctx).await;
    // An address of this process's own: another test process (nextest, a
    // shard) running a statement with a common one must not be mistaken for
    // this one, which would then be dropped before it ran.
    let email = format!("dropped-but-done-{}@example.com", std::process::id());
    let statement = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH s AS (SELECT pg_sleep(0.1)) \
         INSERT INTO users (email) SELECT '{email}' FROM s"
    )))
    .execute(&db);
    // Dropped once the server is seen running it.
    let running = async {
        loop {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE state = 'active' AND query LIKE '%' || $1 || '%' \
                 AND pid <> pg_backend_pid()",
            )
            .bind(&email)
            .fetch_one(&mut other)
            .await
            .unwrap();
            if n > 0 {
                break;
            }
        }
    };
    tokio::select! {
        done = statement => panic!("the statement finished before it could be dropped: {done:?}"),
        () = running => {}
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

/// A long statement whose caller gives up is cancelled on the server, so
/// the next statement does not wait for it (here: an hour).
#[db_test(timeout = "30s")]
async fn a_dropped_long_statement_is_cancelled_on_the_server(db: TestDb) {
    let dropped = tokio::time::timeout(
        Duration::from_millis(50),
        sqlx::query("SELECT pg_sleep(3600)").execute(&db),
    )
    .await;
    assert!(dropped.is_err());
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&db).await.unwrap();
    assert_eq!(one, 1);
}

#[db_test]
async fn a_statement_dropped_on_a_raw_guard_is_recovered(db: TestDb) {
    {
        let mut conn = db.acquire().await.unwrap();
        let dropped =
            tokio::time::timeout(Duration::from_millis(50), conn.execute(LATE_FAILURE)).await;
        assert!(dropped.is_err());
    }
    let seven: i32 = sqlx::query_scalar("SELECT 7").fetch_one(&db).await.unwrap();
    assert_eq!(seven, 7);
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 0);
}

#[db_test]
async fn a_statement_dropped_inside_an_app_transaction_is_recovered(db: TestDb) {
    {
        let mut tx = db.begin().await.unwrap();
        let dropped =
            tokio::time::timeout(Duration::from_millis(50), tx.execute(LATE_FAILURE)).await;
        assert!(dropped.is_err());
    }
    let seven: i32 = sqlx::query_scalar("SELECT 7").fetch_one(&db).await.unwrap();
    assert_eq!(seven, 7);
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 0);
}

/// Fails on purpose (under DB_TEST_HARDENING) after a dropped statement:
/// the report must list it.
#[db_test]
async fn child_fails_after_a_dropped_statement(db: TestDb) {
    let _ = tokio::time::timeout(
        Duration::from_millis(50),
        sqlx::query(LATE_FAILURE).execute(&db),
    )
    .await;
    let _: i32 = sqlx::query_scalar("SELECT 7").fetch_one(&db).await.unwrap();
    assert!(!misbehave(), "failing on purpose");
}

// ---- 2, 3. leftover tasks and timeouts -----------------------------------

/// Leaves a task holding a pool connection of its own database forever.
#[db_test(isolation = "database")]
async fn child_leaves_a_task_holding_a_connection(pool: sqlx::PgPool) {
    let conn = pool.acquire().await.unwrap();
    if misbehave() {
        // On the shared multi-thread runtime: it outlives the test.
        tokio::spawn(async move {
            let _conn = conn;
            std::future::pending::<()>().await;
        });
    }
}

/// Leaves a task holding the test's `Db` connection (a guard) forever.
#[db_test]
async fn child_leaves_a_task_holding_the_test_connection(db: TestDb) {
    let app = db.db();
    let (held, mut is_held) = tokio::sync::watch::channel(false);
    if misbehave() {
        tokio::spawn(async move {
            let _conn = app.acquire().await.unwrap();
            held.send(true).unwrap();
            std::future::pending::<()>().await;
        });
        is_held.wait_for(|h| *h).await.unwrap();
    }
}

/// Times out inside an hour-long statement (under DB_TEST_HARDENING).
#[db_test(timeout = "1s")]
async fn child_times_out_in_a_long_statement(db: TestDb) {
    let secs = if misbehave() { 3600.0 } else { 0.01 };
    sqlx::query("SELECT pg_sleep($1), 'dbt-hardening-transaction'")
        .bind(secs)
        .execute(&db)
        .await
        .unwrap();
}

/// The same in a database of its own.
#[db_test(timeout = "1s", isolation = "database")]
async fn child_times_out_in_a_long_statement_in_its_database(pool: sqlx::PgPool) {
    let secs = if misbehave() { 3600.0 } else { 0.01 };
    sqlx::query("SELECT pg_sleep($1), 'dbt-hardening-database'")
        .bind(secs)
        .execute(&pool)
        .await
        .unwrap();
}

fn child(tests: &[&str]) -> Command {
    let mut cmd = children(tests);
    cmd.env("DB_TEST_HARDENING", "1");
    cmd
}

/// Runs a child to its end (after a minute it counts as hung).
fn run(cmd: Command) -> (Output, String) {
    run_until(cmd, Duration::from_secs(60))
}

/// Backends of the server still running `marker`'s statement.
async fn still_running(ctx: &TestContext, marker: &str) -> i64 {
    let mut conn = outside(ctx).await;
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE state <> 'idle' \
         AND query LIKE '%' || $1 || '%' AND query NOT LIKE '%pg_stat_activity%'",
    )
    .bind(marker)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

#[db_test]
async fn the_report_of_a_failed_test_lists_its_dropped_statement() {
    let (out, text) =
        tokio::task::spawn_blocking(|| run(child(&["child_fails_after_a_dropped_statement"])))
            .await
            .unwrap();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("failing on purpose"), "{text}");
    assert!(
        text.contains("late failure of the dropped statement"),
        "{text}"
    );
    assert!(text.contains("its caller dropped it"), "{text}");
}

#[db_test]
async fn a_task_holding_a_connection_does_not_hang_database_mode_teardown() {
    let (out, text) =
        tokio::task::spawn_blocking(|| run(child(&["child_leaves_a_task_holding_a_connection"])))
            .await
            .unwrap();
    assert!(out.status.success(), "{text}");
}

#[db_test]
async fn a_task_holding_the_test_connection_is_cut_off_and_reported() {
    let (out, text) = tokio::task::spawn_blocking(|| {
        run(child(&["child_leaves_a_task_holding_the_test_connection"]))
    })
    .await
    .unwrap();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("still held its connection"), "{text}");
}

#[db_test]
async fn a_timed_out_test_leaves_no_statement_running(ctx: TestContext) {
    for (test, marker) in [
        (
            "child_times_out_in_a_long_statement",
            "dbt-hardening-transaction",
        ),
        (
            "child_times_out_in_a_long_statement_in_its_database",
            "dbt-hardening-database",
        ),
    ] {
        let (out, text) = tokio::task::spawn_blocking(move || run(child(&[test])))
            .await
            .unwrap();
        assert!(!out.status.success(), "{text}");
        assert!(text.contains("timed out after 1s"), "{text}");
        // The child has exited; a backend running its statement would still show.
        let mut left = still_running(&ctx, marker).await;
        for _ in 0..50 {
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            left = still_running(&ctx, marker).await;
        }
        assert_eq!(left, 0, "{test} left its statement running");
    }
}

// ---- 4. smuggled COMMITs --------------------------------------------------

#[db_test]
#[should_panic(expected = "refusing to run `COMMIT`")]
async fn a_commit_in_a_multi_statement_string_commits_nothing(ctx: TestContext) {
    let db = ctx.db();
    let err = sqlx::raw_sql(
        "INSERT INTO users (email) VALUES ('smuggled@example.com'); COMMIT; \
         INSERT INTO users (email) VALUES ('after@example.com')",
    )
    .execute(&db)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("COMMIT"), "{err}");
    let mut other = outside(&ctx).await;
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM users WHERE email IN ('smuggled@example.com', 'after@example.com')",
    )
    .fetch_one(&mut other)
    .await
    .unwrap();
    assert_eq!(n, 0, "rows of the test were committed");
}

#[db_test]
#[should_panic(expected = "was ended by a raw COMMIT or ROLLBACK")]
async fn a_commit_on_a_raw_guard_commits_nothing_and_later_writes_fail(ctx: TestContext) {
    let db = ctx.db();
    let mut guard = db.acquire().await.unwrap();
    // Straight on the PgConnection, past db-test's own checks: the server
    // refuses the COMMIT (db-test's guard), and rolls back.
    let conn: &mut PgConnection = &mut guard;
    conn.execute("INSERT INTO users (email) VALUES ('raw@example.com')")
        .await
        .unwrap();
    assert!(conn.execute("COMMIT").await.is_err());
    // Outside any transaction now, the session refuses to write.
    let write = conn
        .execute("INSERT INTO users (email) VALUES ('autocommit@example.com')")
        .await;
    assert!(
        write.is_err(),
        "a write outside the test's transaction went through"
    );
    drop(guard);
    let mut other = outside(&ctx).await;
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM users WHERE email IN ('raw@example.com', 'autocommit@example.com')",
    )
    .fetch_one(&mut other)
    .await
    .unwrap();
    assert_eq!(n, 0, "rows of the test were committed");
}

#[db_test]
async fn an_app_transaction_still_commits_as_a_savepoint(db: TestDb) {
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('tx@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 1);
}

// ---- 5. session state that survives ROLLBACK -----------------------------
//
// The `child_session_*` tests run in order on one connection (one thread):
// `_1` leaves state behind, `_2` must not see it. Each passes on its own.

/// Set by `child_session_1` for `_2`, which runs after it in the same
/// process.
static SESSION_1_RAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[db_test]
async fn child_session_1_leaves_state_behind(db: TestDb) {
    // DDL, rolled back at the end, and a statement that sqlx caches with
    // the columns the DDL gave the table.
    let mut conn = db.acquire().await.unwrap();
    conn.execute("ALTER TABLE ddl_scratch ADD COLUMN extra int")
        .await
        .unwrap();
    sqlx::query("SELECT * FROM ddl_scratch")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    sqlx::query("SELECT pg_advisory_lock(4242424242)")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("PREPARE dbt_leak AS SELECT 1")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('seq@example.com')")
        .execute(&db)
        .await
        .unwrap();
    // `setval` is not undone by ROLLBACK: a sequence moved back would hand
    // the next tests ids that rows they cannot see may hold.
    sqlx::query("SELECT nextval(pg_get_serial_sequence('posts', 'id')) FROM generate_series(1, 5)")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("SELECT setval(pg_get_serial_sequence('posts', 'id'), 1)")
        .execute(&db)
        .await
        .unwrap();
    SESSION_1_RAN.store(true, std::sync::atomic::Ordering::Relaxed);
}

#[db_test]
async fn child_session_2_starts_fresh(ctx: TestContext) {
    let db = ctx.db();
    let mut conn = db.acquire().await.unwrap();
    // The statement sqlx cached in `_1` after the DDL must not be used.
    let rows = sqlx::query("SELECT * FROM ddl_scratch")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert!(rows.is_empty());
    drop(conn);
    sqlx::query("PREPARE dbt_leak AS SELECT 2")
        .execute(&db)
        .await
        .unwrap();
    let mut other = outside(&ctx).await;
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(4242424242)")
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert!(free, "the advisory lock of the last test is still held");
    // Sequence state of the last test's session: gone, as on a new connection.
    let lastval = sqlx::query_scalar::<_, i64>("SELECT lastval()")
        .fetch_one(&db)
        .await;
    assert!(lastval.is_err(), "lastval() answered {lastval:?}");
    // Forward again, past the five values `_1` took (when it ran before, in
    // this process: on its own this test knows nothing of the sequence).
    if SESSION_1_RAN.load(std::sync::atomic::Ordering::Relaxed) {
        let (last, called): (i64, bool) =
            sqlx::query_as("SELECT last_value, is_called FROM posts_id_seq")
                .fetch_one(&mut other)
                .await
                .unwrap();
        let next = if called { last + 1 } else { last };
        assert!(
            next > 5,
            "the last test's setval moved the sequence back: next value {next}"
        );
    }
}

#[test]
fn session_state_does_not_leak_into_the_next_test() {
    let (out, text) = run(child(&[
        "child_session_1_leaves_state_behind",
        "child_session_2_starts_fresh",
    ]));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("2 passed"), "{text}");
}

// The `child_shadow_*` pair: DDL that no DDL keyword announces.

#[db_test]
async fn child_shadow_1_select_into(db: TestDb) {
    // DDL without a DDL keyword: a temporary table that shadows `users`,
    // read through a statement sqlx caches.
    sqlx::query("SELECT 1::int AS only_col INTO TEMP users")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("SELECT * FROM users")
        .fetch_all(&db)
        .await
        .unwrap();
}

#[db_test]
async fn child_shadow_2_starts_fresh(ctx: TestContext) {
    let db = ctx.db();
    // In an app transaction, where db-test does not retry a stale statement.
    let mut tx = db.begin().await.unwrap();
    sqlx::query("SELECT * FROM users")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    drop(tx);
}

#[test]
fn a_shadowing_temp_table_does_not_reach_the_next_test() {
    let (out, text) = run(child(&[
        "child_shadow_1_select_into",
        "child_shadow_2_starts_fresh",
    ]));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("2 passed"), "{text}");
}

/// Row-level security tests switch roles before their first app
/// transaction: db-test's commit guard works for any role.
#[db_test]
async fn set_role_before_the_first_app_transaction(db: TestDb) {
    sqlx::raw_sql(
        "CREATE ROLE dbt_hardening_reader; \
         GRANT SELECT, INSERT ON users TO dbt_hardening_reader; \
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO dbt_hardening_reader; \
         SET ROLE dbt_hardening_reader",
    )
    .execute(&db)
    .await
    .unwrap();
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('role@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let who: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(who, "dbt_hardening_reader");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM users WHERE email = 'role@example.com'"
        )
        .await,
        1
    );
}

/// An isolation level cannot be set inside the test's transaction: the
/// error says where such a test belongs.
#[db_test]
async fn set_transaction_isolation_says_to_use_database_mode(db: TestDb) {
    let mut tx = db.begin().await.unwrap();
    let e = sqlx::query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("isolation = \"database\""), "{e}");
}

/// A statement sqlx cached before the test becomes stale after DDL in the
/// test: it is run again, fresh, instead of failing with `0A000`.
#[db_test]
async fn ddl_then_select_star_sees_the_new_columns(db: TestDb) {
    sqlx::query("SELECT * FROM ddl_scratch")
        .fetch_all(&db)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE ddl_scratch ADD COLUMN nickname text")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO ddl_scratch (nickname) VALUES ('n')")
        .execute(&db)
        .await
        .unwrap();
    let row = sqlx::query("SELECT * FROM ddl_scratch")
        .fetch_one(&db)
        .await
        .unwrap();
    use sqlx::Row;
    assert_eq!(row.try_get::<String, _>("nickname").unwrap(), "n");
}

// ---- 10. every statement on the test's connection is counted -------------

#[db_test]
async fn statements_in_app_transactions_and_on_guards_are_counted(db: TestDb) {
    let app = db.db();
    db.assert_queries(4, async {
        let mut tx = app.begin().await.unwrap(); // transaction control: not counted
        sqlx::query("INSERT INTO users (email) VALUES ('c@example.com')")
            .execute(&mut *tx)
            .await
            .unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, 1);
        tx.commit().await.unwrap();
        let mut conn = app.acquire().await.unwrap();
        conn.execute("SELECT 'on a guard'").await.unwrap();
        drop(conn);
        sqlx::query("SELECT 'through Db'")
            .execute(&app)
            .await
            .unwrap();
    })
    .await;
}

#[db_test]
#[should_panic(expected = "SELECT 'counted on a guard'")]
async fn a_count_mismatch_lists_statements_sent_on_guards(db: TestDb) {
    let app = db.db();
    db.assert_queries(0, async {
        let mut conn = app.acquire().await.unwrap();
        conn.execute("SELECT 'counted on a guard'").await.unwrap();
    })
    .await;
}

// ---- db-test's own errors are typed --------------------------------------

#[db_test]
async fn a_checkout_timeout_is_a_typed_db_test_error(db: TestDb) {
    db.set_checkout_timeout(Duration::from_millis(200));
    let guard = db.acquire().await.unwrap();
    let err = sqlx::query("SELECT 1").execute(&db).await.unwrap_err();
    let ours = db_test::Error::of(&err).expect("a db-test error");
    assert_eq!(ours.kind(), db_test::ErrorKind::CheckoutTimeout);
    assert!(err.to_string().contains("waited 200ms"), "{err}");
    drop(guard);
}

#[db_test]
#[should_panic(expected = "refusing to run `ROLLBACK`")]
async fn a_refused_statement_is_a_typed_db_test_error(db: TestDb) {
    let err = sqlx::query("ROLLBACK").execute(&db).await.unwrap_err();
    let ours = db_test::Error::of(&err).expect("a db-test error");
    assert_eq!(ours.kind(), db_test::ErrorKind::TransactionEnded);
}

#[db_test]
async fn an_explained_lock_timeout_keeps_the_driver_error(ctx: TestContext) {
    let db = ctx.db();
    // Another session holds a lock on the table; ours times out on it.
    // (`ddl_scratch`, not a table the other tests use: its LOCK waits for
    // every open transaction that touched the table, and in a sharded run
    // a test of the other shard holds one on `posts` for seconds.)
    let mut other = outside(&ctx).await;
    other
        .execute("BEGIN; LOCK TABLE ddl_scratch IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    sqlx::query("SET LOCAL lock_timeout = '100ms'")
        .execute(&db)
        .await
        .unwrap();
    let err = sqlx::query("SELECT count(*) FROM ddl_scratch")
        .fetch_one(&db)
        .await
        .unwrap_err();
    other.execute("ROLLBACK").await.unwrap();
    let db_err = err.as_database_error().expect("a database error");
    assert_eq!(db_err.code().as_deref(), Some("55P03"));
    assert!(db_err.message().contains("lock_timeout"), "{err}");
    let pg = db_err.downcast_ref::<sqlx::postgres::PgDatabaseError>();
    assert_eq!(pg.code(), "55P03");
}

/// `ROLLBACK AND CHAIN` would start a new transaction without db-test's
/// guard: refused wherever it sits in the string, through `Db` or a guard.
#[db_test]
#[should_panic(expected = "refusing to run `ROLLBACK AND CHAIN`")]
async fn a_chained_rollback_on_a_guard_is_refused(ctx: TestContext) {
    let db = ctx.db();
    let mut conn = db.acquire().await.unwrap();
    let err = conn
        .execute(
            "ROLLBACK AND CHAIN; INSERT INTO users (email) VALUES ('chained@example.com'); COMMIT",
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refusing"), "{err}");
    drop(conn);
    let mut other = outside(&ctx).await;
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE email = 'chained@example.com'")
            .fetch_one(&mut other)
            .await
            .unwrap();
    assert_eq!(n, 0);
}

/// A failed statement on a guard is undone alone, as in production's
/// autocommit: the guard's other statements stand, and the next works.
#[db_test]
async fn a_guard_keeps_autocommit_semantics_after_a_failure(db: TestDb) {
    let mut conn = db.acquire().await.unwrap();
    conn.execute("INSERT INTO users (email) VALUES ('first@example.com')")
        .await
        .unwrap();
    let dup = conn
        .execute("INSERT INTO users (email) VALUES ('first@example.com')")
        .await;
    assert!(dup.is_err());
    conn.execute("INSERT INTO users (email) VALUES ('second@example.com')")
        .await
        .unwrap();
    drop(conn);
    let emails: Vec<String> = sqlx::query_scalar("SELECT email FROM users ORDER BY email")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(emails, ["first@example.com", "second@example.com"]);
}

/// A long statement dropped inside an app transaction is cancelled, so the
/// next statement does not wait for it.
#[db_test(timeout = "30s")]
async fn a_long_statement_dropped_in_an_app_transaction_is_cancelled(db: TestDb) {
    {
        let mut tx = db.begin().await.unwrap();
        let dropped = tokio::time::timeout(
            Duration::from_millis(50),
            sqlx::query("SELECT pg_sleep(3600)").execute(&mut *tx),
        )
        .await;
        assert!(dropped.is_err());
    }
    // Without the cancel this would wait out the hour (and the test's timeout).
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&db).await.unwrap();
    assert_eq!(one, 1);
}

// A transaction from `Acquire::begin` on `&Db` misused: left open past the
// end of the test by a task, or ended by a raw COMMIT sent through it. The
// test fails saying so, nothing is committed, and the next test (`_3`, on
// the same process's connections) runs as usual.

static LEFT_OPEN: std::sync::Mutex<Option<sqlx::Transaction<'static, sqlx::Postgres>>> =
    std::sync::Mutex::new(None);

#[db_test]
async fn child_lent_1_left_open(db: TestDb) {
    let app: &'static db_test::Db = Box::leak(Box::new(db.db()));
    let mut tx = sqlx::Acquire::begin(app).await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('left-open@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    if misbehave() {
        *LEFT_OPEN.lock().unwrap() = Some(tx);
    }
}

#[db_test]
async fn child_lent_2_raw_commit(db: TestDb) {
    let app = db.db();
    let mut tx = sqlx::Acquire::begin(&app).await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('raw-commit@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    if misbehave() {
        let _ = (&mut *tx).execute("COMMIT").await;
    }
}

#[db_test]
async fn child_lent_3_next_test(db: TestDb, ctx: TestContext) {
    let app = db.db();
    let mut tx = sqlx::Acquire::begin(&app).await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('next@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1, "only this test's row");
    let mut other = outside(&ctx).await;
    let committed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM users WHERE email IN \
         ('left-open@example.com', 'raw-commit@example.com', 'next@example.com')",
    )
    .fetch_one(&mut other)
    .await
    .unwrap();
    assert_eq!(committed, 0, "nothing was committed");
}

#[test]
fn a_misused_acquire_begin_transaction_fails_its_test_and_commits_nothing() {
    let (out, text) = run(child(&[
        "child_lent_1_left_open",
        "child_lent_2_raw_commit",
        "child_lent_3_next_test",
    ]));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("1 passed; 2 failed"), "{text}");
    assert!(
        text.contains("while a transaction from `Acquire::begin` on its `Db` was still open"),
        "{text}"
    );
    // The raw COMMIT is caught by db-test's guard (the connection comes
    // back, the error of sqlx's queued `ROLLBACK TO` read on its release)
    // or, were the connection lost, when it does not come back.
    assert!(
        text.contains("was ended by a raw COMMIT or ROLLBACK sent by the test or the app")
            || text.contains("a COMMIT or ROLLBACK sent through it ended that transaction"),
        "{text}"
    );
    assert!(
        text.contains("test child_lent_3_next_test ... ok"),
        "{text}"
    );
}

/// Releasing db-test's own savepoint through the test's handle is refused
/// with a message naming it (it used to fail the test later, blaming a
/// COMMIT); savepoints of the test's own are fine.
#[db_test]
#[should_panic(expected = "names a savepoint that db-test or sqlx manages")]
async fn releasing_db_tests_savepoint_is_refused_by_name(db: TestDb) {
    sqlx::raw_sql("SAVEPOINT mine; RELEASE SAVEPOINT mine")
        .execute(&db)
        .await
        .unwrap();
    let err = sqlx::query("RELEASE SAVEPOINT dbt_auto")
        .execute(&db)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("dbt_auto"), "{err}");
    let later = sqlx::query("SELECT 1")
        .execute(&db)
        .await
        .unwrap_err()
        .to_string();
    assert!(later.contains("statement not run"), "{later}");
}

/// A helper taking `&mut PgConnection`, called with a guard's bare
/// connection (`&mut conn`): db-test does not see its statements. A failed
/// one aborts the test's transaction block on PostgreSQL, which undoes the
/// helper's earlier write too, where production's autocommit keeps it. The
/// test is told why, where it would otherwise see a row silently missing.
async fn insert_two(conn: &mut PgConnection, first: &str, second: &str) -> (bool, bool) {
    let a = sqlx::query("INSERT INTO users (email) VALUES ($1)")
        .bind(first)
        .execute(&mut *conn)
        .await
        .is_ok();
    let b = sqlx::query("INSERT INTO users (email) VALUES ($1)")
        .bind(second)
        .execute(&mut *conn)
        .await
        .is_ok();
    (a, b)
}

#[db_test]
async fn child_bare_failure_is_explained(db: TestDb) {
    if !misbehave() {
        return;
    }
    sqlx::query("INSERT INTO users (email) VALUES ('taken@example.com')")
        .execute(&db)
        .await
        .unwrap();
    let mut conn = db.db().acquire().await.unwrap();
    let written = insert_two(&mut conn, "kept@example.com", "taken@example.com").await;
    drop(conn);
    assert_eq!(written, (true, false), "the second insert is a duplicate");
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE email = 'kept@example.com'")
            .fetch_one(&db)
            .await
            .unwrap();
    // Production: 1. On the bare connection: undone with the failure.
    println!("KEPT {kept}");
}

#[test]
fn a_failure_on_a_guards_bare_connection_is_explained() {
    let (out, text) = run(child(&["child_bare_failure_is_explained"]));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("KEPT 0"), "{text}");
    assert!(
        text.contains("a statement sent on the bare `PgConnection` of a guard")
            && text.contains("`&mut DbConn`"),
        "{text}"
    );
}
