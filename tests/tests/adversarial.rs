//! Adversarial review: tests written the way users hit problems, each
//! asserting what the README and DESIGN.md promise.
//!
//! The `child_*` tests are run again by a parent `#[test]` in a child
//! process with `DB_TEST_ADVERSARIAL=1`; run on their own (without the
//! variable) they are ordinary tests that pass.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use db_test::{Db, DbConnection, TestContext, TestDb, db_test};
use futures_util::StreamExt;
use sqlx::{Acquire, Connection, Executor, PgConnection, Postgres};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::{children, run_until};

fn misbehave() -> bool {
    std::env::var("DB_TEST_ADVERSARIAL").is_ok()
}

fn code(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(db)
        .await
        .unwrap()
}

/// A connection of the test's own to its database, outside its transaction.
async fn outside(ctx: &TestContext) -> PgConnection {
    PgConnection::connect_with(&ctx.connect_options())
        .await
        .unwrap()
}

fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("adv-{what}-{}-{nanos}@example.com", std::process::id())
}

/// Rows with `email` that are committed in the shared working database;
/// removes them again so that a leak does not disturb other tests.
async fn committed_and_removed(ctx: &TestContext, email: &str) -> u64 {
    let mut other = outside(ctx).await;
    sqlx::query("DELETE FROM users WHERE email = $1")
        .bind(email)
        .execute(&mut other)
        .await
        .unwrap()
        .rows_affected()
}

// ===========================================================================
// 1. Suites renamed from #[sqlx::test] / #[tokio::test]
// ===========================================================================

mod renamed {
    use super::*;

    /// The project's alias, inside a nested module.
    type DbPool = sqlx::PgPool;

    /// `(PgPoolOptions, PgConnectOptions)`: the test builds its own pool on
    /// its own runtime, commits, and reads back from a second connection.
    #[db_test]
    async fn the_pool_options_tuple_builds_a_working_pool(
        (opts, connect): (
            sqlx::postgres::PgPoolOptions,
            sqlx::postgres::PgConnectOptions,
        ),
    ) -> sqlx::Result<()> {
        let pool = opts.max_connections(3).connect_with(connect).await?;
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO users (email) VALUES ('tuple@example.com')")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut second = pool.acquire().await?;
        let mut third = pool.acquire().await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&mut *second)
            .await?;
        assert_eq!(n, 1);
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&mut *third)
            .await?;
        assert_eq!(n, 1);
        Ok(())
    }

    /// Many sqlx suites close their pool at the end of each test.
    #[db_test]
    async fn a_test_that_closes_its_pool(pool: DbPool) -> sqlx::Result<()> {
        sqlx::query("INSERT INTO users (email) VALUES ('closed@example.com')")
            .execute(&pool)
            .await?;
        pool.close().await;
        Ok(())
    }

    #[db_test]
    #[should_panic(expected = "sqlx-style panic 42")]
    async fn should_panic_works_for_a_sqlx_style_test(pool: DbPool) {
        let n: i64 = sqlx::query_scalar("SELECT 42::int8")
            .fetch_one(&pool)
            .await
            .unwrap();
        panic!("sqlx-style panic {n}");
    }

    #[db_test]
    async fn a_boxed_error_result_in_transaction_mode(
        db: TestDb,
    ) -> Result<(), Box<dyn std::error::Error>> {
        sqlx::query("INSERT INTO users (email) VALUES ('boxed@example.com')")
            .execute(&db)
            .await?;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&db)
            .await?;
        assert_eq!(n, 1);
        Ok(())
    }
}

/// 64 tests at once, mixing flavors and isolations. Each inserts the same
/// unique key (as suites with a shared "admin" fixture do) and must see only
/// its own row.
mod many {
    use super::*;

