//! Measures the ways to give a SQLite test its own copy of a migrated
//! template, and what a transaction-mode test costs on a pooled copy:
//!
//! ```text
//! cargo run --release -p db-test-tests --example sqlite_copy [ROWS]
//! ```
//!
//! ROWS (default 0) seed rows of ~100 bytes go into the template besides
//! its schema, to see how each method scales with the file's size.

use std::str::FromStr;
use std::time::Instant;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteOwnedBuf};
use sqlx::{ConnectOptions, Connection, Executor};

const N: u32 = 300;

async fn first_query(conn: &mut SqliteConnection) {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM item")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert!(n >= 0);
}

fn report(what: &str, started: Instant) {
    let per = started.elapsed().as_secs_f64() * 1e6 / f64::from(N);
    println!("{what:<58} {per:>9.1} µs per test");
}

#[tokio::main]
async fn main() {
    let rows: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("db-test-sqlite-copy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let template = dir.join("template.sqlite");
    let file = |path: &std::path::Path| {
        SqliteConnectOptions::new()
            .filename(path)
            .foreign_keys(true)
    };

    // A template like a small app's: a few tables and indexes, plus ROWS rows.
    let mut conn = file(&template)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Delete)
        .connect()
        .await
        .unwrap();
    for t in 0..10 {
        conn.execute(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE t{t} (id INTEGER PRIMARY KEY, a TEXT NOT NULL, b INTEGER, \
             c TEXT UNIQUE); CREATE INDEX t{t}_b ON t{t} (b)"
        )))
        .await
        .unwrap();
    }
    conn.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        .await
        .unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!(
        "INSERT INTO item (name) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
         WHERE x < {rows}) SELECT printf('%090d', x) FROM c WHERE {rows} > 0"
    )))
    .await
    .unwrap();
    conn.close().await.unwrap();
    let bytes = std::fs::read(&template).unwrap();
    println!(
        "template: {} bytes, {rows} seed rows, {N} copies each",
        bytes.len()
    );

    // 1. File copy, then open it.
    let t = Instant::now();
    for i in 0..N {
        let path = dir.join(format!("copy-{i}.sqlite"));
        std::fs::copy(&template, &path).unwrap();
        let mut c = file(&path).connect().await.unwrap();
        first_query(&mut c).await;
        c.close().await.unwrap();
        std::fs::remove_file(&path).unwrap();
    }
    report("file copy (std::fs::copy) + open + query + delete", t);

    // 2. VACUUM INTO from an open connection to the template, then open it.
    let mut tmpl = file(&template).connect().await.unwrap();
    let t = Instant::now();
    for i in 0..N {
        let path = dir.join(format!("vacuum-{i}.sqlite"));
        sqlx::query("VACUUM INTO ?")
            .bind(path.display().to_string())
            .execute(&mut tmpl)
            .await
            .unwrap();
        let mut c = file(&path).connect().await.unwrap();
        first_query(&mut c).await;
        c.close().await.unwrap();
        std::fs::remove_file(&path).unwrap();
    }
    report("VACUUM INTO + open + query + delete", t);
    tmpl.close().await.unwrap();

    // 3. An in-memory connection, deserialized from the template's bytes.
    let memory = SqliteConnectOptions::from_str("sqlite::memory:")
        .unwrap()
        .foreign_keys(true);
    let t = Instant::now();
    for _ in 0..N {
        let mut c = memory.connect().await.unwrap();
        c.deserialize(None, SqliteOwnedBuf::try_from(&bytes[..]).unwrap(), false)
            .await
            .unwrap();
        first_query(&mut c).await;
        c.close().await.unwrap();
    }
    report("in-memory open + deserialize + query", t);

    // 4. What db-test's transaction mode does per test once its pooled
    //    in-memory copy exists: begin, savepoint, a statement, rollback.
    let mut c = memory.connect().await.unwrap();
    c.deserialize(None, SqliteOwnedBuf::try_from(&bytes[..]).unwrap(), false)
        .await
        .unwrap();
    let t = Instant::now();
    for _ in 0..N {
        let mut tx = c.begin().await.unwrap();
        tx.execute("SAVEPOINT db_test_auto").await.unwrap();
        tx.execute("INSERT INTO item (name) VALUES ('x')")
            .await
            .unwrap();
        tx.rollback().await.unwrap();
    }
    report(
        "reused in-memory copy: BEGIN, SAVEPOINT, INSERT, ROLLBACK",
        t,
    );
    first_query(&mut c).await;
    c.close().await.unwrap();

    std::fs::remove_dir_all(&dir).unwrap();
}
