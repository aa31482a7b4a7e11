//! Transaction mode parks a test's healthy connection in its slot for the
//! next test (and, on PostgreSQL, ends the test's transaction in the same
//! round trip as the end-of-test check, leaving sqlx at depth 1 on an idle
//! session). These tests end a test in every way a user can (a panic, a
//! timeout, a failing deferred constraint, an app transaction left open, a
//! guard that changed session state, a connection killed while parked, a
//! server-side idle timeout) and check that the next test on the same
//! slot runs in a transaction of its own, sees nothing of the last one, and
//! leaves nothing behind.
//!
//! Tests named `child_*` run in order in a child process of this binary
//! (one thread: the next test takes the slot the last one left), started by
//! the `parking_*` tests with `DB_TEST_PARKING` naming the scenario; in the
//! normal run they only do their plain part.

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use common::{children, run_until, text};
use db_test::{TestDb, db_test};
use sqlx::{Acquire, Connection, PgConnection};

fn scenario() -> String {
    std::env::var("DB_TEST_PARKING").unwrap_or_default()
}

/// The last test's backend, and its transaction's start.
static LAST_PID: AtomicI32 = AtomicI32::new(0);
static LAST_XACT: Mutex<String> = Mutex::new(String::new());
static OPTIONS: Mutex<Option<sqlx::postgres::PgConnectOptions>> = Mutex::new(None);

async fn outside(options: &sqlx::postgres::PgConnectOptions) -> PgConnection {
    PgConnection::connect_with(&options.clone().application_name("parking: outside"))
        .await
        .unwrap()
}

/// Records the test's backend and transaction, for the next test.
async fn remember(db: &TestDb) {
    let (pid, xact): (i32, String) =
        sqlx::query_as("SELECT pg_backend_pid(), transaction_timestamp()::text")
            .fetch_one(db)
            .await
            .unwrap();
    LAST_PID.store(pid, Ordering::SeqCst);
    *LAST_XACT.lock().unwrap() = xact;
    *OPTIONS.lock().unwrap() = Some(db.connect_options());
}

/// What every test after another must find: a transaction of its own (not
/// the last test's, not none), on a session that is the test's (its
/// BEGIN ran), with none of the last test's rows, and whose writes nobody
/// else sees. `same_backend`: the last test's connection was parked and
/// this test must be on it.
async fn check_fresh(db: &TestDb, label: &str, same_backend: Option<bool>) {
    let (pid, xact, app_name): (i32, String, String) = sqlx::query_as(
        "SELECT pg_backend_pid(), transaction_timestamp()::text, current_setting('application_name')",
    )
    .fetch_one(db)
    .await
    .unwrap();
    let last_pid = LAST_PID.load(Ordering::SeqCst);
    match same_backend {
        Some(true) => assert_eq!(pid, last_pid, "{label}: not the parked connection"),
        Some(false) => assert_ne!(pid, last_pid, "{label}: the broken connection was reused"),
        None => {}
    }
    assert_ne!(
        xact,
        *LAST_XACT.lock().unwrap(),
        "{label}: the test runs in the last test's transaction"
    );
    assert!(
        app_name.starts_with("dbt-") && app_name.contains("child_"),
        "{label}: the test's BEGIN did not run as expected (application_name {app_name:?})"
    );
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM posts) + (SELECT count(*) FROM ledger)",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(rows, 0, "{label}: rows of the last test are visible");
    // The session is inside a transaction block on the server, and what
    // the test writes is not seen outside. (An address of this session's
    // own: two tests inserting the same one wait on each other's unique
    // key, and with another scenario's ALTER TABLE in between, deadlock.)
    insert_user(db, &format!("parking-check-{pid}")).await;
    let mut other = outside(&db.connect_options()).await;
    let state: String = sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(state, "idle in transaction", "{label}: the test's session");
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email LIKE 'parking%'")
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(seen, 0, "{label}: a test's write is visible outside");
    other.close().await.unwrap();
    remember(db).await;
}

/// Inserts a user whose address is this process's own (`tag-<pid>`): the
/// same test runs in the normal run and in its scenario's child process at
/// once, and two sessions inserting one address wait on each other's
/// unique key.
async fn insert_user<'e, E: sqlx::Executor<'e, Database = sqlx::Postgres>>(ex: E, tag: &str) {
    sqlx::query("INSERT INTO users (email) VALUES ($1)")
        .bind(format!("{tag}-{}@example.com", std::process::id()))
        .execute(ex)
        .await
        .unwrap();
}

/// Nothing of the run's tests was committed.
async fn nothing_committed(options: &sqlx::postgres::PgConnectOptions) {
    let mut other = outside(options).await;
    let n: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM posts) + (SELECT count(*) FROM ledger)",
    )
    .fetch_one(&mut other)
    .await
    .unwrap();
    assert_eq!(n, 0, "rows were committed into the working database");
    other.close().await.unwrap();
}

