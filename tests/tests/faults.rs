//! Faults: killed connections, lock conflicts between tests, deadlocks, and a
//! `Db` used after its test ended.

use std::cell::RefCell;
use std::time::Duration;

use db_test::{Db, TestContext, TestDb, db_test};
use sqlx::{Connection, PgConnection};

thread_local! {
    static KILLED: RefCell<Option<i64>> = const { RefCell::new(None) };
    static LEAKED: RefCell<Option<Db>> = const { RefCell::new(None) };
}

/// A raw connection to the test's database that is not one of the pool's, so
/// `kill_idle_pool_connections` leaves it alone.
async fn other_connection(options: sqlx::postgres::PgConnectOptions) -> PgConnection {
    PgConnection::connect_with(&options.application_name("faults: another test"))
        .await
        .unwrap()
}

/// Terminates this process's idle pool connections to this database, as a
/// server restart would. Connections inside a running test are left alone, and
/// so are other test processes' connections (a sharded run shares the working
/// database): the pool names its connections `db-test <pid>`.
#[db_test]
async fn kill_idle_pool_connections(ctx: TestContext) {
    let mut admin = other_connection(ctx.connect_options()).await;
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND state = 'idle' AND application_name = $1",
    )
    .bind(format!("db-test {}", std::process::id()))
    .fetch_one(&mut admin)
    .await
    .unwrap();
    KILLED.with(|k| *k.borrow_mut() = Some(killed));
    admin.close().await.unwrap();
}

#[db_test]
async fn plain_insert_and_count(db: TestDb) {
    sqlx::query("INSERT INTO users (email) VALUES ('after-restart@example.com')")
        .execute(&db)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

/// Warm the pool, kill its connections, and every later test still passes:
/// the pool reconnects by itself.
#[test]
fn the_pool_reconnects_after_its_connections_are_killed() {
    let pool_warmers: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(plain_insert_and_count))
        .collect();
    for t in pool_warmers {
        t.join().unwrap();
    }
    kill_idle_pool_connections();
    let killed = KILLED.with(|k| k.borrow_mut().take()).unwrap();
    assert!(killed >= 1, "there were idle pool connections to kill");
    for _ in 0..10 {
        plain_insert_and_count();
    }
}

#[db_test]
async fn leaks_its_db(db: TestDb) {
    LEAKED.with(|l| *l.borrow_mut() = Some(db.db()));
    sqlx::query("SELECT 1").execute(&db).await.unwrap();
}

#[test]
fn a_db_used_after_its_test_ended_says_the_test_is_over() {
    leaks_its_db();
    let db = LEAKED.with(|l| l.borrow_mut().take()).unwrap();
    let err = db_test::runtime()
        .block_on(async { sqlx::query("SELECT 1").execute(&db).await })
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("is over"), "{msg}");
    assert!(msg.contains("leaks_its_db"), "{msg}");
}

#[db_test]
async fn a_task_still_running_when_the_test_ends(db: TestDb) {
    let app = db.db();
    // An app task that outlives the test; the test ends cleanly regardless.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let err = sqlx::query("SELECT 1").execute(&app).await.unwrap_err();
        assert!(err.to_string().contains("is over"), "{err}");
    });
    sqlx::query("SELECT 1").execute(&db).await.unwrap();
}

#[db_test]
async fn a_row_lock_held_by_another_test_is_explained(db: TestDb) {
    let email = format!("locked-{}@example.com", std::process::id());
    // "Another test": a second transaction holding the same unique key.
    let mut other = other_connection(db.connect_options()).await;
    let mut other_tx = other.begin().await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ($1)")
        .bind(&email)
        .execute(&mut *other_tx)
        .await
        .unwrap();

    sqlx::query("SET lock_timeout = '200ms'")
        .execute(&db)
        .await
        .unwrap();
    let err = sqlx::query("INSERT INTO users (email) VALUES ($1)")
        .bind(&email)
        .execute(&db)
        .await
        .unwrap_err();
    let db_err = err.as_database_error().expect("a database error");
    assert_eq!(db_err.code().as_deref(), Some("55P03"));
    let msg = err.to_string();
    assert!(
        msg.contains("another test holds a conflicting row lock"),
        "{msg}"
    );
    assert!(msg.contains("isolation = \"database\""), "{msg}");
    other_tx.rollback().await.unwrap();
    // The test's transaction survived the failed statement.
    sqlx::query("INSERT INTO users (email) VALUES ($1)")
        .bind(&email)
        .execute(&db)
        .await
        .unwrap();
}

#[db_test]
async fn a_deadlock_on_the_test_connection_is_explained(db: TestDb) {
    let mut other = other_connection(db.connect_options()).await;
    let mut other_tx = other.begin().await.unwrap();
    // Longer than deadlock_timeout (1 s), so the deadlock is found first.
    sqlx::query("SET LOCAL lock_timeout = '1500ms'")
        .execute(&mut *other_tx)
        .await
        .unwrap();
    // Both sides take advisory locks in opposite order.
    sqlx::query("SELECT pg_advisory_xact_lock(9001)")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(9002)")
        .execute(&mut *other_tx)
        .await
        .unwrap();
    let waiting = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sqlx::query("SELECT pg_advisory_xact_lock(9001)")
            .execute(&mut *other_tx)
            .await
    };
    let mine = sqlx::query("SELECT pg_advisory_xact_lock(9002)").execute(&db);
    let (theirs, mine) = tokio::join!(waiting, mine);
    // The test's side waited first, so it runs the deadlock check and is the
    // victim; the other side then times out on the lock the test still holds.
    assert!(theirs.is_err());
    let err = mine.expect_err("the test's statement is the deadlock victim");
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("40P01")
    );
    assert!(err.to_string().contains("a real deadlock (40P01)"), "{err}");
    other_tx.rollback().await.unwrap();
}