    macro_rules! batch {
        ($($n:ident),*) => {
            mod tx_shared { use super::*; $(
                #[db_test]
                async fn $n(db: TestDb) {
                    same_key(&db.db()).await;
                }
            )* }
            mod tx_current_thread { use super::*; $(
                #[db_test(flavor = "current_thread")]
                async fn $n(db: Db) {
                    same_key(&db).await;
                }
            )* }
            mod tx_paused { use super::*; $(
                #[db_test(flavor = "current_thread", start_paused = true)]
                async fn $n(db: TestDb) {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    same_key(&db.db()).await;
                }
            )* }
            mod database { use super::*; $(
                #[db_test]
                async fn $n(pool: sqlx::PgPool) {
                    same_key(&Db::from_pool(pool)).await;
                }
            )* }
        };
    }

    async fn same_key(db: &Db) {
        let before: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(db)
            .await
            .unwrap();
        assert_eq!(before, 0, "another test's rows are visible");
        sqlx::query("INSERT INTO users (email) VALUES ('admin@example.com')")
            .execute(db)
            .await
            .unwrap();
        sqlx::query("SELECT pg_sleep(0.01)")
            .execute(db)
            .await
            .unwrap();
        let after: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(db)
            .await
            .unwrap();
        assert_eq!(after, 1);
    }

    batch!(
        t01, t02, t03, t04, t05, t06, t07, t08, t09, t10, t11, t12, t13, t14, t15, t16
    );
}

// ===========================================================================
// 2. Transaction mode: production semantics on guards and dropped futures
// ===========================================================================

/// Production autocommit on a connection from `db.acquire()`: a statement
/// that fails does not stop the next one on the same connection (an
/// "insert, skip duplicates" loop).
/// An app's `begin()` cut short at each point of its way, the first one
/// during the round trip that puts db-test's commit guard in place (the
/// test's first guard), and nothing but plain statements after it: every
/// time, the test's writes stay and the test ends clean (teardown must
/// clear a guard row it never heard back about).
#[db_test]
async fn an_app_begin_cut_at_any_point_leaves_the_test_clean(db: TestDb) {
    for polls in 1..12 {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO users (email) VALUES ('cut{polls}@example.com')"
        )))
        .execute(&db)
        .await
        .unwrap();
        let app = db.db();
        let mut begin = Box::pin(app.begin());
        for _ in 0..polls {
            if futures_util::poll!(begin.as_mut()).is_ready() {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(
        count(&db, "SELECT count(*) FROM users WHERE email LIKE 'cut%'").await,
        11
    );
}

/// The same, once, as the test's only use of a guard: cut during the
/// guard's first round trip (a zero timeout), then a plain read. Its
/// teardown must not trip db-test's own commit guard.
#[db_test]
async fn an_app_begin_cut_in_its_first_round_trip_then_plain_reads(db: TestDb) {
    let app = db.db();
    let cut = tokio::time::timeout(Duration::ZERO, app.begin()).await;
    drop(cut);
    assert_eq!(count(&db, "SELECT 1::int8").await, 1);
}

#[db_test]
async fn a_raw_guard_keeps_autocommit_semantics_after_a_failed_statement(db: TestDb) {
    let app = db.db();
    let mut conn = app.acquire().await.unwrap();
    let mut inserted = 0;
    let mut errors = Vec::new();
    for email in ["a@example.com", "a@example.com", "b@example.com"] {
        match sqlx::query("INSERT INTO users (email) VALUES ($1)")
            .bind(email)
            .execute(&mut *conn)
            .await
        {
            Ok(_) => inserted += 1,
            Err(e) => errors.push(format!("{:?}: {e}", code(&e))),
        }
    }
    drop(conn);
    assert_eq!(
        errors.len(),
        1,
        "only the duplicate should fail, as under autocommit: {errors:?}"
    );
    assert!(errors[0].contains("23505"), "{errors:?}");
    assert_eq!(inserted, 2);
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 2);
}

