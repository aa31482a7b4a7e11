//! Templates of outdated migrations are swept per hash, never while in use;
//! a template that vanished anyway is built again; and two checkouts whose
//! migrations directories end alike keep templates of their own.
//!
//! The parent tests run this test binary again as child processes, each
//! running some of the `child_*` tests below (in name order, one thread).
//! Run on their own, the `child_*` tests are ordinary tests that pass.

mod common;

use std::borrow::Cow;
use std::path::Path;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use common::*;
use db_test::{TestContext, TestDb, db_test};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Connection, PgConnection, SqlSafeStr};

/// One migration creating `table`, whose checksum (so the template's hash)
/// changes with the environment variable `token_var`.
fn tokened(token_var: &str, table: &str) -> Migrator {
    let token = std::env::var(token_var).unwrap_or_else(|_| "default".into());
    let sql = format!("-- {token}\nCREATE TABLE {table} (id BIGSERIAL PRIMARY KEY);");
    Migrator::with_migrations(vec![Migration::new(
        1,
        Cow::Borrowed("marker"),
        MigrationType::Simple,
        sqlx::AssertSqlSafe(sql).into_sql_str(),
        false,
    )])
}

static IN_USE: LazyLock<Migrator> = LazyLock::new(|| tokened("DB_TEST_IN_USE_TOKEN", "in_use"));
static VANISH: LazyLock<Migrator> = LazyLock::new(|| tokened("DB_TEST_VANISH_TOKEN", "vanish"));

async fn current_database(db: &TestDb) -> String {
    sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(db)
        .await
        .unwrap()
}

