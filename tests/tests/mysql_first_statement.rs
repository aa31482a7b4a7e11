//! Tests of MySQL transaction mode's "the session was gone
//! before the first statement" replacement, and of a MySQL process's
//! start-up (prewarmed slots, one listing, leftovers).
//!
//! Tests named `child_*` do their real work only in a child process of this
//! binary started by a `scenario_*` test with `DB_TEST_ADV23` naming the
//! scenario; in the normal run they only do a plain part.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use common::{children, run_until};
use db_test::db_test;
use db_test::mysql::TestDb;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool};
use sqlx::{Connection, Executor, SqlSafeStr};

fn scenario() -> String {
    std::env::var("DB_TEST_ADV23").unwrap_or_default()
}

fn token() -> String {
    std::env::var("DB_TEST_ADV23_TOKEN").unwrap_or_else(|_| "notoken".into())
}

/// One scenario at a time: they share the embedded server's working
/// databases and look at its process list.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A schema with a trigger writing into a table that cannot roll back: a
/// statement sent twice leaves two audit rows, one sent once one. The tests
/// that use it delete their audit rows once counted (the working database
/// must hold what its template holds after a run: `scripts/check-clean.sh`).
static ADV_MYISAM: LazyLock<Migrator> = LazyLock::new(|| adv_schema("MyISAM"));

/// The same schema with a table that rolls back, for the tests that do not
/// count how often a statement ran.
static ADV: LazyLock<Migrator> = LazyLock::new(|| adv_schema("InnoDB"));

fn adv_schema(audit_engine: &str) -> Migrator {
    let sql = format!(
        "CREATE TABLE item (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(80) NOT NULL) ENGINE=InnoDB;\n\
         CREATE TABLE audit (name VARCHAR(80) NOT NULL) ENGINE={audit_engine};\n\
         CREATE TRIGGER item_audit AFTER INSERT ON item FOR EACH ROW INSERT INTO audit (name) VALUES (NEW.name);\n"
    );
    Migrator::with_migrations(vec![Migration::new(
        1,
        format!("adv23 {audit_engine}").into(),
        MigrationType::Simple,
        sqlx::AssertSqlSafe(sql).into_sql_str(),
        false,
    )])
}

/// The same schema, for the database-mode-only process alone (its own
/// template and working database, which no other process here uses).
static ADV_DB: LazyLock<Migrator> = LazyLock::new(|| {
    let sql = format!(
        "CREATE TABLE item (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(80) NOT NULL) ENGINE=InnoDB;\n\
         -- {}\n",
        token()
    );
    Migrator::with_migrations(vec![Migration::new(
        1,
        "adv23db".into(),
        MigrationType::Simple,
        sqlx::AssertSqlSafe(sql).into_sql_str(),
        false,
    )])
});

fn run_scenario(name: &str, tests: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = children(tests);
    cmd.env("DB_TEST_ADV23", name);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (out, all) = run_until(cmd, Duration::from_secs(180));
    (out.status.success(), all)
}

/// Kills session `id` from a thread and runtime of its own (works under a
/// paused clock, on any runtime flavour).
fn kill_outside(options: MySqlConnectOptions, id: u64) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut c = MySqlConnection::connect_with(&options).await.unwrap();
            let _ = c
                .execute(sqlx::AssertSqlSafe(format!("KILL CONNECTION {id}")))
                .await;
            // Until the server has ended it.
            for _ in 0..200 {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM information_schema.processlist WHERE id = ?",
                )
                .bind(id)
                .fetch_one(&mut c)
                .await
                .unwrap();
                if n == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            c.close().await.unwrap();
        })
    })
    .join()
    .unwrap();
}

/// Runs `f` on a thread and runtime of its own.
fn outside<T: Send + 'static>(
    options: MySqlConnectOptions,
    f: impl AsyncFnOnce(&mut MySqlConnection) -> T + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut c = MySqlConnection::connect_with(&options).await.unwrap();
            let v = f(&mut c).await;
            let _ = c.close().await;
            v
        })
    })
    .join()
    .unwrap()
}

fn audit_rows(options: MySqlConnectOptions, name: String) -> i64 {
    outside(options, async move |c: &mut MySqlConnection| -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM audit WHERE name = ?")
            .bind(name)
            .fetch_one(c)
            .await
            .unwrap()
    })
}

/// Deletes the audit rows named `name` (a table that cannot roll back).
fn forget_audit(options: MySqlConnectOptions, name: String) {
    outside(options, async move |c: &mut MySqlConnection| {
        sqlx::query("DELETE FROM audit WHERE name = ?")
            .bind(name)
            .execute(c)
            .await
            .unwrap();
    })
}

fn committed_items(options: MySqlConnectOptions, like: String) -> i64 {
    outside(options, async move |c: &mut MySqlConnection| -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM item WHERE name LIKE ?")
            .bind(like)
            .fetch_one(c)
            .await
            .unwrap()
    })
}

// ---- a first statement the server ends midway is not sent again -----------
//
// Under `#[sqlx::test]` a statement whose session is killed while it runs
// fails, and runs once. The replacement of a session "found gone by the
// first statement" must not apply when the statement itself reached the
// server and ran (partly).

