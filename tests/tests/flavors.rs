//! Which runtime each kind of test gets (`flavor`, `worker_threads`,
//! `start_paused`, and the defaults), and that nothing db-test owns depends
//! on a test's own runtime: connections, its timeouts, teardown.
//!
//! The parent tests at the end run `child_*` tests of this binary in a
//! child process, to see what happens after a test has ended. Run on their
//! own, the `child_*` tests are ordinary tests that pass.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use db_test::{Db, TestContext, TestDb, db_test};
use sqlx::PgPool;
use sqlx::pool::PoolConnection;
use tokio::runtime::{Handle, RuntimeFlavor};

mod common;
use common::{children, run_until};

fn flavor() -> RuntimeFlavor {
    Handle::current().runtime_flavor()
}

// ---- defaults ------------------------------------------------------------

#[db_test]
async fn db_tests_own_types_share_the_multi_thread_runtime(db: TestDb) {
    assert_eq!(flavor(), RuntimeFlavor::MultiThread);
    let thread = std::thread::current().name().map(str::to_owned);
    let worker = tokio::spawn(async { std::thread::current().name().map(str::to_owned) })
        .await
        .unwrap();
    assert_ne!(worker, thread);
    assert_eq!(worker.as_deref(), Some("db-test-worker"));
    let _ = db;
}

#[db_test]
async fn sqlx_types_get_sqlx_tests_current_thread_runtime(pool: PgPool) {
    assert_eq!(flavor(), RuntimeFlavor::CurrentThread);
    let _ = pool;
}

#[db_test]
async fn a_pool_connection_gets_a_current_thread_runtime(conn: PoolConnection<sqlx::Postgres>) {
    assert_eq!(flavor(), RuntimeFlavor::CurrentThread);
    drop(conn);
}

#[db_test]
async fn no_parameters_get_a_current_thread_runtime() {
    assert_eq!(flavor(), RuntimeFlavor::CurrentThread);
}

#[db_test]
async fn a_mix_with_db_tests_own_types_shares_the_runtime(pool: PgPool, ctx: TestContext) {
    assert_eq!(flavor(), RuntimeFlavor::MultiThread);
    let _ = (pool, ctx);
}

// ---- explicit flavors ----------------------------------------------------

#[db_test(flavor = "multi_thread")]
async fn a_sqlx_style_test_can_ask_for_the_shared_runtime(pool: PgPool) {
    assert_eq!(flavor(), RuntimeFlavor::MultiThread);
    sqlx::query("SELECT 1").execute(&pool).await.unwrap();
}