/// A handler inside `db.begin()` under a timeout (a tower `TimeoutLayer`):
/// its long statement is dropped mid-flight. The README: "if it is still
/// running 250 ms later it is cancelled on the server". The next statement
/// must not wait for an hour.
#[db_test(timeout = "40s")]
async fn a_long_statement_dropped_inside_an_app_transaction_is_cancelled(db: TestDb) {
    let app = db.db();
    let handler = async {
        let mut tx = app.begin().await?;
        sqlx::query("INSERT INTO users (email) VALUES ('handler@example.com')")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_sleep(3600)")
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    };
    assert!(
        tokio::time::timeout(Duration::from_millis(300), handler)
            .await
            .is_err()
    );
    let t0 = Instant::now();
    let next = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM users").fetch_one(&db),
    )
    .await;
    let n = next
        .unwrap_or_else(|_| {
            panic!(
                "the next statement still waited for the dropped one after {:?}",
                t0.elapsed()
            )
        })
        .unwrap();
    assert_eq!(n, 0, "the uncommitted app transaction was undone");
}

/// A task (a request, a worker) aborted while its statement on a raw guard
/// runs: the next statement of the test must not wait for it.
#[db_test(timeout = "40s")]
async fn a_task_aborted_mid_statement_on_a_guard_does_not_block_the_next_one(db: TestDb) {
    let app = db.db();
    let (started, is_started) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut conn = app.acquire().await.unwrap();
        let _ = started.send(());
        conn.execute("SELECT pg_sleep(3600)").await
    });
    is_started.await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    task.abort();
    let _ = task.await;
    let t0 = Instant::now();
    let next = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&db),
    )
    .await;
    let one = next
        .unwrap_or_else(|_| {
            panic!(
                "the next statement still waited for the aborted one after {:?}",
                t0.elapsed()
            )
        })
        .unwrap();
    assert_eq!(one, 1);
}

/// A `COPY ... FROM STDIN` abandoned on a guard (its producer failed): the
/// copy is undone, nothing hangs, and since sqlx cannot bring the
/// connection back in step, the test fails saying why.
#[db_test(timeout = "40s")]
#[should_panic(expected = "was abandoned")]
async fn a_copy_dropped_on_a_guard_is_undone_and_the_next_statement_works(db: TestDb) {
    let app = db.db();
    {
        let mut conn = app.acquire().await.unwrap();
        let mut copy = conn
            .copy_in_raw("COPY users (email) FROM STDIN")
            .await
            .unwrap();
        copy.send(b"copied@example.com\n".as_slice()).await.unwrap();
        // The producer fails here: the copy is dropped without finish().
    }
    let next = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM users").fetch_one(&db),
    )
    .await
    .expect("the next statement hung after an abandoned COPY");
    assert_eq!(next.unwrap(), 0, "the abandoned COPY must not insert");
    sqlx::query("INSERT INTO users (email) VALUES ('after-copy@example.com')")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 1);
}

/// Streams consumed partially (the caller found what it wanted) on a guard
/// and through `Db`, then more statements.
#[db_test(timeout = "40s")]
async fn partially_consumed_fetch_streams_do_not_disturb_later_statements(db: TestDb) {
    let app = db.db();
    let mut conn = app.acquire().await.unwrap();
    {
        let mut rows = sqlx::query_scalar::<_, i32>("SELECT g FROM generate_series(1, 200000) g")
            .fetch(&mut *conn);
        assert_eq!(rows.next().await.unwrap().unwrap(), 1);
    }
    let two: i32 = sqlx::query_scalar("SELECT 2")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(two, 2);
    drop(conn);
    {
        let mut rows =
            sqlx::query_scalar::<_, i32>("SELECT g FROM generate_series(1, 10) g").fetch(&app);
        let first = tokio::time::timeout(Duration::from_secs(5), rows.next())
            .await
            .unwrap();
        assert_eq!(first.unwrap().unwrap(), 1);
    }
    sqlx::query("INSERT INTO users (email) VALUES ('stream@example.com')")
        .execute(&app)
        .await
        .unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 1);
}

// ---- COMMITs hidden in multi-statement strings ----------------------------

