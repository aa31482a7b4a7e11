//! A test file written the way real axum + sqlx services write theirs for
//! `#[sqlx::test]`, ported by renaming `sqlx::test` to `db_test` and
//! nothing else. What it relies on is what `#[sqlx::test]` gives every test,
//! and what a shared multi-thread runtime would break:
//!
//! - the service under test is started with `tokio::spawn`, and its
//!   handlers leave "sync markers" in a `thread_local::ThreadLocal`, which the
//!   test waits for on its own thread: the spawned tasks must run on the
//!   test's thread;
//! - the test `select!`s on the service's handle and a `timeout`;
//! - a timing test pauses tokio's clock;
//! - log capture through a thread-local `tracing` subscriber
//!   (`set_default`) that must see the logs of the tasks the test spawns;
//! - spawned tasks that never end (a `PgListener` loop) are dropped with the
//!   test;
//! - the pool is named through the project's own alias.
//!
//! The original lines were `#[sqlx::test(migrator = "MIGRATOR")]`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use db_test::db_test;
use sqlx::PgPool;
use thread_local::ThreadLocal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The project's name for its pool.
type DbPool = PgPool;

// ---- the suite's harness (tests/common/mod.rs in the original) ----------

/// Sync markers: the service marks, the test waits for the mark.
static MARKS: std::sync::LazyLock<ThreadLocal<RefCell<Vec<String>>>> =
    std::sync::LazyLock::new(ThreadLocal::new);

fn mark(what: &str) {
    MARKS.get_or_default().borrow_mut().push(what.to_string());
}

fn marked(what: &str) -> bool {
    MARKS
        .get()
        .is_some_and(|m| m.borrow().iter().any(|x| x == what))
}

/// Waits, on the test's thread, until the service marked `what`.
async fn wait_for_mark(what: &str) {
    while !marked(what) {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

struct Service {
    addr: SocketAddr,
    handle: JoinHandle<()>,
}

async fn create_user(State(pool): State<DbPool>, body: String) -> StatusCode {
    sqlx::query("INSERT INTO users (email) VALUES ($1)")
        .bind(body.trim())
        .execute(&pool)
        .await
        .unwrap();
    tracing::info!(email = body.trim(), "user created");
    mark("user-created");
    StatusCode::CREATED
}

async fn count_users(State(pool): State<DbPool>) -> String {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    n.to_string()
}

async fn spawn_service(pool: DbPool) -> Service {
    let app = Router::new()
        .route("/users", post(create_user))
        .route("/users/count", get(count_users))
        .with_state(pool);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = tokio::spawn(async move {
        mark("service-started");
        axum::serve(listener, app).await.unwrap();
    });
    Service { addr, handle }
}

/// A bare HTTP/1.1 request; returns the status code and the body.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
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

/// A `tracing` writer into a buffer the test can read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

// ---- the tests -----------------------------------------------------------

#[db_test(migrator = "MIGRATOR")]
async fn the_service_marks_what_the_test_waits_for(pool: DbPool) {
    let mut service = spawn_service(pool.clone()).await;
    wait_for_mark("service-started").await;

    let (status, _) = http(service.addr, "POST", "/users", "ada@example.com").await;
    assert_eq!(status, 201);
    tokio::select! {
        res = &mut service.handle => panic!("the service stopped: {res:?}"),
        waited = tokio::time::timeout(Duration::from_secs(10), wait_for_mark("user-created")) => {
            waited.expect("the service's mark never reached the test's thread");
        }
    }
    let (status, body) = http(service.addr, "GET", "/users/count", "").await;
    assert_eq!((status, body.as_str()), (200, "1"));
}

#[db_test(migrator = "MIGRATOR")]
async fn spawned_tasks_run_on_the_test_thread(pool: DbPool) {
    let test_thread = std::thread::current().id();
    let task_thread = tokio::spawn(async move {
        sqlx::query("SELECT 1").execute(&pool).await.unwrap();
        std::thread::current().id()
    })
    .await
    .unwrap();
    assert_eq!(task_thread, test_thread);
}

#[db_test(migrator = "MIGRATOR")]
async fn the_logs_of_spawned_tasks_are_captured(pool: DbPool) {
    let (logs, _guard) = capture_logs();
    let service = spawn_service(pool).await;
    let (status, _) = http(service.addr, "POST", "/users", "grace@example.com").await;
    assert_eq!(status, 201);
    assert!(
        logs.text().contains("user created"),
        "captured: {:?}",
        logs.text()
    );
}

#[db_test(migrator = "MIGRATOR")]
async fn a_retry_backoff_is_timed_with_a_paused_clock(pool: DbPool) {
    sqlx::query("INSERT INTO users (email) VALUES ('timed@example.com')")
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::pause();
    let start = tokio::time::Instant::now();
    let mut delay = Duration::from_secs(1);
    for _ in 0..5 {
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    // 1 + 2 + 4 + 8 + 16 s of tokio time, in no real time at all.
    assert_eq!(start.elapsed().as_secs(), 31);
}

#[db_test(migrator = "MIGRATOR")]
async fn a_listener_loop_is_dropped_with_the_test(pool: DbPool) {
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen("events").await.unwrap();
    // Never ends: the test's runtime drops it, as under #[sqlx::test].
    tokio::spawn(async move {
        while let Ok(n) = listener.recv().await {
            mark(n.payload());
        }
    });
    sqlx::query("SELECT pg_notify('events', 'hello')")
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), wait_for_mark("hello"))
        .await
        .unwrap();
}

#[db_test(migrator = "MIGRATOR")]
async fn the_alias_gets_a_database_that_commits(pool: DbPool) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('committed@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Seen from another connection: really committed, in a database of its own.
    let mut other = pool.acquire().await.unwrap();
    let mut check = pool.acquire().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut *check)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert!(name.starts_with("dbtest_"), "{name}");
}