#[db_test(flavor = "multi_thread", worker_threads = 3)]
async fn worker_threads_give_a_multi_thread_runtime_of_its_own(db: TestDb) {
    assert_eq!(flavor(), RuntimeFlavor::MultiThread);
    assert_eq!(Handle::current().metrics().num_workers(), 3);
    let db2 = db.db();
    tokio::spawn(async move {
        sqlx::query("INSERT INTO users (email) VALUES ('w@example.com')")
            .execute(&db2)
            .await
            .unwrap();
    })
    .await
    .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[db_test(flavor = "current_thread")]
async fn a_current_thread_test_shares_its_thread_and_its_transaction(db: TestDb) {
    assert_eq!(flavor(), RuntimeFlavor::CurrentThread);
    thread_local!(static SEEN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
    let app = db.db();
    tokio::spawn(async move {
        sqlx::query("INSERT INTO users (email) VALUES ('t@example.com')")
            .execute(&app)
            .await
            .unwrap();
        SEEN.with(|s| s.set(s.get() + 1));
    })
    .await
    .unwrap();
    assert_eq!(SEEN.with(|s| s.get()), 1);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[db_test(flavor = "current_thread")]
async fn spawn_local_works_on_a_current_thread_test(db: Db) {
    let local = tokio::task::LocalSet::new();
    let rc = std::rc::Rc::new(7);
    let got = local
        .run_until(async move {
            tokio::task::spawn_local(async move {
                let n: i32 = sqlx::query_scalar("SELECT 7").fetch_one(&db).await.unwrap();
                n + *rc - 7
            })
            .await
            .unwrap()
        })
        .await;
    assert_eq!(got, 7);
}

/// `worker_threads` alone means a multi-thread runtime of the test's own,
/// whatever the parameters (`#[tokio::test]` requires the flavor with it).
#[db_test(worker_threads = 3)]
async fn worker_threads_alone_give_a_multi_thread_runtime(pool: PgPool) {
    assert_eq!(flavor(), RuntimeFlavor::MultiThread);
    assert_eq!(Handle::current().metrics().num_workers(), 3);
    sqlx::query("SELECT 1").execute(&pool).await.unwrap();
}

// ---- a paused clock ------------------------------------------------------

/// `start_paused = true` alone means a paused current-thread runtime, as in
/// `#[tokio::test(start_paused = true)]`, for db-test's types too.
#[db_test(start_paused = true)]
async fn start_paused_alone_pauses_a_current_thread_runtime(db: TestDb) {
    assert_eq!(flavor(), RuntimeFlavor::CurrentThread);
    let start = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(start.elapsed() >= Duration::from_secs(3600));
    tokio::time::advance(Duration::from_secs(60)).await;
    let n: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&db).await.unwrap();
    assert_eq!(n, 1);
}

#[db_test(flavor = "current_thread", start_paused = true)]
async fn start_paused_pauses_the_clock_and_queries_still_work(db: TestDb) {
    let start = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(start.elapsed() >= Duration::from_secs(3600));
    let n: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&db).await.unwrap();
    assert_eq!(n, 1);
}

/// db-test's checkout timeout and the test's timeout run on real time: a
/// paused, auto-advancing clock does not make them fire while a statement
/// of real duration runs.
#[db_test(flavor = "current_thread", start_paused = true, timeout = "20s")]
async fn db_tests_own_timeouts_ignore_a_paused_clock(db: TestDb) {
    db.set_checkout_timeout(Duration::from_secs(5));
    let holder = db.db();
    let held = tokio::spawn(async move {
        let mut conn = holder.acquire().await.unwrap();
        sqlx::query("SELECT pg_sleep(0.3)")
            .execute(&mut *conn)
            .await
            .unwrap();
    });
    tokio::task::yield_now().await;
    // Waits for the busy connection: in real time, not the paused clock's.
    let n: i32 = sqlx::query_scalar("SELECT 2").fetch_one(&db).await.unwrap();
    assert_eq!(n, 2);
    held.await.unwrap();
    sqlx::query("SELECT pg_sleep(0.3)")
        .execute(&db)
        .await
        .unwrap();
}

#[db_test(flavor = "current_thread", start_paused = true)]
async fn a_paused_clock_in_database_mode(pool: PgPool) {
    // The first connection was opened by db-test on its shared runtime: it
    // is idle, so this query does not wait on a timer of the paused clock.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

// ---- connections opened on a test's own runtime --------------------------

static OPENED: AtomicUsize = AtomicUsize::new(0);

macro_rules! many_connections {
    ($($name:ident),*) => {$(
        /// Opens several connections on its own (current-thread) runtime,
        /// which dies at its end; the next such test must not mind.
        #[db_test]
        async fn $name(pool: PgPool) {
            let a = pool.acquire().await.unwrap();
            let b = pool.acquire().await.unwrap();
            let mut c = pool.acquire().await.unwrap();
            sqlx::query("INSERT INTO users (email) VALUES ('many@example.com')")
                .execute(&mut *c)
                .await
                .unwrap();
            drop((a, b));
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(n, 1, "a database of its own, reset since the last test");
            OPENED.fetch_add(1, Ordering::Relaxed);
        }
    )*};
}
many_connections!(
    own_runtime_connections_1,
    own_runtime_connections_2,
    own_runtime_connections_3,
    own_runtime_connections_4,
    own_runtime_connections_5,
    own_runtime_connections_6
);

// ---- what happens after the test ----------------------------------------

/// Prints when dropped.
struct Announce(&'static str);

impl Drop for Announce {
    fn drop(&mut self) {
        println!("DROPPED {}", self.0);
    }
}

/// A task left running by a current-thread test is dropped with it.
#[db_test(flavor = "current_thread")]
async fn child_leaves_a_task_on_its_runtime(db: TestDb) {
    let announce = Announce("current_thread task");
    let app = db.db();
    tokio::spawn(async move {
        let _announce = announce;
        loop {
            let _ = sqlx::query("SELECT 1").execute(&app).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    println!("TEST BODY DONE");
}

/// A task started with `ctx.spawn` on the shared runtime is aborted with the test.
#[db_test]
async fn child_spawns_a_task_through_the_context(ctx: TestContext) {
    let announce = Announce("ctx.spawn task");
    let db = ctx.db();
    ctx.spawn(async move {
        let _announce = announce;
        loop {
            let _ = sqlx::query("SELECT 1").execute(&db).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    println!("TEST BODY DONE");
}

/// Keeps the process alive a little after the child test, so that a task
/// that was not stopped would show.
#[db_test]
async fn child_z_linger() {
    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(300)))
        .await
        .unwrap();
    println!("LINGER DONE");
}

fn run_children(tests: &[&str]) -> String {
    let (out, text) = run_until(children(tests), Duration::from_secs(120));
    assert!(out.status.success(), "child failed:\n{text}");
    text
}

/// Where `what` is first printed, relative to `marker`.
fn before(text: &str, what: &str, marker: &str) -> bool {
    match (text.find(what), text.find(marker)) {
        (Some(a), Some(b)) => a < b,
        _ => false,
    }
}

#[test]
fn tasks_of_a_current_thread_test_are_dropped_when_it_ends() {
    let text = run_children(&["child_leaves_a_task_on_its_runtime", "child_z_linger"]);
    assert!(text.contains("TEST BODY DONE"), "{text}");
    assert!(
        before(&text, "DROPPED current_thread task", "LINGER DONE"),
        "the task outlived its test:\n{text}"
    );
}

#[test]
fn tasks_spawned_through_the_context_are_aborted_when_the_test_ends() {
    let text = run_children(&["child_spawns_a_task_through_the_context", "child_z_linger"]);
    assert!(text.contains("TEST BODY DONE"), "{text}");
    assert!(
        before(&text, "DROPPED ctx.spawn task", "LINGER DONE"),
        "the task outlived its test:\n{text}"
    );
}

/// Run first by the parent below: the shared runtime is built on its thread.
#[db_test]
async fn child_output_a_first_test(db: TestDb) {
    sqlx::query("SELECT 1").execute(&db).await.unwrap();
}

/// Prints from a task it spawns, then fails (only in the parent's child).
#[db_test]
async fn child_output_b_spawns_and_fails(db: TestDb) {
    sqlx::query("SELECT 1").execute(&db).await.unwrap();
    if std::env::var("DB_TEST_OUTPUT_DEMO").is_err() {
        return;
    }
    tokio::spawn(async { println!("PRINTED BY A SPAWNED TASK") })
        .await
        .unwrap();
    let panicked = tokio::spawn(async { panic!("A SPAWNED TASK PANICKED") }).await;
    assert!(panicked.is_err());
    panic!("the test fails");
}

/// Prints from a blocking closure, then fails (only in the parent's child).
#[db_test]
async fn child_output_c_blocking_and_fails(db: TestDb) {
    sqlx::query("SELECT 1").execute(&db).await.unwrap();
    if std::env::var("DB_TEST_OUTPUT_DEMO").is_err() {
        return;
    }
    tokio::task::spawn_blocking(|| println!("PRINTED BY A BLOCKING CLOSURE"))
        .await
        .unwrap();
    panic!("the test fails");
}

/// The shared runtime's blocking threads are shared by every test too: one
/// started from a test's thread inherits that test's capture, and a later
/// test's `spawn_blocking` that reuses it printed into a buffer already
/// read. (The first test starts one: sqlx reads the migrations with
/// `spawn_blocking`.) `#[tokio::test]`, a runtime per test, shows it.
#[test]
fn what_a_blocking_closure_of_a_failing_test_prints_is_not_lost() {
    let text = failing_output_child("child_output_c_blocking_and_fails");
    assert!(text.contains("PRINTED BY A BLOCKING CLOSURE"), "{text}");
}

/// Runs the first test, then `failing` (which prints, then fails), as a
/// child with libtest's capture; checks that `failing` failed and returns
/// everything the child printed.
fn failing_output_child(failing: &str) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "child_output_a_first_test",
        failing,
        "--exact",
        "--test-threads=1",
    ])
    .env("DB_TEST_OUTPUT_DEMO", "1")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let (out, text) = run_until(cmd, Duration::from_secs(120));
    assert!(!out.status.success(), "the child test should fail:\n{text}");
    assert!(text.contains("the test fails"), "{text}");
    text
}

/// libtest captures a test's output on its thread, and a thread started
/// from there inherits the capture: the shared runtime's workers, started
/// from the first test's thread, wrote what every later test's tasks print
/// into that test's buffer, and it was lost (in every run, before the
/// runtime was built outside any capture). `#[tokio::test]` shows it.
///
/// Known gap: in one CI run of many (two nextest shards at once on two
/// cores) the spawned task's output was missing all the same, cause not
/// found; so the child runs up to three times, and the output must show in
/// one of them. Without the fix it shows in none.
#[test]
fn what_the_tasks_of_a_failing_test_print_is_not_lost() {
    let mut texts = Vec::new();
    for _ in 0..3 {
        let text = failing_output_child("child_output_b_spawns_and_fails");
        if text.contains("PRINTED BY A SPAWNED TASK") && text.contains("A SPAWNED TASK PANICKED") {
            return;
        }
        texts.push(text);
    }
    panic!(
        "a spawned task's output was lost in three runs:\n{}",
        texts.join("\n----\n")
    );
}

/// Pausing the clock of the shared multi-thread runtime is tokio's panic;
/// db-test adds how to get a runtime that can be paused.
#[db_test]
async fn child_pauses_the_shared_runtime(db: TestDb) {
    if std::env::var("DB_TEST_FLAVOR_DEMO").is_ok() {
        tokio::time::pause();
    }
    let _ = db;
}

#[test]
fn pausing_the_shared_runtime_says_how_to_get_a_current_thread_one() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_pauses_the_shared_runtime",
            "--exact",
            "--test-threads=1",
        ])
        .env("DB_TEST_FLAVOR_DEMO", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("flavor = \"current_thread\""), "{text}");
}