/// `ROLLBACK AND CHAIN` starts a new READ WRITE transaction (the test's was
/// `BEGIN READ WRITE`), without db-test's guard row; a COMMIT later in the
/// same string then commits. The invariant: "Nothing a #[db_test] in
/// transaction mode does is ever committed: not by a COMMIT hidden in a
/// multi-statement string". Failing loudly is expected; committing is not.
#[db_test]
#[should_panic(expected = "db-test:")]
async fn rollback_and_chain_then_commit_in_one_string_commits_nothing(ctx: TestContext) {
    let db = ctx.db();
    let email = unique("chain");
    let result = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ROLLBACK AND CHAIN; INSERT INTO users (email) VALUES ('{email}'); COMMIT"
    )))
    .execute(&db)
    .await;
    let leaked = committed_and_removed(&ctx, &email).await;
    assert_eq!(
        leaked, 0,
        "LEAK: a row of the test was committed into the shared working database \
         (the statement returned {result:?})"
    );
}

/// `DISCARD TEMP` would drop the commit guard's temporary tables; the server
/// refuses while the guard row's deferred check is pending. Nothing commits.
#[db_test]
#[should_panic(expected = "refusing to run `COMMIT`")]
async fn discard_temp_then_commit_in_one_string_commits_nothing(ctx: TestContext) {
    let db = ctx.db();
    let email = unique("discard");
    let result = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DISCARD TEMP; INSERT INTO users (email) VALUES ('{email}'); COMMIT"
    )))
    .execute(&db)
    .await;
    let leaked = committed_and_removed(&ctx, &email).await;
    assert_eq!(leaked, 0, "LEAK: committed ({result:?})");
    assert!(result.is_err(), "{result:?}");
    // The refused COMMIT fails the test when it ends.
}

// ---- statement counting ----------------------------------------------------

/// Written the common sqlx way (`impl Acquire`), called with `&Db`.
async fn insert_user<'a>(conn: impl Acquire<'a, Database = Postgres>, email: &str) {
    let mut conn = conn.acquire().await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ($1)")
        .bind(email)
        .execute(&mut *conn)
        .await
        .unwrap();
}

/// A connection handed out through sqlx's `Acquire` must be a bare
/// `PgConnection`, so db-test cannot see the statements sent on it: they run
/// in the test's transaction, but are not counted (the README says so).
#[db_test]
async fn statements_through_an_impl_acquire_function_run_but_are_not_counted(db: TestDb) {
    let app = db.db();
    db.assert_queries(0, insert_user(&app, "generic@example.com"))
        .await;
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 1);
}

/// Nested transactions: statements of the app transaction count; those on a
/// nested sqlx `Transaction` from the raw connection do not (documented).
#[db_test]
async fn assert_queries_with_nested_transactions(db: TestDb) {
    let app = db.db();
    db.assert_queries(3, async {
        sqlx::query("SELECT 'outside'").execute(&app).await.unwrap();
        let mut tx = app.begin().await.unwrap();
        sqlx::query("INSERT INTO users (email) VALUES ('n1@example.com')")
            .execute(&mut *tx)
            .await
            .unwrap();
        {
            let mut nested = Acquire::begin(&mut *tx).await.unwrap();
            sqlx::query("INSERT INTO users (email) VALUES ('n2@example.com')")
                .execute(&mut *nested)
                .await
                .unwrap();
            nested.rollback().await.unwrap();
        }
        sqlx::query("SELECT 'in tx'")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    })
    .await;
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 1);
}

// ---- an axum server on a real port in transaction mode ---------------------

async fn create(State(db): State<Db>, body: String) -> StatusCode {
    let mut tx = db.begin().await.unwrap();
    let r = sqlx::query("INSERT INTO users (email) VALUES ($1)")
        .bind(body.trim())
        .execute(&mut *tx)
        .await;
    match r {
        Ok(_) => {
            tx.commit().await.unwrap();
            StatusCode::CREATED
        }
        Err(e) if code(&e).as_deref() == Some("23505") => {
            tx.rollback().await.unwrap();
            StatusCode::CONFLICT
        }
        Err(e) => panic!("{e}"),
    }
}