/// Prints its working database, then (with DB_TEST_GO_FILE) waits, on its
/// connection to it, until that file exists.
#[db_test(migrator = "IN_USE")]
async fn child_in_use_1_wait(db: TestDb) {
    println!("IN_USE_WORKING {}", current_database(&db).await);
    if let Ok(go) = std::env::var("DB_TEST_GO_FILE") {
        let t0 = Instant::now();
        while !Path::new(&go).exists() && t0.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Then a database-mode test clones the template of the same hash.
#[db_test(migrator = "IN_USE", isolation = "database")]
async fn child_in_use_2_clone(pool: sqlx::PgPool) {
    sqlx::query("INSERT INTO in_use DEFAULT VALUES")
        .execute(&pool)
        .await
        .unwrap();
}

/// With DB_TEST_VANISH_TOKEN set, drops its own template behind the
/// engine's back.
#[db_test(migrator = "VANISH")]
async fn child_vanish_1_drop(ctx: TestContext) {
    if std::env::var("DB_TEST_VANISH_TOKEN").is_err() {
        return;
    }
    let template = format!(
        "{}_t",
        ctx.database_name().strip_suffix("_w").expect("working db")
    );
    let mut conn = PgConnection::connect_with(&ctx.connect_options())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE \"{template}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    println!("DROPPED {template}");
}

/// Then a database-mode test needs a clone of it.
#[db_test(migrator = "VANISH", isolation = "database")]
async fn child_vanish_2_clone(pool: sqlx::PgPool) {
    sqlx::query("INSERT INTO vanish DEFAULT VALUES")
        .execute(&pool)
        .await
        .unwrap();
}

#[db_test(migrations = "tests/checkouts/a/server/migrations")]
async fn child_checkout_a(db: TestDb) {
    println!("CHECKOUT_WORKING {}", current_database(&db).await);
}

#[db_test(migrations = "tests/checkouts/b/server/migrations")]
async fn child_checkout_b(db: TestDb) {
    println!("CHECKOUT_WORKING {}", current_database(&db).await);
}

/// The template of a working database `<prefix>_<hash>_w`.
fn template_of(working: &str) -> String {
    format!(
        "{}_t",
        working.strip_suffix("_w").expect("a working database")
    )
}

/// Waits until the server has no connection left from process `pid`: its
/// advisory locks are released then.
fn wait_backends_gone(pid: u32) {
    let left = with_server(async |conn| {
        for _ in 0..600 {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                 OR starts_with(application_name, $1 || ' ')",
            )
            .bind(format!("db-test {pid}"))
            .fetch_one(&mut *conn)
            .await
            .unwrap();
            if n == 0 {
                return 0;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        -1
    });
    assert_eq!(left, 0, "process {pid}'s connections stayed open");
}

#[test]
fn a_template_in_use_is_not_swept_as_outdated() {
    let go = std::env::temp_dir().join(unique_token("db-test-go-"));
    let old = unique_token("old");
    // A process of the old migrations holds its working database...
    let mut a = child("child_in_use_", 1);
    a.env("DB_TEST_IN_USE_TOKEN", &old)
        .env("DB_TEST_GO_FILE", &go)
        .env("DB_TEST_OUTDATED_AFTER", "1h");
    let mut a = a.spawn().unwrap();
    let a_pid = a.id();
    let working = wait_for_marker(&mut a, "IN_USE_WORKING ").expect("first child started");
    // ...when, once the old template is past its grace (whole seconds),
    // another process builds newer migrations of the same source and sweeps.
    std::thread::sleep(Duration::from_millis(2100));
    let mut b = child("child_in_use_1_wait", 1);
    b.env("DB_TEST_IN_USE_TOKEN", unique_token("new"))
        .env("DB_TEST_OUTDATED_AFTER", "1s");
    run_ok(b, "the process of newer migrations");
    // The first process goes on to clone its template.
    std::fs::write(&go, b"go").unwrap();
    let out = wait(a, Duration::from_secs(120));
    let _ = std::fs::remove_file(&go);
    assert!(
        out.status.success(),
        "the process of the old migrations lost its template:\n{}",
        text(&out)
    );
    let kept = with_server(async |conn| {
        (
            exists(conn, &working).await,
            exists(conn, &template_of(&working)).await,
        )
    });
    assert_eq!(kept, (true, true), "{working} and its template stay");

    // Once nobody uses them, the next sweep drops them.
    wait_backends_gone(a_pid);
    let mut c = child("child_in_use_1_wait", 1);
    c.env("DB_TEST_IN_USE_TOKEN", unique_token("newer"))
        .env("DB_TEST_OUTDATED_AFTER", "1s");
    run_ok(c, "the next process of newer migrations");
    let kept = with_server(async |conn| {
        (
            exists(conn, &working).await,
            exists(conn, &template_of(&working)).await,
        )
    });
    assert_eq!(kept, (false, false), "{working} and its template are swept");
}

#[test]
fn a_vanished_template_is_built_again() {
    let mut cmd = child("child_vanish_", 1);
    cmd.env("DB_TEST_VANISH_TOKEN", unique_token("vanish"));
    let all = run_ok(cmd, "dropping the template, then cloning it");
    let template = word_after(&all, "DROPPED ").expect("the template was dropped");
    assert!(all.contains("test result: ok. 2 passed"), "{all}");
    assert!(
        with_server(async |conn| exists(conn, &template).await),
        "{template} was built again"
    );
}

#[test]
fn checkouts_whose_migration_paths_end_alike_keep_their_own_templates() {
    let a = word_after(
        &run_ok(child("child_checkout_a", 1), "checkout a"),
        "CHECKOUT_WORKING ",
    )
    .expect("working database of a");
    // Past a's grace, b's templates are built with a 1 s grace: were they
    // one source, b's sweep would drop a's.
    std::thread::sleep(Duration::from_millis(2100));
    let mut b = child("child_checkout_b", 1);
    b.env("DB_TEST_OUTDATED_AFTER", "1s");
    let b = word_after(&run_ok(b, "checkout b"), "CHECKOUT_WORKING ").expect("working b");
    // dbtest_<base>_<source>_<hash>_w: the sources differ.
    let source = |w: &str| w.rsplitn(3, '_').nth(2).unwrap().to_string();
    assert_ne!(source(&a), source(&b), "{a} and {b} share a source");
    let kept =
        with_server(async |conn| (exists(conn, &a).await, exists(conn, &template_of(&a)).await));
    assert_eq!(kept, (true, true), "{a} and its template stay");
    // Each checkout's source is stable: a's next run finds its template.
    let again = word_after(
        &run_ok(child("child_checkout_a", 1), "checkout a again"),
        "CHECKOUT_WORKING ",
    );
    assert_eq!(again.as_deref(), Some(a.as_str()));
}
