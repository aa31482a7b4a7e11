//! Framework events go through `tracing`: server start, template build and
//! pool creation; nothing is printed when all is well.
//!
//! `child_traced` installs a subscriber (when DB_TEST_TRACE_CHILD is set)
//! before db-test starts, then runs a test on a fresh embedded server with a
//! fresh migration, so every start-up event happens in that process.

use std::borrow::Cow;
use std::process::{Command, Stdio};
use std::sync::LazyLock;

use db_test::{TestDb, db_test};
use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

static FRESH: LazyLock<Migrator> = LazyLock::new(|| {
    let token = std::env::var("DB_TEST_TRACE_CHILD").unwrap_or_else(|_| "default".into());
    Migrator::with_migrations(vec![Migration::new(
        1,
        Cow::Borrowed("traced"),
        MigrationType::Simple,
        sqlx::AssertSqlSafe(format!(
            "CREATE TABLE traced (token TEXT DEFAULT '{token}')"
        ))
        .into_sql_str(),
        false,
    )])
});

#[db_test(migrator = "FRESH")]
async fn traced_probe(db: TestDb) {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM traced")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn child_traced() {
    if std::env::var("DB_TEST_TRACE_CHILD").is_ok() {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(std::io::stdout)
            .with_ansi(false)
            .init();
    }
    traced_probe();
}

fn run_child(trace: bool, data_dir: &std::path::Path) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["child_traced", "--exact", "--nocapture", "--test-threads=1"])
        .env_remove("DATABASE_URL")
        .env("DB_TEST_DATA_DIR", data_dir)
        .env("DB_TEST_PG_IDLE_SECS", "2")
        .env_remove("DB_TEST_TRACE_CHILD")
        .stdin(Stdio::null());
    if trace {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        cmd.env("DB_TEST_TRACE_CHILD", format!("t{nanos}"));
    }
    let out = cmd.output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    all
}

#[test]
fn framework_events_go_through_tracing_and_nothing_is_printed_when_all_is_well() {
    let dir = std::env::temp_dir().join(format!("db-test-trace-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let traced = run_child(true, &dir);
    assert!(
        traced.contains("db-test: embedded PostgreSQL started"),
        "{traced}"
    );
    assert!(traced.contains("db-test: template built"), "{traced}");
    assert!(traced.contains("db-test: pool ready"), "{traced}");
    // Without a subscriber, a passing run prints nothing of db-test's.
    let quiet = run_child(false, &dir);
    assert!(!quiet.contains("db-test"), "{quiet}");

    // Stop the private server (it also stops itself after 2 idle seconds).
    let pid_file = std::fs::read_dir(&dir)
        .ok()
        .and_then(|mut d| d.find_map(|e| e.ok().map(|e| e.path().join("data/postmaster.pid"))));
    if let Some(pid) = pid_file.and_then(|f| std::fs::read_to_string(f).ok()) {
        let _ = Command::new("kill")
            .args(["-INT", pid.lines().next().unwrap_or("").trim()])
            .status();
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a test's thread-local subscriber collects.
#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// sqlx logs each statement of a test's connections (DEBUG, target
/// `sqlx::query`), as under `#[sqlx::test]`: suites that capture logs see
/// them.
#[db_test]
async fn sqlx_logs_a_tests_statements(pool: sqlx::PgPool) {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    sqlx::query("SELECT 'dbt_logged_marker'")
        .execute(&pool)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(text.contains("dbt_logged_marker"), "{text}");
}
