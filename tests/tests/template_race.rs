//! Two processes racing to build the same template: it is built once.
//!
//! The parent test runs this test binary twice at once, each running
//! `child_race` with a fresh migration (so the template is new). Run on its
//! own, `child_race` is an ordinary test that passes. This file is left out
//! of the sharded run: its fresh migration replaces the template of the
//! same source on purpose.

use std::borrow::Cow;
use std::process::{Child, Command, Output, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use db_test::{TestDb, db_test};
use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// Changes (and so forces a template rebuild) when DB_TEST_RACE_TOKEN does.
static RACE: LazyLock<Migrator> = LazyLock::new(|| {
    let token = std::env::var("DB_TEST_RACE_TOKEN").unwrap_or_else(|_| "default".into());
    let sql = format!(
        "CREATE TABLE race_marker (token TEXT NOT NULL, built_by INT NOT NULL DEFAULT pg_backend_pid(), \
         built_at TEXT NOT NULL DEFAULT clock_timestamp()::text); \
         SELECT pg_sleep(0.3); \
         INSERT INTO race_marker (token) VALUES ('{token}');"
    );
    Migrator::with_migrations(vec![Migration::new(
        1,
        Cow::Borrowed("race marker"),
        MigrationType::Simple,
        sqlx::AssertSqlSafe(sql).into_sql_str(),
        false,
    )])
});

/// Reads the marker its template's build left.
#[db_test(migrator = "RACE")]
async fn child_race(db: TestDb) {
    let (token, by, at): (String, i32, String) =
        sqlx::query_as("SELECT token, built_by, built_at FROM race_marker")
            .fetch_one(&db)
            .await
            .unwrap();
    let expected = std::env::var("DB_TEST_RACE_TOKEN").unwrap_or_else(|_| "default".into());
    assert_eq!(token, expected);
    let database: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&db)
        .await
        .unwrap();
    println!("RACE_MARKER {token} {by} {at} {database}");
}

fn wait(mut c: Child, limit: Duration) -> Output {
    let t0 = Instant::now();
    while c.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = c.kill();
            panic!("child hung for {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    c.wait_with_output().unwrap()
}

/// Starts `child_race` with this migration token.
fn spawn_race_child(token: &str, outdated_after: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["child_race", "--exact", "--nocapture", "--test-threads=1"])
        .env("DB_TEST_RACE_TOKEN", token)
        .env("DB_TEST_OUTDATED_AFTER", outdated_after)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a race child and returns its marker line.
fn race_marker(child: Child) -> String {
    let out = wait(child, Duration::from_secs(120));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed:\n{all}");
    all.lines()
        .find_map(|l| l.find("RACE_MARKER").map(|i| l[i..].to_string()))
        .expect("marker printed")
}

#[test]
fn template_is_built_once_by_two_concurrent_processes() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let token = format!("t{}x{nanos}", std::process::id());
    let children: Vec<Child> = (0..2).map(|_| spawn_race_child(&token, "10m")).collect();
    let markers: Vec<String> = children.into_iter().map(race_marker).collect();
    // Both working databases come from one build: same backend, same instant.
    assert_eq!(markers[0], markers[1]);
    assert!(markers[0].contains(&token));
}

/// The working database a race child ran in (the marker's last word).
fn run_race_child(token: &str, outdated_after: &str) -> String {
    let marker = race_marker(spawn_race_child(token, outdated_after));
    marker.split(' ').next_back().unwrap().to_string()
}

/// When the migrations change, the databases of the old ones are dropped
/// once they are older than DB_TEST_OUTDATED_AFTER and unused.
#[db_test]
async fn outdated_templates_are_dropped(ctx: db_test::TestContext) {
    use sqlx::Connection;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let first = tokio::task::spawn_blocking(move || run_race_child(&format!("old{nanos}"), "1h"))
        .await
        .unwrap();
    // Build times are kept in whole seconds.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let second = tokio::task::spawn_blocking(move || run_race_child(&format!("new{nanos}"), "1s"))
        .await
        .unwrap();
    assert_ne!(first, second);
    let mut conn = sqlx::PgConnection::connect_with(&ctx.connect_options())
        .await
        .unwrap();
    let exists = |name: String| {
        sqlx::query_scalar::<_, bool>("SELECT exists(SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
    };
    assert!(
        !exists(first.clone()).fetch_one(&mut conn).await.unwrap(),
        "{first} should be gone"
    );
    assert!(
        !exists(first.replace("_w", "_t"))
            .fetch_one(&mut conn)
            .await
            .unwrap()
    );
    assert!(
        exists(second.clone()).fetch_one(&mut conn).await.unwrap(),
        "{second} should stay"
    );
}