#[db_test(migrator = "ADV_MYISAM")]
async fn child_midway_1_first_statement_killed_while_it_runs(db: TestDb) {
    if scenario() != "midway" {
        return;
    }
    let name = format!("{}-midway", token());
    let options = db.connect_options();
    // Kills the statement's session 500 ms into it, from outside.
    let killer = {
        let options = options.clone();
        let name = name.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            outside(options, async move |c: &mut MySqlConnection| {
                for _ in 0..400 {
                    let ids: Vec<u64> = sqlx::query_scalar(
                        "SELECT CAST(id AS UNSIGNED) FROM information_schema.processlist \
                         WHERE info LIKE CONCAT('%SLEEP(3)%', ?, '%') AND id <> CONNECTION_ID()",
                    )
                    .bind(&name)
                    .fetch_all(&mut *c)
                    .await
                    .unwrap();
                    if let Some(id) = ids.first() {
                        let _ = c
                            .execute(sqlx::AssertSqlSafe(format!("KILL CONNECTION {id}")))
                            .await;
                        return *id;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                0
            })
        })
    };
    let t0 = Instant::now();
    // The test's first statement: a write whose trigger writes to a MyISAM
    // table (it stays), then a sleep that is killed.
    let result = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO item (name) VALUES ('{name}'); SELECT SLEEP(3) /* {name} */"
    )))
    .execute(&db)
    .await;
    let elapsed = t0.elapsed();
    let killed = tokio::task::spawn_blocking(move || killer.join().unwrap())
        .await
        .unwrap();
    let audit = tokio::task::spawn_blocking({
        let options = options.clone();
        let name = name.clone();
        move || {
            let n = audit_rows(options.clone(), name.clone());
            forget_audit(options, name);
            n
        }
    })
    .await
    .unwrap();
    println!(
        "MIDWAY killed={killed} result_is_err={} elapsed_ms={} audit={audit} result={:?}",
        result.is_err(),
        elapsed.as_millis(),
        result.as_ref().map(|_| ()).map_err(|e| e.to_string())
    );
    assert_ne!(killed, 0, "the statement was not found running");
    assert_eq!(
        audit, 1,
        "the first statement ran {audit} times (its trigger's MyISAM row); under \
         #[sqlx::test] it runs once"
    );
    assert!(
        result.is_err(),
        "the first statement, whose session was killed while it ran, was sent again \
         and succeeded after {elapsed:?}; under #[sqlx::test] it fails"
    );
}

#[test]
fn scenario_a_first_statement_killed_midway_is_not_sent_again() {
    let _serial = serial();
    let token = common::unique_token("adv23m");
    let (_ok, all) = run_scenario(
        "midway",
        &["child_midway_1_first_statement_killed_while_it_runs"],
        &[("DB_TEST_ADV23_TOKEN", &token)],
    );
    let line = all
        .lines()
        .find(|l| l.contains("MIDWAY "))
        .unwrap_or("no MIDWAY line");
    // The statement ran once and failed; the test itself then fails with
    // "the connection broke" (db-test fails a test whose connection broke,
    // even if it swallowed the error), which is not what is checked here.
    assert!(
        line.contains("result_is_err=true") && line.contains(" audit=1 "),
        "the first statement was sent again after its session was killed while it ran \
         ({line}):\n{all}"
    );
}

// ---- a first statement that kills its own session --------------------------

#[db_test(migrator = "ADV_MYISAM")]
async fn child_selfkill_1_first_statement_kills_its_session(db: TestDb) {
    if scenario() != "selfkill" {
        return;
    }
    let name = format!("{}-selfkill", token());
    let result = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO item (name) VALUES ('{name}'); KILL CONNECTION_ID()"
    )))
    .execute(&db)
    .await;
    let audit = tokio::task::spawn_blocking({
        let options = db.connect_options();
        let name = name.clone();
        move || {
            let n = audit_rows(options.clone(), name.clone());
            forget_audit(options, name);
            n
        }
    })
    .await
    .unwrap();
    println!(
        "SELFKILL audit={audit} result={:?}",
        result.as_ref().map(|_| ()).map_err(|e| e.to_string())
    );
    assert!(result.is_err(), "KILL CONNECTION_ID() did not fail");
    assert_eq!(
        audit, 1,
        "a first statement that ends its own session ran {audit} times; under \
         #[sqlx::test] it runs once"
    );
}

#[test]
fn scenario_a_first_statement_that_kills_its_own_session_runs_once() {
    let _serial = serial();
    let token = common::unique_token("adv23s");
    let (_ok, all) = run_scenario(
        "selfkill",
        &["child_selfkill_1_first_statement_kills_its_session"],
        &[("DB_TEST_ADV23_TOKEN", &token)],
    );
    let line = all
        .lines()
        .find(|l| l.contains("SELFKILL "))
        .unwrap_or("no SELFKILL line");
    assert!(
        all.contains("SELFKILL audit=1 "),
        "the first statement ran more than once ({line}):\n{all}"
    );
}

// ---- first uses of a connection whose session was killed before them -------
//
// One thread: each test is handed the connection the last one left,
// readied for it just before (no round trip); the test kills it from
// outside before its first use.

static LAST_ID: AtomicU64 = AtomicU64::new(0);

/// Kills the last test's connection (this test's), in the `gone` scenario.
fn kill_last(db: &TestDb) -> Option<u64> {
    let id = LAST_ID.load(Ordering::SeqCst);
    if scenario() != "gone" || id == 0 {
        return None;
    }
    kill_outside(db.connect_options(), id);
    Some(id)
}