async fn how_many(State(db): State<Db>) -> String {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&db)
        .await
        .unwrap();
    n.to_string()
}

async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[db_test(timeout = "40s")]
async fn an_axum_server_on_a_real_port_shares_the_test_transaction(ctx: TestContext, db: TestDb) {
    let router = Router::new()
        .route("/users", post(create))
        .route("/count", get(how_many))
        .with_state(db.db());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    ctx.spawn(async move { axum::serve(listener, router).await.unwrap() });
    let requests = (0..20).map(|i| {
        let body = format!("srv{}@example.com", i % 10);
        async move { http(addr, "POST", "/users", &body).await.0 }
    });
    let mut statuses = futures_util::future::join_all(requests).await;
    statuses.sort();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        http(addr, "GET", "/count", "").await,
        (200, "10".to_string())
    );
    let mut other = outside(&ctx).await;
    let committed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE email LIKE 'srv%@example.com'")
            .fetch_one(&mut other)
            .await
            .unwrap();
    assert_eq!(committed, 0);
}

// ===========================================================================
// 3. Timeouts
// ===========================================================================

#[db_test(flavor = "current_thread", start_paused = true, timeout = "1s")]
#[should_panic(expected = "timed out after 1s")]
async fn a_paused_test_times_out_inside_a_long_statement(db: TestDb) {
    sqlx::query("SELECT pg_sleep(3600)")
        .execute(&db)
        .await
        .unwrap();
}

/// Times out while its COPY waits for data that never comes.
#[db_test(timeout = "1s")]
#[should_panic(expected = "timed out after 1s")]
async fn a_test_times_out_inside_a_stalled_copy(db: TestDb) {
    let mut conn = db.acquire().await.unwrap();
    let mut copy = conn
        .copy_in_raw("COPY users (email) FROM STDIN")
        .await
        .unwrap();
    copy.send(b"stalled@example.com\n".as_slice())
        .await
        .unwrap();
    std::future::pending::<()>().await;
}

/// Times out while waiting on a row lock that "another test" holds for
/// longer than the test's timeout (but shorter than lock_timeout).
#[db_test(timeout = "1s")]
#[should_panic(expected = "timed out after 1s")]
async fn a_test_times_out_inside_a_row_lock_wait(ctx: TestContext) {
    let db = ctx.db();
    let email = unique("rowlock");
    let mut other = outside(&ctx).await;
    other.execute("BEGIN").await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ($1)")
        .bind(&email)
        .execute(&mut other)
        .await
        .unwrap();
    // A task of its own ends the other transaction later.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = other.execute("ROLLBACK").await;
        drop(other);
    });
    let _ = sqlx::query("INSERT INTO users (email) VALUES ($1)")
        .bind(&email)
        .execute(&db)
        .await;
    panic!("the insert should still have been waiting on the lock");
}

// ===========================================================================
// 4. After the test: child processes
// ===========================================================================

fn child(tests: &[&str]) -> Command {
    let mut cmd = children(tests);
    cmd.env("DB_TEST_ADVERSARIAL", "1");
    cmd
}

fn run(cmd: Command, limit: Duration) -> (Output, String) {
    run_until(cmd, limit)
}

// ---- session state that survives ROLLBACK ----------------------------------

#[derive(sqlx::Type, Debug, PartialEq)]
#[sqlx(type_name = "adv_mood", rename_all = "lowercase")]
enum Mood {
    Happy,
    Sad,
}

static STATE_PID: AtomicI32 = AtomicI32::new(0);

async fn use_an_enum(db: &Db) {
    sqlx::raw_sql(
        "CREATE TYPE adv_mood AS ENUM ('happy', 'sad'); CREATE TABLE adv_moods (m adv_mood)",
    )
    .execute(db)
    .await
    .unwrap();
    sqlx::query("INSERT INTO adv_moods (m) VALUES ($1), ($2)")
        .bind(Mood::Happy)
        .bind(Mood::Sad)
        .execute(db)
        .await
        .unwrap();
    let got: Vec<Mood> = sqlx::query_scalar("SELECT m FROM adv_moods ORDER BY m")
        .fetch_all(db)
        .await
        .unwrap();
    assert_eq!(got, [Mood::Happy, Mood::Sad]);
}