/// Runs `tests` in order in a child process, under `scenario`; they must all
/// pass (or panic as they expect).
fn run_scenario(name: &str, tests: &[&str]) -> String {
    let mut cmd = children(tests);
    cmd.env("DB_TEST_PARKING", name);
    if matches!(name, "mysql" | "mykill") {
        // One slot: each test is on the connection the test before it left
        // (with more, a test takes one readied meanwhile, see `slots::pick`).
        cmd.env("DB_TEST_POOL_SIZE", "1");
    }
    let (out, all) = run_until(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "scenario {name} failed:\n{}",
        text(&out)
    );
    assert!(
        all.contains(&format!("{} passed", tests.len())),
        "scenario {name}: not every test ran:\n{all}"
    );
    all
}

// ---- the last test panicked ------------------------------------------------

#[db_test]
#[should_panic(expected = "parking: boom")]
async fn child_panic_1_panics_after_writing(db: TestDb) {
    remember(&db).await;
    insert_user(&db, "panic").await;
    panic!("parking: boom");
}

#[db_test]
async fn child_panic_2_next_test(db: TestDb) {
    let parked = scenario() == "panic";
    check_fresh(&db, "after a panic", parked.then_some(true)).await;
}

#[db_test]
async fn child_panic_3_and_the_next(db: TestDb) {
    let parked = scenario() == "panic";
    check_fresh(&db, "two tests later", parked.then_some(true)).await;
    nothing_committed(&db.connect_options()).await;
}

#[test]
fn parking_after_a_panic() {
    run_scenario(
        "panic",
        &[
            "child_panic_1_panics_after_writing",
            "child_panic_2_next_test",
            "child_panic_3_and_the_next",
        ],
    );
}

// ---- the last test timed out ------------------------------------------------

