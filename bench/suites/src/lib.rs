//! The one workload every benchmark variant runs, and the helpers of the
//! hand-rolled variant. See `bench/README.md`.

pub use sqlx;

/// One test's work: insert a user, read it back, update it, count the rows.
/// Four statements, the same in every variant.
///
/// `$ex` is evaluated once per statement, so `&db`, `&pool` and `&mut *tx`
/// all work. `$i` makes the e-mail address unique, so that tests running at
/// the same time never wait on each other's rows in the unique index.
///
/// `workload!(&db, i)` is PostgreSQL's; `workload!(mysql: &db, i)` and
/// `workload!(sqlite: &db, i)` are the same four statements in MySQL's and
/// SQLite's dialects (`?` parameters; MySQL has no `RETURNING`, so the id is
/// the insert's `LAST_INSERT_ID()`, which the server sends back with its
/// result: no extra round trip).
#[macro_export]
macro_rules! workload {
    (mysql: $ex:expr, $i:expr) => {{
        let email = format!("bench-{}@example.com", $i);
        let inserted = $crate::sqlx::query("INSERT INTO users (email, name) VALUES (?, ?)")
            .bind(&email)
            .bind("Bench User")
            .execute($ex)
            .await
            .expect("insert a user");
        let id = i64::try_from(inserted.last_insert_id()).expect("an id fits in a BIGINT");
        let (got, name): (String, String) =
            $crate::sqlx::query_as("SELECT email, name FROM users WHERE id = ?")
                .bind(id)
                .fetch_one($ex)
                .await
                .expect("read the user back");
        assert_eq!(
            (got.as_str(), name.as_str()),
            (email.as_str(), "Bench User")
        );
        let updated =
            $crate::sqlx::query("UPDATE users SET name = ?, updated_at = NOW(6) WHERE id = ?")
                .bind("Renamed User")
                .bind(id)
                .execute($ex)
                .await
                .expect("update the user")
                .rows_affected();
        assert_eq!(updated, 1);
        let count: i64 = $crate::sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one($ex)
            .await
            .expect("count the users");
        assert!(count >= 1);
    }};
    (sqlite: $ex:expr, $i:expr) => {{
        let email = format!("bench-{}@example.com", $i);
        let id: i64 = $crate::sqlx::query_scalar(
            "INSERT INTO users (email, name) VALUES (?, ?) RETURNING id",
        )
        .bind(&email)
        .bind("Bench User")
        .fetch_one($ex)
        .await
        .expect("insert a user");
        let (got, name): (String, String) =
            $crate::sqlx::query_as("SELECT email, name FROM users WHERE id = ?")
                .bind(id)
                .fetch_one($ex)
                .await
                .expect("read the user back");
        assert_eq!(
            (got.as_str(), name.as_str()),
            (email.as_str(), "Bench User")
        );
        let updated = $crate::sqlx::query(
            "UPDATE users SET name = ?, updated_at = CURRENT_TIMESTAMP WHERE id = ?",
        )
        .bind("Renamed User")
        .bind(id)
        .execute($ex)
        .await
        .expect("update the user")
        .rows_affected();
        assert_eq!(updated, 1);
        let count: i64 = $crate::sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one($ex)
            .await
            .expect("count the users");
        assert!(count >= 1);
    }};
    ($ex:expr, $i:expr) => {{
        let email = format!("bench-{}@example.com", $i);
        let id: i64 = $crate::sqlx::query_scalar(
            "INSERT INTO users (email, name) VALUES ($1, $2) RETURNING id",
        )
        .bind(&email)
        .bind("Bench User")
        .fetch_one($ex)
        .await
        .expect("insert a user");
        let (got, name): (String, String) =
            $crate::sqlx::query_as("SELECT email, name FROM users WHERE id = $1")
                .bind(id)
                .fetch_one($ex)
                .await
                .expect("read the user back");
        assert_eq!(
            (got.as_str(), name.as_str()),
            (email.as_str(), "Bench User")
        );
        let updated =
            $crate::sqlx::query("UPDATE users SET name = $1, updated_at = now() WHERE id = $2")
                .bind("Renamed User")
                .bind(id)
                .execute($ex)
                .await
                .expect("update the user")
                .rows_affected();
        assert_eq!(updated, 1);
        let count: i64 = $crate::sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one($ex)
            .await
            .expect("count the users");
        assert!(count >= 1);
    }};
}

/// `DATABASE_URL`, which the hand-rolled variants (D, E) and `#[sqlx::test]`
/// read; `bench/run.sh` points it at a database the benchmark created.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set. This suite is run by bench/run.sh, which creates a \
             database for it and sets DATABASE_URL."
        )
    })
}

/// The floor's runtime (E): a current-thread one, or with `multi_thread`
/// a 2-worker multi-thread one, the shape of db-test's shared runtime.
pub fn floor_runtime(multi_thread: bool) -> tokio::runtime::Runtime {
    let mut builder = if multi_thread {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().expect("build a tokio runtime")
}

/// The hand-rolled way: a brand-new pool for every test.
pub async fn fresh_pool() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(5)
        .connect(&database_url())
        .await
        .expect("connect to DATABASE_URL")
}

/// The hand-rolled cleanup: empty every table of the example app.
pub async fn truncate_all(pool: &sqlx::PgPool) {
    sqlx::query("TRUNCATE users, api_tokens, audit_log")
        .execute(pool)
        .await
        .expect("truncate the tables");
}