#[db_test]
async fn child_state_1_leaves_session_state(db: TestDb) {
    let app = db.db();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&app)
        .await
        .unwrap();
    STATE_PID.store(pid, Ordering::SeqCst);
    sqlx::query("INSERT INTO users (email) VALUES ('seq@example.com')")
        .execute(&app)
        .await
        .unwrap();
    use_an_enum(&app).await;
    sqlx::raw_sql(
        "LISTEN adv_channel; SET search_path TO public, pg_temp; \
         SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY; \
         SET statement_timeout = '1234ms'; CREATE TEMP TABLE adv_temp (x int)",
    )
    .execute(&app)
    .await
    .unwrap();
}

#[db_test]
async fn child_state_2_sees_a_fresh_session(db: TestDb) {
    let app = db.db();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&app)
        .await
        .unwrap();
    let before = STATE_PID.load(Ordering::SeqCst);
    if misbehave() {
        assert_eq!(pid, before, "inconclusive: not the same connection");
    }
    let mut problems = Vec::new();
    let show = async |sql: &str| -> String {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&app)
            .await
            .unwrap()
    };
    if show("SHOW search_path").await != "\"$user\", public" {
        problems.push("search_path survived".to_string());
    }
    if show("SHOW statement_timeout").await != "0" {
        problems.push("statement_timeout survived".to_string());
    }
    if show("SHOW transaction_read_only").await != "off" {
        problems.push("read-only transactions survived".to_string());
    }
    let channels: Vec<String> = sqlx::query_scalar("SELECT pg_listening_channels()")
        .fetch_all(&app)
        .await
        .unwrap();
    if !channels.is_empty() {
        problems.push(format!("LISTEN survived: {channels:?}"));
    }
    let temp: Option<String> = sqlx::query_scalar("SELECT to_regclass('pg_temp.adv_temp')::text")
        .fetch_one(&app)
        .await
        .unwrap();
    if temp.is_some() {
        problems.push("a temp table survived".to_string());
    }
    // The same enum again: sqlx's cached type OID of the last test's type
    // must not be used.
    use_an_enum(&app).await;
    // A fresh session has no sequence value yet.
    for f in ["lastval()", "currval('users_id_seq')"] {
        match sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("SELECT {f}")))
            .fetch_one(&app)
            .await
        {
            Ok(v) => problems.push(format!(
                "{f} = {v}: the last test's sequence state survived on the connection"
            )),
            Err(e) => assert_eq!(code(&e).as_deref(), Some("55000"), "{e}"),
        }
    }
    assert!(problems.is_empty(), "session state leaked: {problems:?}");
}

#[test]
fn session_state_of_one_test_does_not_reach_the_next() {
    let mut cmd = child(&[
        "child_state_1_leaves_session_state",
        "child_state_2_sees_a_fresh_session",
    ]);
    // One connection, so that the second test surely gets the first's.
    cmd.env("DB_TEST_POOL_SIZE", "1");
    let (out, text) = run(cmd, Duration::from_secs(120));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("2 passed"), "{text}");
}

// ---- a task that keeps the test's connection past its end -----------------

/// A guard parked past the end of the test (a background task, a static).
static PARKED: Mutex<Option<DbConnection>> = Mutex::new(None);

#[db_test]
async fn child_cut_1_parks_a_guard_past_the_test(db: TestDb) {
    if !misbehave() {
        return;
    }
    let app = db.db();
    let mut conn = app.acquire().await.unwrap();
    conn.execute(
        "INSERT INTO users (email) VALUES ('cut@example.com'); SELECT pg_advisory_lock(777001)",
    )
    .await
    .unwrap();
    *PARKED.lock().unwrap() = Some(conn);
}