#[db_test(timeout = "500ms")]
#[should_panic(expected = "timed out after 500ms")]
async fn child_timeout_1_times_out(db: TestDb) {
    remember(&db).await;
    insert_user(&db, "timeout").await;
    if scenario() == "timeout_in_statement" {
        sqlx::query("SELECT pg_sleep(5)")
            .execute(&db)
            .await
            .unwrap();
    } else {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

#[db_test]
async fn child_timeout_2_next_test(db: TestDb) {
    // A statement cancelled mid-flight may cost the connection; a sleep
    // must not.
    let parked = (scenario() == "timeout_in_sleep").then_some(true);
    check_fresh(&db, "after a timeout", parked).await;
    nothing_committed(&db.connect_options()).await;
}

#[test]
fn parking_after_a_timeout_in_a_sleep() {
    run_scenario(
        "timeout_in_sleep",
        &["child_timeout_1_times_out", "child_timeout_2_next_test"],
    );
}

#[test]
fn parking_after_a_timeout_in_a_statement() {
    run_scenario(
        "timeout_in_statement",
        &["child_timeout_1_times_out", "child_timeout_2_next_test"],
    );
}

// ---- the last test's deferred constraint failed at its end -----------------

#[db_test]
#[should_panic(expected = "ledger_counterpart_fk")]
async fn child_constraint_1_fails_at_the_end(db: TestDb) {
    remember(&db).await;
    sqlx::query("INSERT INTO ledger (amount, counterpart) VALUES (10, 999999)")
        .execute(&db)
        .await
        .unwrap();
}

#[db_test]
async fn child_constraint_2_next_test(db: TestDb) {
    check_fresh(&db, "after a failed deferred constraint", None).await;
    sqlx::query("INSERT INTO ledger (amount) VALUES (1)")
        .execute(&db)
        .await
        .unwrap();
}

#[db_test]
async fn child_constraint_3_and_the_next(db: TestDb) {
    let parked = scenario() == "constraint";
    check_fresh(&db, "two tests later", parked.then_some(true)).await;
    nothing_committed(&db.connect_options()).await;
}

#[test]
fn parking_after_a_failed_deferred_constraint() {
    run_scenario(
        "constraint",
        &[
            "child_constraint_1_fails_at_the_end",
            "child_constraint_2_next_test",
            "child_constraint_3_and_the_next",
        ],
    );
}

// ---- the last test left an app transaction open -----------------------------

#[db_test]
async fn child_opentx_1_db_begin_never_committed(db: TestDb) {
    remember(&db).await;
    let mut tx = db.begin().await.unwrap();
    insert_user(&mut *tx, "open-tx").await;
    let mut inner = tx.begin().await.unwrap();
    insert_user(&mut *inner, "open-inner").await;
    inner.commit().await.unwrap();
    // Dropped, never committed.
    drop(tx);
}

#[db_test]
async fn child_opentx_2_acquire_begin_never_committed(db: TestDb) {
    let parked = scenario() == "opentx";
    check_fresh(&db, "after db.begin() left open", parked.then_some(true)).await;
    let app = db.db();
    let mut tx = Acquire::begin(&app).await.unwrap();
    insert_user(&mut *tx, "acquire-open").await;
    drop(tx);
    let mut tx = Acquire::begin(&app).await.unwrap();
    insert_user(&mut *tx, "acquire-committed").await;
    tx.commit().await.unwrap();
    // The last one ends with the test (committed into the test's transaction).
    let tx = Acquire::begin(&app).await.unwrap();
    drop(tx);
}

#[db_test]
async fn child_opentx_3_next_test(db: TestDb) {
    let parked = scenario() == "opentx";
    check_fresh(&db, "after Acquire::begin", parked.then_some(true)).await;
    nothing_committed(&db.connect_options()).await;
}

#[test]
fn parking_after_app_transactions_left_open() {
    run_scenario(
        "opentx",
        &[
            "child_opentx_1_db_begin_never_committed",
            "child_opentx_2_acquire_begin_never_committed",
            "child_opentx_3_next_test",
        ],
    );
}

// ---- the last test changed its session through a guard ----------------------

#[db_test]
async fn child_session_1_changes_the_session(db: TestDb) {
    remember(&db).await;
    let mut conn = db.acquire().await.unwrap();
    sqlx::raw_sql(
        "SET statement_timeout = '1234ms'; SET search_path TO pg_temp, public; \
         CREATE TEMP TABLE parking_temp (x int); LISTEN parking_channel; \
         PREPARE parking_stmt AS SELECT 1; SELECT pg_advisory_lock(777001); \
         INSERT INTO users (email) VALUES ('session@example.com')",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    sqlx::query("SELECT pg_advisory_lock(777002)")
        .execute(&db)
        .await
        .unwrap();
}

#[db_test]
async fn child_session_2_next_test(db: TestDb) {
    let parked = scenario() == "session";
    check_fresh(&db, "after session changes", parked.then_some(true)).await;
    let (timeout, path, prepared, temp): (String, String, i64, Option<String>) = sqlx::query_as(
        "SELECT current_setting('statement_timeout'), current_setting('search_path'), \
         (SELECT count(*) FROM pg_prepared_statements WHERE from_sql), \
         to_regclass('pg_temp.parking_temp')::text",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(timeout, "0");
    assert_eq!(path, "\"$user\", public");
    assert_eq!(prepared, 0);
    assert_eq!(temp, None);
    let channels: Vec<String> = sqlx::query_scalar("SELECT pg_listening_channels()")
        .fetch_all(&db)
        .await
        .unwrap();
    assert!(channels.is_empty(), "{channels:?}");
    let mut other = outside(&db.connect_options()).await;
    let free: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock(777001) AND pg_try_advisory_lock(777002)")
            .fetch_one(&mut other)
            .await
            .unwrap();
    assert!(free, "an advisory lock of the last test is still held");
    other.close().await.unwrap();
}

#[test]
fn parking_after_session_changes() {
    run_scenario(
        "session",
        &[
            "child_session_1_changes_the_session",
            "child_session_2_next_test",
        ],
    );
}

// ---- the parked connection is killed ----------------------------------------

#[db_test]
async fn child_killed_1_a_plain_test(db: TestDb) {
    remember(&db).await;
    insert_user(&db, "killed").await;
}

/// Not a `db_test`: it holds no slot, so the parked connection is idle.
#[test]
fn child_killed_2_kill_the_parked_connection() {
    let Some(options) = OPTIONS.lock().unwrap().clone() else {
        return;
    };
    let pid = LAST_PID.load(Ordering::SeqCst);
    db_test::runtime().block_on(async {
        let mut admin = outside(&options).await;
        let (killed, state): (bool, String) = sqlx::query_as(
            "SELECT pg_terminate_backend(pid), state FROM pg_stat_activity WHERE pid = $1",
        )
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        assert!(killed);
        assert_eq!(state, "idle", "the parked connection is idle on the server");
        admin.close().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
}

#[db_test]
async fn child_killed_3_next_test(db: TestDb) {
    let killed = scenario() == "killed";
    check_fresh(
        &db,
        "after the parked connection was killed",
        killed.then_some(false),
    )
    .await;
    nothing_committed(&db.connect_options()).await;
}

#[test]
fn parking_a_killed_parked_connection_is_replaced() {
    run_scenario(
        "killed",
        &[
            "child_killed_1_a_plain_test",
            "child_killed_2_kill_the_parked_connection",
            "child_killed_3_next_test",
        ],
    );
}

// ---- the server ends the session of an idle transaction ---------------------

#[db_test]
async fn child_idle_1_session_ended_by_the_server(db: TestDb) {
    remember(&db).await;
    sqlx::query("SET idle_in_transaction_session_timeout = '200ms'")
        .execute(&db)
        .await
        .unwrap();
    insert_user(&db, "idle").await;
    if scenario() == "idle" {
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
}

#[db_test]
async fn child_idle_2_next_test(db: TestDb) {
    let ended = scenario() == "idle";
    check_fresh(
        &db,
        "after the server ended the session",
        ended.then_some(false),
    )
    .await;
    let timeout: String =
        sqlx::query_scalar("SELECT current_setting('idle_in_transaction_session_timeout')")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(timeout, "0");
    // Idle longer than the last test's setting: nothing ends this session.
    tokio::time::sleep(Duration::from_millis(400)).await;
    sqlx::query("SELECT 1").execute(&db).await.unwrap();
}

#[test]
fn parking_after_the_server_ended_an_idle_session() {
    run_scenario(
        "idle",
        &[
            "child_idle_1_session_ended_by_the_server",
            "child_idle_2_next_test",
        ],
    );
}

// ---- many plain tests in a row on one parked connection ---------------------

#[db_test]
async fn child_row_1(db: TestDb) {
    remember(&db).await;
    insert_user(&db, "row").await;
}

#[db_test]
async fn child_row_2(db: TestDb) {
    let parked = scenario() == "row";
    check_fresh(&db, "second", parked.then_some(true)).await;
}

#[db_test]
async fn child_row_3(db: TestDb) {
    let parked = scenario() == "row";
    check_fresh(&db, "third", parked.then_some(true)).await;
    // DDL in the test: sqlx's cache is cleared after it. Only where the
    // next test is on this connection, and on a table only DDL tests use:
    // the ALTER locks it against every other test until this one ends.
    if parked {
        sqlx::query("ALTER TABLE ddl_scratch ADD COLUMN parking_extra int")
            .execute(&db)
            .await
            .unwrap();
        sqlx::query("SELECT * FROM ddl_scratch")
            .fetch_all(&db)
            .await
            .unwrap();
    }
}

#[db_test]
async fn child_row_4(db: TestDb) {
    let parked = scenario() == "row";
    check_fresh(&db, "fourth", parked.then_some(true)).await;
    let cols: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'ddl_scratch' \
         AND column_name = 'parking_extra'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(cols, 0);
    sqlx::query("SELECT * FROM ddl_scratch")
        .fetch_all(&db)
        .await
        .unwrap();
    nothing_committed(&db.connect_options()).await;
}

#[test]
fn parking_plain_tests_in_a_row() {
    run_scenario(
        "row",
        &["child_row_1", "child_row_2", "child_row_3", "child_row_4"],
    );
}

// ---- sequence state of the last test (implicit nextval) ---------------------

#[db_test]
async fn child_seq_1_inserts_a_serial_row(db: TestDb) {
    remember(&db).await;
    insert_user(&db, "seq").await;
}

#[db_test]
async fn child_seq_2_has_no_sequence_value(db: TestDb) {
    let parked = scenario() == "seq";
    check_fresh(&db, "after a serial insert", parked.then_some(true)).await;
    // (`check_fresh` inserted a serial row itself: the next test checks.)
}

#[db_test]
async fn child_seq_3_lastval_is_undefined(db: TestDb) {
    let parked = scenario() == "seq";
    if parked {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(
            pid,
            LAST_PID.load(Ordering::SeqCst),
            "not the parked connection"
        );
    }
    for f in ["lastval()", "currval('users_id_seq')"] {
        let got = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("SELECT {f}")))
            .fetch_one(&db)
            .await;
        assert!(
            got.is_err(),
            "{f} = {got:?}: the last test's sequence state survived on the connection"
        );
    }
}

#[test]
fn parking_sequence_state_does_not_reach_the_next_test() {
    run_scenario(
        "seq",
        &[
            "child_seq_1_inserts_a_serial_row",
            "child_seq_2_has_no_sequence_value",
            "child_seq_3_lastval_is_undefined",
        ],
    );
}

// ---- MySQL and SQLite ---------------------------------------------------------

static MY_ID: AtomicU64 = AtomicU64::new(0);

/// Users named like `pattern` that a session of its own sees (committed).
async fn my_committed(db: &db_test::mysql::TestDb, pattern: &str) -> i64 {
    let mut other = sqlx::mysql::MySqlConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM user WHERE username LIKE ?")
        .bind(pattern)
        .fetch_one(&mut other)
        .await
        .unwrap();
    other.close().await.unwrap();
    seen
}

/// In the `mysql` scenario, the test is on the connection the last test
/// parked (`MY_ID`).
fn on_the_parked_connection(id: u64) {
    if scenario() == "mysql" {
        assert_eq!(
            id,
            MY_ID.load(Ordering::SeqCst),
            "not the parked connection"
        );
    }
}

#[db_test(migrations = "tests/mysql/migrations")]
#[should_panic(expected = "parking: mysql boom")]
async fn child_mysql_1_panics(db: db_test::mysql::TestDb) {
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&db)
        .await
        .unwrap();
    MY_ID.store(id, Ordering::SeqCst);
    sqlx::query("INSERT INTO user (username) VALUES ('parkpanic')")
        .execute(&db)
        .await
        .unwrap();
    panic!("parking: mysql boom");
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_mysql_2_next_test(db: db_test::mysql::TestDb) {
    let (id, users): (u64, i64) =
        sqlx::query_as("SELECT CONNECTION_ID(), (SELECT COUNT(*) FROM user)")
            .fetch_one(&db)
            .await
            .unwrap();
    on_the_parked_connection(id);
    assert_eq!(users, 0, "the last test's row is visible");
    sqlx::query("INSERT INTO user (username) VALUES ('parknext')")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(
        my_committed(&db, "park%").await,
        0,
        "a test's write is visible outside"
    );
    MY_ID.store(id, Ordering::SeqCst);
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_mysql_3_next_test(db: db_test::mysql::TestDb) {
    let (id, users, last_id): (u64, i64, u64) =
        sqlx::query_as("SELECT CONNECTION_ID(), (SELECT COUNT(*) FROM user), LAST_INSERT_ID()")
            .fetch_one(&db)
            .await
            .unwrap();
    // The last test inserted on this connection; a new connection (what
    // `#[sqlx::test]` gives each test) answers 0.
    assert_eq!(last_id, 0, "the last test's LAST_INSERT_ID() survived");
    on_the_parked_connection(id);
    assert_eq!(users, 0, "the last test's row is visible");
}

/// A test's transaction sees what was committed before its first read,
/// even on a connection whose transaction was opened after the last test
/// (see `RESTART_TEST`): InnoDB takes the snapshot at the first read, not
/// at `BEGIN`. Also run right after `child_mysql_3_next_test`, so on the
/// connection as readied.
#[db_test(migrations = "tests/mysql/migrations")]
async fn child_mysql_4_sees_what_was_committed_before_it(db: db_test::mysql::TestDb) {
    let mut other = sqlx::mysql::MySqlConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    sqlx::query("INSERT INTO user (username) VALUES ('parksnapshot')")
        .execute(&mut other)
        .await
        .unwrap();
    let seen: Result<i64, _> =
        sqlx::query_scalar("SELECT COUNT(*) FROM user WHERE username = 'parksnapshot'")
            .fetch_one(&db)
            .await;
    // Deleted before any assertion, so that a failure leaves nothing behind.
    sqlx::query("DELETE FROM user WHERE username = 'parksnapshot'")
        .execute(&mut other)
        .await
        .unwrap();
    other.close().await.unwrap();
    assert_eq!(
        seen.unwrap(),
        1,
        "a row committed before the test's first read is not seen"
    );
}

#[test]
fn child_mysql_5_pause() {
    // Longer than a readied connection is used as it is: the next test
    // opens its transaction again, on the same connection.
    std::thread::sleep(Duration::from_millis(100));
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_mysql_6_after_a_pause(db: db_test::mysql::TestDb) {
    sqlx::query("INSERT INTO user (username) VALUES ('parkpause')")
        .execute(&db)
        .await
        .unwrap();
    let (users, last_id): (i64, u64) =
        sqlx::query_as("SELECT (SELECT COUNT(*) FROM user), LAST_INSERT_ID()")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(
        users, 1,
        "the last tests' rows are visible, or this one's is not"
    );
    assert_ne!(last_id, 0);
    assert_eq!(
        my_committed(&db, "parkpause").await,
        0,
        "the test's write is visible outside: not in a transaction"
    );
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_mysql_7_next_test(db: db_test::mysql::TestDb) {
    let (users, last_id): (i64, u64) =
        sqlx::query_as("SELECT (SELECT COUNT(*) FROM user), LAST_INSERT_ID()")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(users, 0, "the last test's row is visible");
    assert_eq!(last_id, 0, "the last test's LAST_INSERT_ID() survived");
}

/// An app transaction committed (a savepoint released) and one rolled
/// back: the test's connection went out of db-test's sight, so its end
/// checks the transaction first, in the same round trip as the rollback.
#[db_test(migrations = "tests/mysql/migrations")]
async fn child_mysql_8_app_transactions(db: db_test::mysql::TestDb) {
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO user (username) VALUES ('parkapp')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO user (username) VALUES ('parkundone')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let (id, names): (u64, String) = sqlx::query_as(
        "SELECT CONNECTION_ID(), CAST(COALESCE(GROUP_CONCAT(username), '') AS CHAR) FROM user",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(names, "parkapp");
    MY_ID.store(id, Ordering::SeqCst);
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_mysql_9_next_test(db: db_test::mysql::TestDb) {
    let (id, users, last_id): (u64, i64, u64) =
        sqlx::query_as("SELECT CONNECTION_ID(), (SELECT COUNT(*) FROM user), LAST_INSERT_ID()")
            .fetch_one(&db)
            .await
            .unwrap();
    on_the_parked_connection(id);
    assert_eq!(users, 0, "the last test's committed savepoint is visible");
    assert_eq!(last_id, 0, "the last test's LAST_INSERT_ID() survived");
    assert_eq!(
        my_committed(&db, "park%").await,
        0,
        "an app transaction's commit reached the database"
    );
}

#[test]
fn parking_mysql_after_a_panic() {
    run_scenario(
        "mysql",
        &[
            "child_mysql_1_panics",
            "child_mysql_2_next_test",
            "child_mysql_3_next_test",
            "child_mysql_4_sees_what_was_committed_before_it",
            "child_mysql_5_pause",
            "child_mysql_6_after_a_pause",
            "child_mysql_7_next_test",
            "child_mysql_8_app_transactions",
            "child_mysql_9_next_test",
        ],
    );
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
#[should_panic(expected = "parking: sqlite boom")]
async fn child_sqlite_1_panics(db: db_test::sqlite::TestDb) {
    sqlx::query("INSERT INTO item (name) VALUES ('parkpanic')")
        .execute(&db)
        .await
        .unwrap();
    panic!("parking: sqlite boom");
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn child_sqlite_2_next_test(db: db_test::sqlite::TestDb) {
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM item ORDER BY id")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(names, vec!["seed".to_string()]);
    let app = db.db();
    let mut tx = Acquire::begin(&app).await.unwrap();
    sqlx::query("INSERT INTO item (name) VALUES ('parkopen')")
        .execute(&mut *tx)
        .await
        .unwrap();
    drop(tx);
    sqlx::query("INSERT INTO item (name) VALUES ('parknext')")
        .execute(&db)
        .await
        .unwrap();
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn child_sqlite_3_next_test(db: db_test::sqlite::TestDb) {
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM item ORDER BY id")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(names, vec!["seed".to_string()]);
    // The last test's insert is not what this connection reports, as on a
    // new one.
    let last: i64 = sqlx::query_scalar("SELECT last_insert_rowid()")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(last, 0, "the last test's last_insert_rowid() survived");
}

#[test]
fn parking_sqlite_after_a_panic() {
    run_scenario(
        "sqlite",
        &[
            "child_sqlite_1_panics",
            "child_sqlite_2_next_test",
            "child_sqlite_3_next_test",
        ],
    );
}

// ---- timeouts inside an app transaction, a guard, a lent transaction ---------

#[db_test(timeout = "500ms")]
#[should_panic(expected = "timed out after 500ms")]
async fn child_tmo_1_in_app_tx(db: TestDb) {
    remember(&db).await;
    let mut tx = db.begin().await.unwrap();
    insert_user(&mut *tx, "tmo-tx").await;
    sqlx::query("SELECT pg_sleep(5)")
        .execute(&mut *tx)
        .await
        .unwrap();
}

#[db_test(timeout = "500ms")]
#[should_panic(expected = "timed out after 500ms")]
async fn child_tmo_1_in_guard(db: TestDb) {
    remember(&db).await;
    let mut conn = db.acquire().await.unwrap();
    insert_user(&mut *conn, "tmo-guard").await;
    sqlx::query("SELECT pg_sleep(5)")
        .execute(&mut *conn)
        .await
        .unwrap();
}

#[db_test(timeout = "500ms")]
#[should_panic(expected = "timed out after 500ms")]
async fn child_tmo_1_in_lent_tx(db: TestDb) {
    remember(&db).await;
    let app = db.db();
    let mut tx = Acquire::begin(&app).await.unwrap();
    insert_user(&mut *tx, "tmo-lent").await;
    sqlx::query("SELECT pg_sleep(5)")
        .execute(&mut *tx)
        .await
        .unwrap();
}

#[db_test(timeout = "500ms")]
#[should_panic(expected = "timed out after 500ms")]
async fn child_tmo_1_lent_tx_sleeping(db: TestDb) {
    remember(&db).await;
    let app = db.db();
    let mut tx = Acquire::begin(&app).await.unwrap();
    insert_user(&mut *tx, "tmo-lent-sleep").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
}

#[db_test]
async fn child_tmo_2_next_test(db: TestDb) {
    check_fresh(&db, "after a timeout", None).await;
}

#[db_test]
async fn child_tmo_3_and_the_next(db: TestDb) {
    check_fresh(&db, "two tests later", None).await;
    nothing_committed(&db.connect_options()).await;
}

#[test]
fn parking_after_a_timeout_in_an_app_transaction() {
    run_scenario(
        "tmo",
        &[
            "child_tmo_1_in_app_tx",
            "child_tmo_2_next_test",
            "child_tmo_3_and_the_next",
        ],
    );
}

#[test]
fn parking_after_a_timeout_in_a_guard() {
    run_scenario(
        "tmo",
        &[
            "child_tmo_1_in_guard",
            "child_tmo_2_next_test",
            "child_tmo_3_and_the_next",
        ],
    );
}

#[test]
fn parking_after_a_timeout_in_a_lent_transaction() {
    run_scenario(
        "tmo",
        &[
            "child_tmo_1_in_lent_tx",
            "child_tmo_2_next_test",
            "child_tmo_3_and_the_next",
        ],
    );
}

#[test]
fn parking_after_a_timeout_with_a_lent_transaction_open() {
    run_scenario(
        "tmo",
        &[
            "child_tmo_1_lent_tx_sleeping",
            "child_tmo_2_next_test",
            "child_tmo_3_and_the_next",
        ],
    );
}

// ---- a body on a runtime of its own ------------------------------------------

#[db_test(flavor = "current_thread")]
#[should_panic(expected = "parking: own runtime")]
async fn child_own_1_lends_and_panics(db: TestDb) {
    remember(&db).await;
    let app = db.db();
    let mut tx = Acquire::begin(&app).await.unwrap();
    insert_user(&mut *tx, "own-committed").await;
    tx.commit().await.unwrap();
    let mut tx = Acquire::begin(&app).await.unwrap();
    insert_user(&mut *tx, "own-open").await;
    // Still lent when the test panics: it goes back through the body's runtime.
    let _keep = tx;
    panic!("parking: own runtime");
}

#[db_test(flavor = "current_thread")]
async fn child_own_2_next_test(db: TestDb) {
    check_fresh(&db, "after a lent connection on a runtime of its own", None).await;
    let app = db.db();
    let mut tx = Acquire::begin(&app).await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('own-2@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[db_test]
async fn child_own_3_and_the_next(db: TestDb) {
    check_fresh(&db, "two tests later", None).await;
    nothing_committed(&db.connect_options()).await;
}

#[test]
fn parking_after_a_body_on_its_own_runtime() {
    run_scenario(
        "own",
        &[
            "child_own_1_lends_and_panics",
            "child_own_2_next_test",
            "child_own_3_and_the_next",
        ],
    );
}

// ---- MySQL: a parked connection killed, a timeout ------------------------------

static MY_OPTIONS: Mutex<Option<sqlx::mysql::MySqlConnectOptions>> = Mutex::new(None);

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_mykill_1_a_plain_test(db: db_test::mysql::TestDb) {
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&db)
        .await
        .unwrap();
    MY_ID.store(id, Ordering::SeqCst);
    *MY_OPTIONS.lock().unwrap() = Some(db.connect_options());
    sqlx::query("INSERT INTO user (username) VALUES ('parkkill')")
        .execute(&db)
        .await
        .unwrap();
}

#[test]
fn child_mykill_2_kill_the_parked_connection() {
    // Only in its scenario: in the normal parallel run, the id it would
    // kill may be any other test's connection (`MY_ID` is shared), running
    // or just readied for its next test.
    if scenario() != "mykill" {
        return;
    }
    let Some(options) = MY_OPTIONS.lock().unwrap().clone() else {
        return;
    };
    let id = MY_ID.load(Ordering::SeqCst);
    db_test::runtime().block_on(async {
        let mut admin = sqlx::mysql::MySqlConnection::connect_with(&options)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("KILL {id}")))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_mykill_3_next_test(db: db_test::mysql::TestDb) {
    let (id, users): (u64, i64) =
        sqlx::query_as("SELECT CONNECTION_ID(), (SELECT COUNT(*) FROM user)")
            .fetch_one(&db)
            .await
            .unwrap();
    if scenario() == "mykill" {
        assert_ne!(
            id,
            MY_ID.load(Ordering::SeqCst),
            "the killed connection was reused"
        );
    }
    assert_eq!(users, 0);
}

#[test]
fn parking_mysql_a_killed_parked_connection_is_replaced() {
    run_scenario(
        "mykill",
        &[
            "child_mykill_1_a_plain_test",
            "child_mykill_2_kill_the_parked_connection",
            "child_mykill_3_next_test",
        ],
    );
}

// ---- MySQL: the session ended before the test's first statement -------------
//
// A connection readied for the next test is handed to it with no round trip
// (within 20 ms of its readying): a session the server ended meanwhile is
// found by the test's first statement, which is sent again on a new
// connection, as nothing of the test was on the old one. Here each test
// kills its own connection from outside before its first statement, which
// is the same to db-test whether the connection was checked at hand-over.

/// The connection of the last `mygone` test.
static GONE_ID: AtomicU64 = AtomicU64::new(0);

/// Kills the connection the last test used, which this test was given (one
/// thread, one slot): only in the `mygone` scenario.
async fn kill_last(db: &db_test::mysql::TestDb) -> Option<u64> {
    let id = GONE_ID.load(Ordering::SeqCst);
    if scenario() != "mygone" || id == 0 {
        return None;
    }
    let mut admin = sqlx::mysql::MySqlConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("KILL {id}")))
        .execute(&mut admin)
        .await
        .unwrap();
    // Gone from the server (its socket closed), not only marked killed:
    // the first statement then cannot be sent, which is what db-test
    // sends again (a statement that reached a session being killed may
    // have run, and is not).
    for _ in 0..500 {
        let left: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.processlist WHERE id = ?")
                .bind(id)
                .fetch_one(&mut admin)
                .await
                .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    admin.close().await.unwrap();
    Some(id)
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_mygone_1_a_plain_test(db: db_test::mysql::TestDb) {
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&db)
        .await
        .unwrap();
    GONE_ID.store(id, Ordering::SeqCst);
    sqlx::query("INSERT INTO user (username) VALUES ('gone1')")
        .execute(&db)
        .await
        .unwrap();
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_mygone_2_first_statement_with_arguments(db: db_test::mysql::TestDb) {
    let killed = kill_last(&db).await;
    // The first statement, with an argument: sent again on a new connection.
    let (id, users): (u64, i64) =
        sqlx::query_as("SELECT CONNECTION_ID(), (SELECT COUNT(*) FROM user WHERE username LIKE ?)")
            .bind("gone%")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(users, 0, "the last test's row was not rolled back");
    if let Some(killed) = killed {
        assert_ne!(id, killed, "the killed connection answered");
    }
    // The test's transaction is open on the new connection: this row is
    // rolled back, and `LAST_INSERT_ID()` is the test's own.
    sqlx::query("INSERT INTO user (username) VALUES ('gone2')")
        .execute(&db)
        .await
        .unwrap();
    let last: u64 = sqlx::query_scalar("SELECT LAST_INSERT_ID()")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_ne!(last, 0);
    assert_eq!(my_committed(&db, "gone%").await, 0, "a row was committed");
    GONE_ID.store(id, Ordering::SeqCst);
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_mygone_3_first_an_app_transaction(db: db_test::mysql::TestDb) {
    let killed = kill_last(&db).await;
    // The first use is an app transaction (a savepoint): begun again on a
    // new connection.
    let mut tx = db.begin().await.unwrap();
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    if let Some(killed) = killed {
        assert_ne!(id, killed, "the killed connection answered");
    }
    sqlx::query("INSERT INTO user (username) VALUES ('gone3')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM user WHERE username LIKE 'gone%'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(users, 1, "the test sees its own row");
    assert_eq!(my_committed(&db, "gone%").await, 0, "a row was committed");
    GONE_ID.store(id, Ordering::SeqCst);
}

#[db_test(migrations = "tests/mysql/migrations", timeout = "1s")]
#[should_panic(expected = "timed out after 1s")]
async fn child_mygone_4_times_out_on_the_new_connection(db: db_test::mysql::TestDb) {
    let killed = kill_last(&db).await;
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&db)
        .await
        .unwrap();
    if let Some(killed) = killed {
        assert_ne!(id, killed, "the killed connection answered");
    }
    // Stopped at the timeout on the connection that replaced the killed
    // one (`KILL QUERY` follows it), not left running.
    sqlx::query("SELECT SLEEP(30) /* parking: mygone */")
        .execute(&db)
        .await
        .unwrap();
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_mygone_5_next_test(db: db_test::mysql::TestDb) {
    let mut admin = sqlx::mysql::MySqlConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    let running: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.processlist \
         WHERE info LIKE 'SELECT SLEEP(30) /* parking: mygone */%'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    admin.close().await.unwrap();
    if scenario() == "mygone" {
        assert_eq!(running, 0, "the timed-out statement still runs");
    }
    assert_eq!(my_committed(&db, "gone%").await, 0, "a row was committed");
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_mygone_6_first_a_guard(db: db_test::mysql::TestDb) {
    // A guard's connection is checked before it is handed out when it came
    // with no round trip, and replaced if its session is gone; when it was
    // checked at hand-over, a kill after that is a kill during the test,
    // which fails the test as under `#[sqlx::test]`. Either way nothing of
    // the last tests is there.
    let mut conn = db.acquire().await.unwrap();
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM user WHERE username LIKE 'gone%'")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(users, 0, "a row of the last tests was seen");
    drop(conn);
    assert_eq!(my_committed(&db, "gone%").await, 0, "a row was committed");
}

#[test]
fn parking_mysql_a_session_ended_before_the_first_statement() {
    let all = run_scenario(
        "mygone",
        &[
            "child_mygone_1_a_plain_test",
            "child_mygone_2_first_statement_with_arguments",
            "child_mygone_3_first_an_app_transaction",
            "child_mygone_4_times_out_on_the_new_connection",
            "child_mygone_5_next_test",
            "child_mygone_6_first_a_guard",
        ],
    );
    // The timed-out statement was stopped on the connection that replaced
    // the killed one (`KILL QUERY` followed it): the rollback did not wait.
    assert!(
        !all.contains("still held the connection"),
        "the timed-out statement was not stopped:\n{all}"
    );
}

#[db_test(migrations = "tests/mysql/migrations", timeout = "500ms")]
#[should_panic(expected = "timed out after 500ms")]
async fn child_mytmo_1_times_out(db: db_test::mysql::TestDb) {
    sqlx::query("INSERT INTO user (username) VALUES ('parktmo')")
        .execute(&db)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_mytmo_2_next_test(db: db_test::mysql::TestDb) {
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM user")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(users, 0);
    sqlx::query("INSERT INTO user (username) VALUES ('parktmo2')")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("SELECT SLEEP(0.2)").execute(&db).await.unwrap();
}

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_mytmo_3_next_test(db: db_test::mysql::TestDb) {
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM user")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(users, 0);
}

#[test]
fn parking_mysql_after_a_timeout() {
    run_scenario(
        "mytmo",
        &[
            "child_mytmo_1_times_out",
            "child_mytmo_2_next_test",
            "child_mytmo_3_next_test",
        ],
    );
}

// ---- SQLite: a timeout fires the test's interrupt ------------------------------

#[db_test(migrations = "tests/sqlite_core/migrations", timeout = "500ms")]
#[should_panic(expected = "timed out after 500ms")]
async fn child_sqtmo_1_times_out(db: db_test::sqlite::TestDb) {
    sqlx::query("INSERT INTO item (name) VALUES ('parktmo')")
        .execute(&db)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
}

#[db_test(migrations = "tests/sqlite_core/migrations")]
async fn child_sqtmo_2_next_test(db: db_test::sqlite::TestDb) {
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM item ORDER BY id")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(names, vec!["seed".to_string()]);
    // Long enough for the progress handler: the last test's interrupt must
    // not stop it.
    let n: i64 = sqlx::query_scalar(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000) \
         SELECT count(*) FROM c",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(n, 200000);
}

#[test]
fn parking_sqlite_after_a_timeout() {
    run_scenario(
        "sqtmo",
        &["child_sqtmo_1_times_out", "child_sqtmo_2_next_test"],
    );
}
