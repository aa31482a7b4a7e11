//! Behaviour across processes: the embedded
//! server's cold start and reuse, wrong `DATABASE_URL`s, and a test process
//! killed mid-transaction.
//!
//! The parent tests run this same test binary again as child processes,
//! each running one of the `child_*` tests below. Run on their own, the
//! `child_*` tests are ordinary tests that pass.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use db_test::{TestContext, TestDb, db_test};
use sqlx::{Connection, PgConnection};

/// A plain query; prints which server instance answered.
#[db_test]
async fn child_probe(db: TestDb) {
    let started: String = sqlx::query_scalar("SELECT pg_postmaster_start_time()::text")
        .fetch_one(&db)
        .await
        .unwrap();
    println!("SERVER_STARTED {started}");
}

/// Inserts a marked row and waits to be killed.
#[db_test]
async fn child_hold(db: TestDb) {
    if let Ok(token) = std::env::var("DB_TEST_HOLD_TOKEN") {
        sqlx::query("INSERT INTO users (email) VALUES ($1)")
            .bind(&token)
            .execute(&db)
            .await
            .unwrap();
        println!("HOLDING {token}");
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(
        n,
        if std::env::var("DB_TEST_HOLD_TOKEN").is_ok() {
            1
        } else {
            0
        }
    );
}

/// The same in a database of its own.
#[db_test(isolation = "database")]
async fn child_hold_database(ctx: TestContext) {
    if std::env::var("DB_TEST_HOLD_TOKEN").is_ok() {
        println!("HOLDING_DB {}", ctx.database_name());
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    assert!(ctx.is_database_mode());
}

macro_rules! child_hold_conn {
    ($($name:ident),*) => {$(
        /// Holds its connection for a moment (the pool-exhaustion children).
        #[db_test]
        async fn $name(db: TestDb) {
            sqlx::query("SELECT pg_sleep(0.4)").execute(&db).await.unwrap();
        }
    )*};
}
child_hold_conn!(child_hold_conn_1, child_hold_conn_2, child_hold_conn_3);

/// Fails on purpose when DB_TEST_KEEP_FAILED_DEMO is set.
#[db_test(isolation = "database")]
async fn child_fails_in_its_database(pool: sqlx::PgPool) {
    sqlx::query("INSERT INTO users (email) VALUES ('kept@example.com')")
        .execute(&pool)
        .await
        .unwrap();
    assert!(
        std::env::var("DB_TEST_KEEP_FAILED_DEMO").is_err(),
        "failing on purpose"
    );
}

/// Fails on purpose when DB_TEST_FAIL_DEMO is set, after a failed statement.
#[db_test]
async fn child_fails_after_some_statements(db: TestDb) {
    sqlx::query("INSERT INTO users (email) VALUES ('dup@example.com')")
        .execute(&db)
        .await
        .unwrap();
    let dup = sqlx::query("INSERT INTO users (email) VALUES ('dup@example.com')")
        .execute(&db)
        .await;
    assert!(dup.is_err());
    assert!(
        std::env::var("DB_TEST_FAIL_DEMO").is_err(),
        "failing on purpose"
    );
}

fn child(test: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env_remove("DB_TEST_HOLD_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Waits for a child, killing it if it hangs.
fn wait(mut c: Child, limit: Duration) -> Output {
    let t0 = Instant::now();
    loop {
        if c.try_wait().unwrap().is_some() {
            return c.wait_with_output().unwrap();
        }
        if t0.elapsed() > limit {
            let _ = c.kill();
            let out = c.wait_with_output().unwrap();
            panic!(
                "child hung for {limit:?}:\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a child to its end from an async test, without blocking the runtime.
async fn run_to_end(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || wait(cmd.spawn().unwrap(), Duration::from_secs(60)))
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The rest of the first line holding `marker` (libtest may print
/// "test name ... " before it on the same line).
fn after(text: &str, marker: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.find(marker).map(|i| l[i..].to_string()))
}

/// Reads a child's stdout, without blocking the runtime, until a line holds
/// `marker`; returns that line from the marker on (see [`after`]).
async fn wait_for_marker(c: &mut Child, marker: &'static str) -> Option<String> {
    let stdout = c.stdout.take().unwrap();
    tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| after(&l, marker))
    })
    .await
    .unwrap()
}

fn unique_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t{}x{nanos}", std::process::id())
}

#[test]
fn embedded_server_cold_start_reuse_stale_recovery_and_idle_stop() {
    let dir = std::env::temp_dir().join(format!("db-test-cold-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = || {
        let t0 = Instant::now();
        let c = child("child_probe")
            .env_remove("DATABASE_URL")
            .env("DB_TEST_DATA_DIR", &dir)
            .env("DB_TEST_PG_IDLE_SECS", "3")
            .current_dir(dir.parent().unwrap())
            .spawn()
            .unwrap();
        let out = wait(c, Duration::from_secs(120));
        let all = text(&out);
        assert!(out.status.success(), "child failed:\n{all}");
        let started = after(&all, "SERVER_STARTED").expect("probe printed");
        (started, t0.elapsed())
    };
    let (cold, cold_time) = run();
    let (warm, warm_time) = run();
    eprintln!("embedded server: cold start + first test {cold_time:?}, reuse {warm_time:?}");
    assert_eq!(cold, warm, "the second process reuses the running server");

    // A server killed outright leaves a stale postmaster.pid and socket lock
    // behind; the next process recovers and starts it again.
    let data = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("data"))
        .find(|p| p.exists())
        .unwrap();
    let pid = std::fs::read_to_string(data.join("postmaster.pid")).unwrap();
    let pid = pid.lines().next().unwrap().trim().to_string();
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
    let t0 = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && t0.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        data.join("postmaster.pid").exists(),
        "the killed server left its pid file"
    );
    let (restarted, _) = run();
    assert_ne!(
        restarted, warm,
        "a new server was started after the stale one"
    );

    // Once no test process uses it, the server stops by itself after
    // DB_TEST_PG_IDLE_SECS (3 s here).
    let data = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("data"))
        .find(|p| p.exists())
        .unwrap();
    let t0 = Instant::now();
    while data.join("postmaster.pid").exists() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let stopped = !data.join("postmaster.pid").exists();
    if !stopped {
        // Do not leave it running, then fail.
        let pid = std::fs::read_to_string(data.join("postmaster.pid")).unwrap();
        let _ = Command::new("kill")
            .args(["-INT", pid.lines().next().unwrap().trim()])
            .status();
    }
    assert!(stopped, "the idle embedded server did not stop by itself");
    eprintln!(
        "embedded server: stopped itself {:?} after the last test process",
        t0.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `DATABASE_URL` from a `.env` file, written the ways such files are
/// (spaces around `=`, quotes, a comment after the value), read as sqlx
/// reads it: here a MySQL URL, which a PostgreSQL test names in its error.
#[test]
fn database_url_is_read_from_a_dot_env_file() {
    let dir = std::env::temp_dir().join(format!("db-test-dotenv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(".env"),
        "# local settings\nexport OTHER=1\nDATABASE_URL = \"mysql://root:hunter2secret@127.0.0.1:1/dotenv\" # local\n",
    )
    .unwrap();
    let out = wait(
        child("child_probe")
            .current_dir(&dir)
            .env_remove("DATABASE_URL")
            .env_remove("DB_TEST_POSTGRES_URL")
            .spawn()
            .unwrap(),
        Duration::from_secs(60),
    );
    let all = text(&out);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("DATABASE_URL=mysql://root:***@127.0.0.1:1/dotenv is a MySQL/MariaDB URL"),
        "{all}"
    );
}

/// A `DB_TEST_*` value db-test cannot read fails the tests, naming the
/// variable, instead of being replaced by the default.
#[test]
fn settings_db_test_cannot_read_are_refused() {
    for (name, value) in [
        ("DB_TEST_OUTDATED_AFTER", "never"),
        ("DB_TEST_TIMEOUT", "abc"),
        ("DB_TEST_POOL_SIZE", "0"),
        ("DB_TEST_KEEP_FAILED", "maybe"),
    ] {
        let out = wait(
            child("child_probe").env(name, value).spawn().unwrap(),
            Duration::from_secs(60),
        );
        let all = text(&out);
        assert!(!out.status.success(), "{name}={value} must fail:\n{all}");
        assert!(
            all.contains(&format!(
                "db-test: {name}=\"{value}\" is not a value db-test can use"
            )),
            "{name}={value}:\n{all}"
        );
    }
}

#[db_test]
async fn wrong_database_urls_fail_fast_with_a_clear_message(ctx: TestContext) {
    let opts = ctx.connect_options();
    // A URL to the server this suite uses, for the cases that need a live one.
    let live = match opts.get_socket() {
        Some(socket) => format!("?host={}&port={}", socket.display(), opts.get_port()),
        None => format!("{}:{}", opts.get_host(), opts.get_port()),
    };
    let on_live = |user: &str, db: &str| match opts.get_socket() {
        Some(_) => format!("postgres://{user}:hunter2secret@localhost/{db}{live}"),
        None => format!("postgres://{user}:hunter2secret@{live}/{db}"),
    };
    let cases = [
        (
            "postgres://u:hunter2secret@no-such-host.invalid:5432/db".to_string(),
            "host and port",
        ),
        (
            "postgres://u:hunter2secret@127.0.0.1:1/db".to_string(),
            "host and port",
        ),
        (
            on_live("db_test_no_such_role", "postgres"),
            "user name and password",
        ),
        (
            on_live("postgres", "db_test_no_such_database"),
            "must exist",
        ),
        (
            "mysql://root:hunter2secret@127.0.0.1:3306/test".to_string(),
            "is a MySQL/MariaDB URL, but this test runs on PostgreSQL",
        ),
        // A session in template1 would block every CREATE DATABASE.
        (
            on_live("postgres", "template1"),
            "names the database template1",
        ),
        // libpq's key=value form: not a URL, and its password not shown.
        (
            "host=127.0.0.1 user=postgres password=hunter2secret dbname=postgres".to_string(),
            "not a URL db-test knows",
        ),
    ];
    let children: Vec<(String, &str, Child)> = cases
        .into_iter()
        .map(|(url, hint)| {
            let c = child("child_probe")
                .env("DATABASE_URL", &url)
                .env_remove("DB_TEST_POSTGRES_URL")
                .env("DB_TEST_CONNECT_TIMEOUT", "5s")
                .spawn()
                .unwrap();
            (url, hint, c)
        })
        .collect();
    for (url, hint, c) in children {
        let out = tokio::task::spawn_blocking(move || wait(c, Duration::from_secs(60)))
            .await
            .unwrap();
        let all = text(&out);
        assert!(!out.status.success(), "{url} must fail:\n{all}");
        assert!(
            all.contains("db-test:"),
            "{url}: no db-test message:\n{all}"
        );
        assert!(all.contains(hint), "{url}: expected hint {hint:?}:\n{all}");
        assert!(
            !all.contains("hunter2secret"),
            "{url}: password leaked:\n{all}"
        );
        assert!(all.contains("***"), "{url}: redacted URL not named:\n{all}");
    }
}

#[db_test]
async fn killed_test_process_leaves_nothing_behind(ctx: TestContext) {
    let token = format!("{}@killed.example.com", unique_token());
    // Kill a process in the middle of its transaction.
    let mut c = child("child_hold")
        .env("DB_TEST_HOLD_TOKEN", &token)
        .spawn()
        .unwrap();
    let line = wait_for_marker(&mut c, "HOLDING").await;
    assert!(line.is_some(), "child did not reach its transaction");
    c.kill().unwrap();
    c.wait().unwrap();

    // A database-mode test killed mid-run leaves its database behind...
    let mut c = child("child_hold_database")
        .env("DB_TEST_HOLD_TOKEN", "1")
        .spawn()
        .unwrap();
    let killed_db = wait_for_marker(&mut c, "HOLDING_DB ")
        .await
        .map(|rest| rest["HOLDING_DB ".len()..].to_string())
        .expect("child reached its database");
    c.kill().unwrap();
    c.wait().unwrap();

    let mut conn = sqlx::PgConnection::connect_with(&ctx.connect_options())
        .await
        .unwrap();
    let leaked: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email = $1")
        .bind(&token)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(leaked, 0, "the killed transaction's row must be gone");

    // ...and the next run removes it, and works (no stale lock).
    let out = run_to_end(child("child_hold_database")).await;
    assert!(out.status.success(), "next run failed:\n{}", text(&out));
    let mut still_there = true;
    for _ in 0..100 {
        still_there =
            sqlx::query_scalar("SELECT exists(SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&killed_db)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        if !still_there {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !still_there,
        "leftover database {killed_db} was not removed"
    );
    let out = run_to_end(child("child_hold")).await;
    assert!(out.status.success(), "next run failed:\n{}", text(&out));
}

#[test]
fn an_exhausted_pool_makes_tests_wait_then_names_the_setting() {
    let run = |acquire_timeout: &str| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["child_hold_conn_", "--nocapture", "--test-threads=3"])
            .env("DB_TEST_POOL_SIZE", "1")
            .env("DB_TEST_ACQUIRE_TIMEOUT", acquire_timeout)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        wait(cmd.spawn().unwrap(), Duration::from_secs(60))
    };
    // Three tests, one connection: with time to wait, they take turns.
    let out = run("20s");
    assert!(
        out.status.success(),
        "tests should wait their turn:\n{}",
        text(&out)
    );
    // Without it, the error says the pool is exhausted and what to raise.
    let out = run("100ms");
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("is exhausted"), "{all}");
    assert!(
        all.contains("DB_TEST_POOL_SIZE") && all.contains("DB_TEST_ACQUIRE_TIMEOUT"),
        "{all}"
    );
}

#[db_test]
async fn a_failed_database_test_can_keep_its_database(ctx: TestContext) {
    let mut cmd = child("child_fails_in_its_database");
    cmd.env("DB_TEST_KEEP_FAILED", "1")
        .env("DB_TEST_KEEP_FAILED_DEMO", "1");
    let out = run_to_end(cmd).await;
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    let kept = after(&all, "kept the database of failed test")
        .and_then(|l| {
            l.split("): ")
                .nth(1)
                .map(|r| r.split(' ').next().unwrap().to_string())
        })
        .unwrap_or_else(|| panic!("no kept database named:\n{all}"));
    assert!(kept.contains("_k"), "{kept}");
    // It is there for inspection, with the failed test's row in it.
    let mut conn = PgConnection::connect_with(&ctx.connect_options().database(&kept))
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1);
    conn.close().await.unwrap();
    // Clean up: it is a database db-test made.
    let mut admin = PgConnection::connect_with(&ctx.connect_options())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{kept}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

#[test]
fn a_failing_test_shows_its_last_statements() {
    let c = child("child_fails_after_some_statements")
        .env("DB_TEST_FAIL_DEMO", "1")
        .spawn()
        .unwrap();
    let out = wait(c, Duration::from_secs(60));
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("failing on purpose"),
        "the test's own panic comes first:\n{all}"
    );
    assert!(all.contains("last 2 statement(s) of test"), "{all}");
    assert!(
        all.contains("-> error: error returned from database: duplicate key value"),
        "{all}"
    );
    // A passing test prints nothing of the kind.
    let out = wait(
        child("child_fails_after_some_statements").spawn().unwrap(),
        Duration::from_secs(60),
    );
    assert!(out.status.success());
    assert!(!text(&out).contains("statement(s) of test"));
}
