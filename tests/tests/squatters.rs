//! Databases named the way db-test names its own, but not made by it (a
//! user's, or another tool's): db-test never claims, sweeps or drops them.
//! Names alone do not decide: every database db-test makes carries its mark
//! (a setting of its role in that database, copied from the template).
//!
//! The parent test runs the `child_*` tests of this binary in child
//! processes: each process sweeps leftovers and outdated databases when it
//! starts, and each database-mode test claims a spare if there is one. Run
//! on their own, the `child_*` tests are ordinary tests that pass.

mod common;

use std::time::Duration;

use db_test::db_test;
use sqlx::{Connection, PgConnection, PgPool};

/// Prints the name of its database, from which the parent learns the
/// names db-test gives this template's databases.
#[db_test(migrations = "migrations")]
async fn child_squat_a(pool: PgPool) {
    let name: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    println!("DATABASE {name}");
}

#[db_test(migrations = "migrations")]
async fn child_squat_b(pool: PgPool) {
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(users, 0, "a test got a database that is not the template's");
}

#[db_test(migrations = "migrations")]
async fn child_squat_c(pool: PgPool) {
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(users, 0, "a test got a database that is not the template's");
}

fn admin<T>(f: impl AsyncFnOnce(&mut PgConnection) -> T) -> T {
    let url = db_test::server_url().unwrap();
    db_test::runtime().block_on(async {
        let mut conn = PgConnection::connect(&url).await.unwrap();
        let out = f(&mut conn).await;
        let _ = conn.close().await;
        out
    })
}

#[test]
fn databases_named_like_db_tests_own_but_not_made_by_it_are_left_alone() {
    let run = || {
        common::run_ok(
            common::children(&["child_squat_a", "child_squat_b", "child_squat_c"]),
            "the database-mode tests",
        )
    };
    let text = run();
    let name = common::word_after(&text, "DATABASE ").expect("the child named its database");
    // `<prefix>_d<owner>_<n>`, `<prefix>` = `<source>_<hash>`.
    let prefix = name
        .rsplit_once("_d")
        .expect("a per-test name")
        .0
        .to_string();
    let source = prefix.rsplit_once('_').expect("a prefix").0.to_string();
    // A spare, a leftover of a dead process, and a working database of a
    // hash without a template (which db-test would sweep as outdated): by
    // their names, each would be db-test's. Each holds the user's data.
    let squatters = [
        format!("{prefix}_s1234abcd_1"),
        format!("{prefix}_d1234abcd_7"),
        format!("{source}_0123456789_w"),
    ];
    admin(async |conn| {
        for db in &squatters {
            for sql in [
                format!("DROP DATABASE IF EXISTS \"{db}\""),
                format!("CREATE DATABASE \"{db}\""),
            ] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *conn)
                    .await
                    .unwrap();
            }
        }
    });
    let url = db_test::server_url().unwrap();
    for db in &squatters {
        let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
        db_test::runtime().block_on(async {
            let mut c = PgConnection::connect_with(&options.database(db))
                .await
                .unwrap();
            sqlx::raw_sql(
                "CREATE TABLE users (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL); \
                 INSERT INTO users (email) VALUES ('precious@example.com')",
            )
            .execute(&mut c)
            .await
            .unwrap();
            c.close().await.unwrap();
        });
    }
    // Later processes: each sweeps when it starts, each test claims.
    let mut outcome = Ok(());
    for _ in 0..3 {
        let cmd = common::children(&["child_squat_a", "child_squat_b", "child_squat_c"]);
        let (out, text) = common::run_until(cmd, Duration::from_secs(300));
        if !out.status.success() {
            outcome = Err(text);
            break;
        }
    }
    let intact: Vec<(String, bool)> = admin(async |conn| {
        let mut intact = Vec::new();
        for db in &squatters {
            let exists: bool =
                sqlx::query_scalar("SELECT exists(SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(db)
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap();
            intact.push((db.clone(), exists));
        }
        intact
    });
    let rows: Vec<i64> = squatters
        .iter()
        .zip(&intact)
        .filter(|(_, (_, exists))| *exists)
        .map(|(db, _)| {
            let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
            db_test::runtime().block_on(async {
                let mut c = PgConnection::connect_with(&options.database(db))
                    .await
                    .unwrap();
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM users WHERE email = 'precious@example.com'",
                )
                .fetch_one(&mut c)
                .await
                .unwrap();
                c.close().await.unwrap();
                n
            })
        })
        .collect();
    admin(async |conn| {
        for db in &squatters {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{db}\""
            )))
            .execute(&mut *conn)
            .await;
        }
    });
    if let Err(text) = outcome {
        panic!("a later run failed:\n{text}");
    }
    for (db, exists) in &intact {
        assert!(exists, "{db} was dropped or renamed");
    }
    assert_eq!(rows, vec![1; squatters.len()], "the squatters' rows");
}