async fn remember(db: &TestDb, killed: Option<u64>) -> u64 {
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(db)
        .await
        .unwrap();
    if let Some(killed) = killed {
        assert_ne!(id, killed, "the killed connection answered");
    }
    LAST_ID.store(id, Ordering::SeqCst);
    id
}

async fn insert_item(db: &TestDb, name: &str) {
    sqlx::query("INSERT INTO item (name) VALUES (?)")
        .bind(name)
        .execute(db)
        .await
        .unwrap();
}

#[db_test(migrator = "ADV")]
async fn child_gone_1_plain(db: TestDb) {
    remember(&db, None).await;
    insert_item(&db, "gone-1").await;
}

#[db_test(migrator = "ADV")]
async fn child_gone_2_prepare_first(db: TestDb) {
    let killed = kill_last(&db);
    let stmt = (&db)
        .prepare(sqlx::SqlStr::from_static(
            "SELECT CONNECTION_ID(), (SELECT COUNT(*) FROM item WHERE name LIKE 'gone-%')",
        ))
        .await
        .expect("prepare as the first use, after the session was killed");
    use sqlx::Statement;
    let (id, seen): (u64, i64) = stmt.query_as().fetch_one(&db).await.unwrap();
    assert_eq!(seen, 0, "a row of the last test was seen");
    if let Some(killed) = killed {
        assert_ne!(id, killed);
    }
    remember(&db, killed).await;
    insert_item(&db, "gone-2").await;
}

#[db_test(migrator = "ADV")]
async fn child_gone_3_persistent_first(db: TestDb) {
    let killed = kill_last(&db);
    let (id, seen): (u64, i64) =
        sqlx::query_as("SELECT CONNECTION_ID(), (SELECT COUNT(*) FROM item WHERE name LIKE ?)")
            .bind("gone-%")
            .persistent(true)
            .fetch_one(&db)
            .await
            .expect("a prepared statement as the first use, after the session was killed");
    assert_eq!(seen, 0, "a row of the last test was seen");
    if let Some(killed) = killed {
        assert_ne!(id, killed);
    }
    LAST_ID.store(id, Ordering::SeqCst);
    insert_item(&db, "gone-3").await;
}

