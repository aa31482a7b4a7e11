//! `DB_TEST_MAX_DATABASES` bounds the clones one process runs at once, and
//! that many really do run at once (a clone waiting for its turn holds no
//! admin connection).
//!
//! The parent test runs this test binary again as a child process running
//! the `child_wave_*` tests at once. Their clones are held on the server (a
//! transaction of the parent's holds a lock on the template that `CREATE
//! DATABASE ... TEMPLATE` waits for), so the parent counts the clones in
//! flight from `pg_locks`, with no timing involved. Run on their own, the
//! `child_*` tests are ordinary tests that pass.

mod common;

use std::borrow::Cow;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use common::*;
use db_test::{TestDb, db_test};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Connection, Executor, PgConnection, SqlSafeStr};

const LIMIT: i64 = 4;
const WAVE: usize = 6;

/// A template of this file's own, so no other test clones it meanwhile.
static CLONE_LIMIT: LazyLock<Migrator> = LazyLock::new(|| {
    Migrator::with_migrations(vec![Migration::new(
        1,
        Cow::Borrowed("clone limit"),
        MigrationType::Simple,
        "CREATE TABLE clone_limit (id BIGSERIAL PRIMARY KEY);".into_sql_str(),
        false,
    )])
});

/// Prints its working database.
#[db_test(migrator = "CLONE_LIMIT")]
async fn child_clone_probe(db: TestDb) {
    let name: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&db)
        .await
        .unwrap();
    println!("CLONE_WORKING {name}");
}

macro_rules! child_wave {
    ($($name:ident),*) => {$(
        /// Changes the schema, so its database is dropped rather than
        /// recycled into a spare: every test of the wave clones.
        #[db_test(migrator = "CLONE_LIMIT", isolation = "database")]
        async fn $name(pool: sqlx::PgPool) {
            sqlx::query("CREATE TABLE changed (id INT)").execute(&pool).await.unwrap();
        }
    )*};
}
child_wave!(
    child_wave_1,
    child_wave_2,
    child_wave_3,
    child_wave_4,
    child_wave_5,
    child_wave_6
);

/// Clones of `template` by process `pid` waiting for their lock.
async fn clones_waiting(conn: &mut PgConnection, template: &str, pid: u32) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'object' AND l.classid = 'pg_database'::regclass \
           AND l.objid = (SELECT oid FROM pg_database WHERE datname = $1) \
           AND NOT l.granted AND a.application_name = $2",
    )
    .bind(template)
    .bind(format!("db-test {pid}"))
    .fetch_one(conn)
    .await
    .unwrap()
}

#[test]
fn max_databases_clones_run_at_once_and_no_more() {
    let probe = run_ok(child("child_clone_probe", 1), "the probe");
    let working = word_after(&probe, "CLONE_WORKING ").expect("probe printed");
    let template = format!("{}_t", working.strip_suffix("_w").unwrap());
    let url = db_test::server_url().unwrap();

    let (most, wave) = db_test::runtime().block_on(async {
        let mut monitor = PgConnection::connect(&url).await.unwrap();
        let mut blocker = PgConnection::connect(&url).await.unwrap();
        // Re-setting the template's own comment in an open transaction locks
        // it against CREATE DATABASE ... TEMPLATE; the rollback restores all.
        let comment: Option<String> = sqlx::query_scalar(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
        )
        .bind(&template)
        .fetch_one(&mut monitor)
        .await
        .unwrap();
        let comment = match comment {
            Some(c) => format!("'{}'", c.replace('\'', "''")),
            None => "NULL".into(),
        };
        blocker.execute("BEGIN").await.unwrap();
        blocker
            .execute(sqlx::AssertSqlSafe(format!(
                "COMMENT ON DATABASE \"{template}\" IS {comment}"
            )))
            .await
            .unwrap();

        let mut cmd = child("child_wave_", WAVE);
        cmd.env("DB_TEST_MAX_DATABASES", LIMIT.to_string());
        let wave = cmd.spawn().unwrap();
        let pid = wave.id();
        // Until LIMIT clones wait at once (or give up after a minute: a
        // hang, not a speed check)...
        let mut most = 0;
        let t0 = Instant::now();
        while most < LIMIT && t0.elapsed() < Duration::from_secs(60) {
            most = most.max(clones_waiting(&mut monitor, &template, pid).await);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // ...then a while longer: a clone past the limit would wait here too.
        for _ in 0..100 {
            most = most.max(clones_waiting(&mut monitor, &template, pid).await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        blocker.execute("ROLLBACK").await.unwrap();
        let _ = blocker.close().await;
        let _ = monitor.close().await;
        (most, wave)
    });
    let out = wait(wave, Duration::from_secs(300));
    assert_eq!(
        most,
        LIMIT,
        "with DB_TEST_MAX_DATABASES={LIMIT}, {most} clones ran at once:\n{}",
        text(&out)
    );
    let all = text(&out);
    assert!(out.status.success(), "the wave failed:\n{all}");
    assert!(
        all.contains(&format!("test result: ok. {WAVE} passed")),
        "{all}"
    );
}