/// Releases the parked guard, on the test thread, well after the first
/// test's teardown cut it off.
#[test]
fn child_cut_2_releases_the_guard() {
    db_test::runtime().block_on(async {
        let parked = PARKED.lock().unwrap().take();
        drop(parked);
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
}

#[db_test]
async fn child_cut_3_the_next_test_is_clean_and_counted(ctx: TestContext, db: TestDb) {
    let app = db.db();
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM users WHERE email = 'cut@example.com'"
        )
        .await,
        0
    );
    if misbehave() {
        // (Only in the child: run in-process, the parent's child may hold it.)
        let mut other = outside(&ctx).await;
        let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(777001)")
            .fetch_one(&mut other)
            .await
            .unwrap();
        assert!(free, "the cut-off test's advisory lock is still held");
    }
    // Statements on this test's guard are this test's.
    db.assert_queries(2, async {
        let mut conn = app.acquire().await.unwrap();
        conn.execute("SELECT 'guard of the next test'")
            .await
            .unwrap();
        drop(conn);
        sqlx::query("SELECT 'db of the next test'")
            .execute(&app)
            .await
            .unwrap();
    })
    .await;
}

#[test]
fn a_test_cut_off_from_its_connection_leaves_the_next_test_clean() {
    let (out, text) = run(
        child(&[
            "child_cut_1_parks_a_guard_past_the_test",
            "child_cut_2_releases_the_guard",
            "child_cut_3_the_next_test_is_clean_and_counted",
        ]),
        Duration::from_secs(120),
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("still held its connection"), "{text}");
    assert!(
        text.contains("test child_cut_3_the_next_test_is_clean_and_counted ... ok"),
        "{text}"
    );
    assert!(text.contains("2 passed; 1 failed"), "{text}");
}

// ---- an abandoned COPY must not corrupt the next test ----------------------

static COPY_PID: AtomicI32 = AtomicI32::new(0);

#[db_test]
async fn child_copy_1_abandons_a_copy(db: TestDb) {
    let app = db.db();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&app)
        .await
        .unwrap();
    COPY_PID.store(pid, Ordering::SeqCst);
    if !misbehave() {
        return;
    }
    {
        let mut conn = app.acquire().await.unwrap();
        let mut copy = conn
            .copy_in_raw("COPY users (email) FROM STDIN")
            .await
            .unwrap();
        copy.send(b"copied@example.com\n".as_slice()).await.unwrap();
    }
    // Whatever this gets, the test tolerates it.
    let _ = sqlx::query("SELECT 1").execute(&app).await;
}

#[db_test]
async fn child_copy_2_the_next_test_gets_right_answers(db: TestDb) {
    let app = db.db();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&app)
        .await
        .unwrap();
    let _ = (pid, COPY_PID.load(Ordering::SeqCst));
    for i in 0..5i64 {
        let got: i64 = sqlx::query_scalar("SELECT $1::int8 * 10")
            .bind(i)
            .fetch_one(&app)
            .await
            .unwrap();
        assert_eq!(got, i * 10);
    }
    let text: String = sqlx::query_scalar("SELECT 'right answer'")
        .fetch_one(&app)
        .await
        .unwrap();
    assert_eq!(text, "right answer");
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 0);
}

#[test]
fn an_abandoned_copy_does_not_reach_the_next_test() {
    let mut cmd = child(&[
        "child_copy_1_abandons_a_copy",
        "child_copy_2_the_next_test_gets_right_answers",
    ]);
    cmd.env("DB_TEST_POOL_SIZE", "1");
    let (_, text) = run(cmd, Duration::from_secs(120));
    // The test that abandoned its COPY fails, saying so; the next is clean.
    assert!(text.contains("was abandoned"), "{text}");
    assert!(
        text.contains("child_copy_2_the_next_test_gets_right_answers ... ok"),
        "{text}"
    );
    assert!(text.contains("1 passed; 1 failed"), "{text}");
}