#[db_test(migrator = "ADV")]
async fn child_gone_4_acquire_begin_first(db: TestDb) {
    let killed = kill_last(&db);
    {
        let mut tx = sqlx::Acquire::begin(&db)
            .await
            .expect("Acquire::begin as the first use, after the session was killed");
        let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        if let Some(killed) = killed {
            assert_ne!(id, killed);
        }
        sqlx::query("INSERT INTO item (name) VALUES ('gone-4')")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let id = remember(&db, killed).await;
    let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM item WHERE name LIKE 'gone-%'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(seen, 1);
    LAST_ID.store(id, Ordering::SeqCst);
}

#[db_test(migrator = "ADV", flavor = "current_thread")]
async fn child_gone_5_on_a_current_thread_runtime(db: TestDb) {
    let killed = kill_last(&db);
    // The replacement connection is opened while the body runs on a
    // runtime of its own, which is dropped before the teardown.
    remember(&db, killed).await;
    insert_item(&db, "gone-5").await;
}

#[db_test(migrator = "ADV")]
async fn child_gone_6_after_the_current_thread_test(db: TestDb) {
    // No kill: the connection the last test left (opened on its runtime,
    // if it was replaced) serves this one, or another.
    let last = LAST_ID.load(Ordering::SeqCst);
    let id = remember(&db, None).await;
    if scenario() == "gone" && last != id {
        // The last test's connection is not this one's: its session ended
        // with the test (not left open, in a transaction, on the server).
        let options = db.connect_options();
        let alive = tokio::task::spawn_blocking(move || {
            outside(options, async move |c: &mut MySqlConnection| -> i64 {
                let mut n = 1;
                for _ in 0..100 {
                    n = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM information_schema.processlist WHERE id = ?",
                    )
                    .bind(last)
                    .fetch_one(&mut *c)
                    .await
                    .unwrap();
                    if n == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                n
            })
        })
        .await
        .unwrap();
        println!("GONE6 last={last} id={id} alive={alive}");
        assert_eq!(
            alive, 0,
            "the last test's session {last} is still open on the server"
        );
    }
    let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM item WHERE name LIKE 'gone-%'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(seen, 0);
    LAST_ID.store(id, Ordering::SeqCst);
    insert_item(&db, "gone-6").await;
}

#[db_test(migrator = "ADV", start_paused = true)]
async fn child_gone_7_start_paused(db: TestDb) {
    let killed = kill_last(&db);
    remember(&db, killed).await;
    insert_item(&db, "gone-7").await;
}

#[db_test(migrator = "ADV", flavor = "current_thread")]
async fn child_gone_8_pause_in_the_body(db: TestDb) {
    tokio::time::pause();
    let killed = kill_last(&db);
    remember(&db, killed).await;
    insert_item(&db, "gone-8").await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

#[db_test(migrator = "ADV")]
async fn child_gone_9_db_begin_first(db: TestDb) {
    let killed = kill_last(&db);
    let mut tx = db.begin().await.expect("db.begin() first, after a kill");
    sqlx::query("INSERT INTO item (name) VALUES ('gone-9')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    remember(&db, killed).await;
}

#[db_test(migrator = "ADV")]
async fn child_gone_z_check(db: TestDb) {
    let options = db.connect_options();
    let committed = tokio::task::spawn_blocking(move || committed_items(options, "gone-%".into()))
        .await
        .unwrap();
    assert_eq!(committed, 0, "a row of the scenario was committed");
    let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM item WHERE name LIKE 'gone-%'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(seen, 0);
}

#[test]
fn scenario_first_uses_of_a_connection_killed_before_them() {
    let _serial = serial();
    let tests = [
        "child_gone_1_plain",
        "child_gone_2_prepare_first",
        "child_gone_3_persistent_first",
        "child_gone_4_acquire_begin_first",
        "child_gone_5_on_a_current_thread_runtime",
        "child_gone_6_after_the_current_thread_test",
        "child_gone_9_db_begin_first",
        "child_gone_z_check",
    ];
    // One slot: a test on another connection than the last one's means
    // that one was closed (with more, it may be parked, readied for a later
    // test, see `slots::pick`).
    let (ok, all) = run_scenario("gone", &tests, &[("DB_TEST_POOL_SIZE", "1")]);
    assert!(
        ok && all.contains(&format!("{} passed", tests.len())),
        "scenario gone failed:\n{all}"
    );
}

// A paused clock (`start_paused`, or `time::pause()` in the body): the
// connection that takes the killed one's place is opened on the body's
// runtime, whose clock jumps to the pool's acquire timeout while it waits
// for the server (db-test opens a paused test's first connections on the
// shared runtime for that reason).
#[test]
fn scenario_a_killed_connection_is_replaced_under_start_paused() {
    let _serial = serial();
    let tests = ["child_gone_1_plain", "child_gone_7_start_paused"];
    let (ok, all) = run_scenario("gone", &tests, &[]);
    assert!(ok && all.contains("2 passed"), "{all}");
}

#[test]
fn scenario_a_killed_connection_is_replaced_after_time_pause() {
    let _serial = serial();
    let tests = ["child_gone_1_plain", "child_gone_8_pause_in_the_body"];
    let (ok, all) = run_scenario("gone", &tests, &[]);
    assert!(ok && all.contains("2 passed"), "{all}");
}

// ---- a process of database-mode tests only ----------------------------------

#[db_test(migrator = "ADV_DB", isolation = "database")]
async fn child_dbonly_a(db: TestDb) {
    dbonly_body(&db, "a").await;
}
#[db_test(migrator = "ADV_DB", isolation = "database")]
async fn child_dbonly_b(db: TestDb) {
    dbonly_body(&db, "b").await;
}
#[db_test(migrator = "ADV_DB", isolation = "database")]
async fn child_dbonly_c(db: TestDb) {
    dbonly_body(&db, "c").await;
}
#[db_test(migrator = "ADV_DB", isolation = "database")]
async fn child_dbonly_d(db: TestDb) {
    dbonly_body(&db, "d").await;
}

async fn dbonly_body(db: &TestDb, tag: &str) {
    // Real commits, DDL: the database is the test's own.
    sqlx::query("CREATE TABLE extra (a INT)")
        .execute(db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO item (name) VALUES (?)")
        .bind(format!("dbonly-{tag}"))
        .execute(db)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM item")
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let name: String = sqlx::query_scalar("SELECT CAST(DATABASE() AS CHAR)")
        .fetch_one(db)
        .await
        .unwrap();
    if scenario() == "dbonly" {
        println!("DBONLY {name}");
    }
}

/// Drops the databases of a template this file made for one run (`prefix`:
/// `dbtest_<source>_<hash>`), found from one of their names.
fn drop_run(options: MySqlConnectOptions, any_name: &str) {
    let mut parts = any_name.splitn(4, '_');
    let prefix = format!(
        "{}_{}_{}",
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("")
    );
    assert!(
        prefix.starts_with("dbtest_") && prefix.len() > 20,
        "{prefix}"
    );
    let like = format!("{}\\_%", prefix.replace('_', "\\_"));
    for name in databases_like(options.clone(), like) {
        exec_outside(options.clone(), format!("DROP DATABASE IF EXISTS `{name}`"));
    }
}

fn server_options() -> MySqlConnectOptions {
    let url = db_test::mysql::server_url().expect("the MySQL server");
    url.parse().unwrap()
}

fn sessions_in(options: MySqlConnectOptions, like: String) -> i64 {
    outside(options, async move |c: &mut MySqlConnection| -> i64 {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.processlist WHERE db LIKE ? \
             AND id <> CONNECTION_ID()",
        )
        .bind(like)
        .fetch_one(c)
        .await
        .unwrap()
    })
}

#[test]
fn scenario_a_process_of_database_mode_tests_only() {
    let _serial = serial();
    // Four at once, with a pool of two connections per working database:
    // the prewarmed slots hold connections no test uses.
    let token = common::unique_token("adv23db");
    let mut cmd = common::child("child_dbonly_", 4);
    cmd.env("DB_TEST_ADV23", "dbonly")
        .env("DB_TEST_ADV23_TOKEN", &token)
        .env("DB_TEST_POOL_SIZE", "2")
        .env("DB_TEST_MAX_DATABASES", "2");
    let (out, all) = run_until(cmd, Duration::from_secs(180));
    assert!(out.status.success(), "{all}");
    assert!(all.contains("4 passed"), "{all}");
    let names: Vec<String> = all
        .lines()
        .filter_map(|l| common::word_after(l, "DBONLY "))
        .collect();
    assert_eq!(names.len(), 4, "{all}");
    // Its sessions are gone once it exited.
    let prefix = names[0].rsplitn(3, '_').nth(2).unwrap().to_string();
    let options = server_options();
    let t0 = Instant::now();
    let left = loop {
        let n = sessions_in(
            options.clone(),
            format!("{}\\_%", prefix.replace('_', "\\_")),
        );
        if n == 0 || t0.elapsed() > Duration::from_secs(10) {
            break n;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop_run(options, &names[0]);
    assert_eq!(
        left, 0,
        "{left} sessions of an exited process remain in {prefix}_*"
    );
}

// ---- leftovers of a killed process -------------------------------------------

#[db_test(migrations = "tests/mysql/leftover_migrations", isolation = "database")]
async fn child_leftover_1_holds_its_database(db: TestDb) {
    if scenario() != "leftover" {
        return;
    }
    let name: String = sqlx::query_scalar("SELECT CAST(DATABASE() AS CHAR)")
        .fetch_one(&db)
        .await
        .unwrap();
    println!("LEFTOVER {name}");
    tokio::time::sleep(Duration::from_secs(120)).await;
}

/// The same migrations as the killed process's, in transaction mode: it
/// leaves the leftover alone (dropping databases while its tests run would
/// slow them; it makes none itself).
#[db_test(migrations = "tests/mysql/leftover_migrations")]
async fn child_leftover_2_transaction_mode(db: TestDb) {
    if scenario() != "leftover" {
        return;
    }
    let _ = sqlx::query("SELECT 1").execute(&db).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// The same migrations, in database mode: leftovers are cleaned up by a
/// later process of the same project (their source) that makes databases
/// itself, as on PostgreSQL.
#[db_test(migrations = "tests/mysql/leftover_migrations")]
async fn child_leftover_3_database_mode(pool: MySqlPool) {
    if scenario() != "leftover" {
        return;
    }
    let _ = sqlx::query("SELECT 1").execute(&pool).await.unwrap();
    // Leftovers are dropped in the background: give it time.
    tokio::time::sleep(Duration::from_secs(2)).await;
}

fn databases_like(options: MySqlConnectOptions, like: String) -> Vec<String> {
    outside(options, async move |c: &mut MySqlConnection| {
        sqlx::query_scalar(
            "SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata \
             WHERE schema_name LIKE ?",
        )
        .bind(like)
        .fetch_all(c)
        .await
        .unwrap()
    })
}

fn exec_outside(options: MySqlConnectOptions, sql: String) {
    outside(options, async move |c: &mut MySqlConnection| {
        c.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
    })
}

#[test]
fn scenario_leftovers_of_a_killed_process_are_dropped_and_nothing_else() {
    let _serial = serial();
    let options = server_options();
    // Databases of the user's, named like db-test's but not of its making.
    let mine = [
        "dbtest_adv23_userdata",
        "dbtest_adv23x_hash_dnotahex1_1",
        "dbtest_adv23x_hash_d0000abc_1",
        // Owner-shaped, but a made-up source and hash; and db-test's exact
        // form, of another project (source) on the server.
        "dbtest_foo_bar_d1234abcd_1",
        "dbtest_deadbeef_0123456789_d1234abcd_1",
    ];
    for name in mine {
        exec_outside(
            options.clone(),
            format!("CREATE DATABASE IF NOT EXISTS `{name}`"),
        );
        exec_outside(
            options.clone(),
            format!("CREATE TABLE IF NOT EXISTS `{name}`.keep (a INT)"),
        );
    }
    let mut cmd = common::children(&["child_leftover_1_holds_its_database"]);
    cmd.env("DB_TEST_ADV23", "leftover");
    let mut first = cmd.spawn().unwrap();
    let name = common::wait_for_marker(&mut first, "LEFTOVER ");
    first.kill().unwrap();
    first.wait().unwrap();
    let name = name.expect("the first child named its database");
    assert_eq!(
        databases_like(options.clone(), name.clone()),
        vec![name.clone()],
        "the killed process's database exists"
    );
    // Its owner lock is freed once the server sees its sessions end.
    std::thread::sleep(Duration::from_millis(500));
    let (ok, all) = run_scenario("leftover", &["child_leftover_2_transaction_mode"], &[]);
    assert!(ok, "{all}");
    let left_alone = databases_like(options.clone(), name.clone());
    let mut gone = false;
    for _ in 0..3 {
        let (ok, all) = run_scenario("leftover", &["child_leftover_3_database_mode"], &[]);
        assert!(ok, "{all}");
        if databases_like(options.clone(), name.clone()).is_empty() {
            gone = true;
            break;
        }
    }
    let kept: Vec<Vec<String>> = mine
        .iter()
        .map(|n| databases_like(options.clone(), n.to_string()))
        .collect();
    for name in mine {
        exec_outside(options.clone(), format!("DROP DATABASE IF EXISTS `{name}`"));
    }
    assert_eq!(
        left_alone,
        vec![name.clone()],
        "a transaction-mode process dropped the leftover"
    );
    assert!(gone, "the killed process's database {name} was not dropped");
    for (n, k) in mine.iter().zip(&kept) {
        assert_eq!(
            k,
            &vec![n.to_string()],
            "a database of the user's was dropped"
        );
    }
}

// ---- a wrong URL fails fast -----------------------------------------------------

#[db_test(migrations = "tests/mysql/migrations")]
async fn child_url_1_a_test(db: TestDb) {
    let _ = sqlx::query("SELECT 1").execute(&db).await.unwrap();
}

fn wrong_url_child(url: &str) -> (bool, String, Duration) {
    let mut cmd = common::children(&["child_url_1_a_test"]);
    cmd.env("DB_TEST_MYSQL_URL", url)
        .env("DB_TEST_CONNECT_TIMEOUT", "1s")
        .env("DB_TEST_ADV23", "url");
    let t0 = Instant::now();
    let (out, all) = run_until(cmd, Duration::from_secs(60));
    (out.status.success(), all, t0.elapsed())
}

#[test]
fn a_url_whose_server_never_answers_fails_fast() {
    // A listener that accepts and says nothing (not a MySQL server).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let (ok, all, took) = wrong_url_child(&format!("mysql://root:s3cret@127.0.0.1:{port}/app"));
    assert!(!ok, "{all}");
    assert!(all.contains("cannot connect"), "{all}");
    assert!(!all.contains("s3cret"), "the password was shown:\n{all}");
    assert!(took < Duration::from_secs(20), "took {took:?}:\n{all}");
}

#[test]
fn a_url_whose_server_hangs_up_fails_fast() {
    // A listener that accepts and closes at once.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let (ok, all, took) = wrong_url_child(&format!("mysql://root:s3cret@127.0.0.1:{port}/app"));
    assert!(!ok, "{all}");
    assert!(all.contains("cannot connect"), "{all}");
    assert!(!all.contains("s3cret"), "the password was shown:\n{all}");
    assert!(took < Duration::from_secs(20), "took {took:?}:\n{all}");
}

// ---- prepared statements and a paused clock, no kill ------------------------------

#[db_test(migrator = "ADV")]
async fn a_persistent_prepared_statement_as_the_first_use(db: TestDb) {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM item WHERE name = ?")
        .bind("nobody")
        .persistent(true)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[db_test(migrator = "ADV")]
async fn prepare_as_the_first_use(db: TestDb) {
    use sqlx::Statement;
    let stmt = (&db)
        .prepare(sqlx::SqlStr::from_static(
            "SELECT COUNT(*) FROM item WHERE name = ?",
        ))
        .await
        .unwrap();
    let n: i64 = stmt
        .query_scalar()
        .bind("nobody")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[db_test(migrator = "ADV", flavor = "current_thread")]
async fn a_paused_clock_in_the_body(db: TestDb) {
    tokio::time::pause();
    insert_item(&db, "paused").await;
    tokio::time::sleep(Duration::from_secs(100_000)).await;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM item WHERE name = 'paused'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

// ---- a server whose sql_mode has NO_BACKSLASH_ESCAPES ---------------------------
//
// db-test lists its databases with `LIKE 'dbtest\_%'`: with
// NO_BACKSLASH_ESCAPES, LIKE has no escape character, and the pattern
// matches nothing. A server of its own (another data directory).

#[db_test(migrator = "ADV")]
async fn child_nbe_1_a_test(db: TestDb) {
    if scenario() != "nbe" {
        return;
    }
    let (name, installed): (String, String) = sqlx::query_as(
        "SELECT CAST(DATABASE() AS CHAR), CAST(installed_on AS CHAR) FROM _sqlx_migrations",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    println!("NBE {name} {installed}");
    if std::env::var_os("DB_TEST_ADV23_HOLD").is_some() {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM item")
            .fetch_one(&db)
            .await
            .expect("the working database is still there");
        assert_eq!(n, 0);
    }
}

fn nbe_child(dir: &std::path::Path, hold: bool) -> std::process::Command {
    let mut cmd = common::children(&["child_nbe_1_a_test"]);
    cmd.env("DB_TEST_ADV23", "nbe")
        .env_remove("DB_TEST_MYSQL_URL")
        .env_remove("DATABASE_URL")
        .env("DB_TEST_MYSQL_DATA_DIR", dir)
        .env("DB_TEST_MYSQL_IDLE_SECS", "3")
        .env("DB_TEST_MYSQL_OPTIONS", "--sql-mode=NO_BACKSLASH_ESCAPES");
    if hold {
        cmd.env("DB_TEST_ADV23_HOLD", "1");
    }
    cmd
}

/// The two scenarios on a NO_BACKSLASH_ESCAPES server initialise a data
/// directory each: one at a time (two `mariadb-install-db` at once failed
/// here now and then).
static NBE_SERVERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn scenario_a_server_with_no_backslash_escapes_keeps_its_working_database() {
    let _one_at_a_time = NBE_SERVERS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(common::unique_token("dbtest-adv23-nbe"));
    // The first process builds the template.
    let first = common::run_ok(nbe_child(&dir, false), "the first process");
    let first_line = first
        .lines()
        .find_map(|l| common::word_after(l, "NBE "))
        .expect("NBE line");
    // One process holds the working database while another starts.
    let mut holder = nbe_child(&dir, true).spawn().unwrap();
    let held = common::wait_for_marker(&mut holder, "NBE ");
    let second = common::run_ok(nbe_child(&dir, false), "the second process");
    let out = common::wait(holder, Duration::from_secs(120));
    let holder_text = common::text(&out);
    let installed = |t: &str| {
        t.lines()
            .find(|l| l.contains("NBE "))
            .map(|l| l.to_string())
            .unwrap_or_default()
    };
    let (a, b) = (installed(&first), installed(&second));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(held.is_some(), "the holder did not start:\n{holder_text}");
    assert!(
        out.status.success(),
        "a process's working database went away while its test ran (another process \
         started): first {first_line}\n{holder_text}\n--- second:\n{second}"
    );
    assert_eq!(
        a.split_whitespace().last(),
        b.split_whitespace().last(),
        "the template was built again by a later process ({a} / {b})"
    );
}

// On that server, every session reads strings without backslash escapes:
// a `COMMIT` after a string that a backslash would have kept open is a
// statement there, refused with no `SET` of the test's own.

#[db_test(migrator = "ADV")]
async fn child_nbe_2_smuggles(db: TestDb) {
    if scenario() != "nbe" {
        return;
    }
    let err = sqlx::raw_sql(r"INSERT INTO item (name) VALUES ('nbe'); COMMIT; -- ')")
        .execute(&db)
        .await
        .expect_err("the COMMIT is a statement on this server");
    println!("REFUSED {err}");
}

#[test]
fn scenario_a_commit_after_a_backslash_is_refused_on_a_server_without_backslash_escapes() {
    let _one_at_a_time = NBE_SERVERS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(common::unique_token("dbtest-adv23-nbe2"));
    let mut cmd = common::children(&["child_nbe_2_smuggles"]);
    cmd.env("DB_TEST_ADV23", "nbe")
        .env_remove("DB_TEST_MYSQL_URL")
        .env_remove("DATABASE_URL")
        .env("DB_TEST_MYSQL_DATA_DIR", &dir)
        .env("DB_TEST_MYSQL_IDLE_SECS", "3")
        .env("DB_TEST_MYSQL_OPTIONS", "--sql-mode=NO_BACKSLASH_ESCAPES");
    let (out, text) = common::run_until(cmd, Duration::from_secs(300));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        text.contains("REFUSED") && text.contains("refusing to run"),
        "{text}"
    );
    // A refused statement fails its test.
    assert!(!out.status.success(), "{text}");
}

// ---- a first CALL that commits, then loses its session ---------------------------
//
// A procedure that commits is caught by the check after its CALL (the test
// fails, the working database is rebuilt by the next process). As the
// test's first statement, a CALL that commits and whose session then ends is
// sent again on a new connection instead, without that check.

static CALLKILL: LazyLock<Migrator> = LazyLock::new(|| {
    // A template of each run's own: no other process uses its working
    // database (one that does would keep it from being rebuilt).
    let sql = format!(
        "CREATE TABLE uitem (name VARCHAR(80) PRIMARY KEY) ENGINE=InnoDB;\n\
         CREATE PROCEDURE commit_then_die(IN n VARCHAR(80)) \
         BEGIN INSERT INTO uitem (name) VALUES (n); COMMIT; KILL CONNECTION_ID(); END;\n\
         -- {}\n",
        token()
    );
    Migrator::with_migrations(vec![Migration::new(
        1,
        "adv23call".into(),
        MigrationType::Simple,
        sqlx::AssertSqlSafe(sql).into_sql_str(),
        false,
    )])
});

#[db_test(migrator = "CALLKILL")]
async fn child_callkill_1_first_call_commits_then_dies(db: TestDb) {
    if scenario() != "callkill" {
        return;
    }
    let result = sqlx::query("CALL commit_then_die(?)")
        .bind(token())
        .execute(&db)
        .await;
    println!(
        "CALLKILL result={:?}",
        result.as_ref().map(|_| ()).map_err(|e| e.to_string())
    );
    // A test that expected the CALL to fail ends here.
    assert!(result.is_err());
}

#[db_test(migrator = "CALLKILL")]
async fn child_callkill_2_next_process(db: TestDb) {
    if scenario() != "callkill" {
        return;
    }
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM uitem WHERE name = ?")
        .bind(token())
        .fetch_one(&db)
        .await
        .unwrap();
    let name: String = sqlx::query_scalar("SELECT CAST(DATABASE() AS CHAR)")
        .fetch_one(&db)
        .await
        .unwrap();
    println!("CALLKILL2 seen={n} db={name}");
    assert_eq!(
        n, 0,
        "a row the last process's test committed is in the working database"
    );
}

/// Runs `test` (a CALL that commits, then loses its session) in one process
/// and `child_callkill_2_next_process` in the next: the first must fail
/// saying its CALL committed, the second must not see the committed row.
fn call_commits_then_next_process(test: &str, token: &str) {
    let (first_ok, first) = run_scenario("callkill", &[test], &[("DB_TEST_ADV23_TOKEN", token)]);
    let (next_ok, next) = run_scenario(
        "callkill",
        &["child_callkill_2_next_process"],
        &[("DB_TEST_ADV23_TOKEN", token)],
    );
    if let Some(db) = next.lines().find_map(|l| common::word_after(l, "db=")) {
        drop_run(server_options(), &db);
    }
    assert!(
        next_ok,
        "the committed row survived into the next process (first process passed: \
         {first_ok}):\n{first}\n--- next:\n{next}"
    );
    assert!(
        !first_ok && first.contains("COMMITTED"),
        "the test whose CALL committed did not fail saying so:\n{first}"
    );
}

#[test]
fn scenario_a_first_call_that_commits_then_loses_its_session_is_caught() {
    let _serial = serial();
    call_commits_then_next_process(
        "child_callkill_1_first_call_commits_then_dies",
        &common::unique_token("adv23c"),
    );
}

/// The same CALL as the test's second statement: caught.
#[db_test(migrator = "CALLKILL")]
async fn child_callkill_ctl_1_second_call_commits_then_dies(db: TestDb) {
    if scenario() != "callkill" {
        return;
    }
    sqlx::query("SELECT 1").execute(&db).await.unwrap();
    let result = sqlx::query("CALL commit_then_die(?)")
        .bind(token())
        .execute(&db)
        .await;
    println!(
        "CALLKILL result={:?}",
        result.as_ref().map(|_| ()).map_err(|e| e.to_string())
    );
    assert!(result.is_err());
}

#[test]
fn scenario_a_second_call_that_commits_then_loses_its_session_is_caught() {
    let _serial = serial();
    call_commits_then_next_process(
        "child_callkill_ctl_1_second_call_commits_then_dies",
        &common::unique_token("adv23d"),
    );
}

// ---- a test that kills every other session in the working database -----------

#[db_test(migrator = "ADV")]
async fn child_killall_1_plain(db: TestDb) {
    insert_item(&db, "killall-1").await;
}

#[db_test(migrator = "ADV")]
async fn child_killall_2_kills_every_other_session(db: TestDb) {
    let (me, database): (u64, String) =
        sqlx::query_as("SELECT CONNECTION_ID(), CAST(DATABASE() AS CHAR)")
            .fetch_one(&db)
            .await
            .unwrap();
    insert_item(&db, "killall-2").await;
    if scenario() != "killall" {
        return;
    }
    let options = db.connect_options();
    let killed = tokio::task::spawn_blocking(move || {
        outside(options, async move |c: &mut MySqlConnection| {
            let ids: Vec<u64> = sqlx::query_scalar(
                "SELECT CAST(id AS UNSIGNED) FROM information_schema.processlist \
                 WHERE db = ? AND id <> ? AND id <> CONNECTION_ID()",
            )
            .bind(&database)
            .bind(me)
            .fetch_all(&mut *c)
            .await
            .unwrap();
            for id in &ids {
                let _ = c
                    .execute(sqlx::AssertSqlSafe(format!("KILL CONNECTION {id}")))
                    .await;
            }
            ids.len()
        })
    })
    .await
    .unwrap();
    println!("KILLALL killed={killed}");
}

#[db_test(migrator = "ADV")]
async fn child_killall_3_next(db: TestDb) {
    let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM item WHERE name LIKE 'killall-%'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(seen, 0);
    insert_item(&db, "killall-3").await;
}

#[db_test(migrator = "ADV", isolation = "database")]
async fn child_killall_4_database_mode(db: TestDb) {
    insert_item(&db, "killall-4").await;
}

#[db_test(migrator = "ADV")]
async fn child_killall_5_next(db: TestDb) {
    let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM item WHERE name LIKE 'killall-%'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(seen, 0);
    let options = db.connect_options();
    let committed =
        tokio::task::spawn_blocking(move || committed_items(options, "killall-%".into()))
            .await
            .unwrap();
    assert_eq!(committed, 0, "a row was committed");
}

#[test]
fn scenario_a_test_that_kills_every_other_session_in_the_working_database() {
    let _serial = serial();
    let tests = [
        "child_killall_1_plain",
        "child_killall_2_kills_every_other_session",
        "child_killall_3_next",
        "child_killall_4_database_mode",
        "child_killall_5_next",
    ];
    let (ok, all) = run_scenario("killall", &tests, &[]);
    assert!(ok && all.contains("5 passed"), "{all}");
    // The next process too.
    let (ok, all) = run_scenario("killall", &["child_killall_5_next"], &[]);
    assert!(ok, "{all}");
}

// ---- db-test's admin connections ended between tests --------------------------
//
// A test that ends the server's other idle sessions (say, to test its
// app's reconnects) also ends db-test's admin connections; a database-mode
// test right after it must still get its database.

#[db_test(migrator = "ADV", isolation = "database")]
async fn child_admin_1_database_mode(db: TestDb) {
    insert_item(&db, "admin-1").await;
}

#[db_test(migrator = "ADV")]
async fn child_admin_2_ends_idle_sessions(db: TestDb) {
    if scenario() != "admin" {
        return;
    }
    let me: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&db)
        .await
        .unwrap();
    let options = db.connect_options();
    let killed = tokio::task::spawn_blocking(move || {
        outside(options, async move |c: &mut MySqlConnection| {
            // Idle sessions outside any test database (db-test's admin
            // connections end their work in `information_schema`).
            let ids: Vec<u64> = sqlx::query_scalar(
                "SELECT CAST(id AS UNSIGNED) FROM information_schema.processlist \
                 WHERE db = 'information_schema' AND command = 'Sleep' \
                 AND id <> ? AND id <> CONNECTION_ID()",
            )
            .bind(me)
            .fetch_all(&mut *c)
            .await
            .unwrap();
            for id in &ids {
                let _ = c
                    .execute(sqlx::AssertSqlSafe(format!("KILL CONNECTION {id}")))
                    .await;
            }
            ids.len()
        })
    })
    .await
    .unwrap();
    println!("ADMIN killed={killed}");
}

#[db_test(migrator = "ADV", isolation = "database")]
async fn child_admin_3_database_mode(db: TestDb) {
    insert_item(&db, "admin-3").await;
}

#[test]
fn scenario_database_mode_after_the_admin_connections_were_ended() {
    let _serial = serial();
    let tests = [
        "child_admin_1_database_mode",
        "child_admin_2_ends_idle_sessions",
        "child_admin_3_database_mode",
    ];
    let (ok, all) = run_scenario("admin", &tests, &[]);
    assert!(ok && all.contains("3 passed"), "{all}");
}
