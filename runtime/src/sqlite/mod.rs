//! SQLite: `Db`, `TestDb` and the engine behind `#[db_test]` on `SqlitePool`.
//!
//! A test runs on SQLite when one of its parameters is a SQLite type:
//! [`TestDb`], [`Db`], `SqlitePool`, `PoolConnection<Sqlite>`,
//! `(SqlitePoolOptions, SqliteConnectOptions)`, or a `TestClient<A>` whose
//! `A::BACKEND` is `Backend::Sqlite`.
//!
//! ```no_run
//! use db_test::db_test;
//! use db_test::sqlite::TestDb;
//!
//! #[db_test]
//! async fn counts_users(db: TestDb) {
//!     sqlx::query("INSERT INTO users (email) VALUES ('a@example.com')")
//!         .execute(&db).await.unwrap();
//!     let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
//!         .fetch_one(&db).await.unwrap();
//!     assert_eq!(n, 1);
//! }
//! ```
//!
//! # How tests are isolated
//!
//! The migrations run once per migrations hash, into a template file
//! (`db-test-tmpl-<hash>.sqlite`), built under a file lock so that parallel test
//! processes (nextest) build it once. SQLite has one writer per file, so no
//! two tests ever share one:
//!
//! - **Transaction mode** (the default; [`TestDb`], [`Db`]): the test's one
//!   connection is to an *in-memory* copy of the template
//!   (`sqlite3_deserialize`), inside a transaction that is rolled back when
//!   the test ends; app commits are savepoints (see [`crate::generic`]).
//!   Copies are pooled and reused by later tests of the process, so most
//!   tests copy nothing. Nothing touches the disk.
//! - **Database mode** (`SqlitePool` and friends, or `isolation =
//!   "database"`): a *file* copy of the template of the test's own
//!   (`db-test-<id>-<n>.sqlite`, `<id>` random per process) and a pool on
//!   it of up to 1000 connections, as `#[sqlx::test]` gives
//!   (`DB_TEST_DATABASE_POOL_SIZE` if set): real commits, several
//!   connections, the journal mode the migrations left. Fixtures run on a
//!   connection of their own, closed before the test's pool opens, as
//!   under `#[sqlx::test]`. The file is deleted when the test ends; with
//!   `DB_TEST_KEEP_FAILED=1` a failed test's file is kept and its path
//!   printed. Each process holds an `flock` on `db-test-<id>.lock` while
//!   it lives; the files of a process whose lock is free (it died) are
//!   removed by the next process that uses the directory, whatever PID
//!   namespace or container either runs in. No file of any other name is
//!   ever removed. The test's pool caches no prepared statements (see
//!   below: a `SELECT *` cached before DDL would panic sqlx's worker).
//!
//! Per test copy, measured with `cargo run --release -p db-test-tests
//! --example sqlite_copy` (a 128 KiB template; 2 MiB in brackets):
//! in-memory deserialize 0.44-0.69 ms (1.7 ms), file copy 0.66 ms (5.6 ms),
//! `VACUUM INTO` 5.8 ms (29 ms); a transaction-mode test on a reused copy
//! costs ~0.08 ms. Database mode uses the file copy because its copy must
//! be shared by several connections.
//!
//! Foreign keys are on, as under `#[sqlx::test]`.
//!
//! # Where files go
//!
//! `DB_TEST_SQLITE_DIR` if set; else the directory of the file that
//! `DB_TEST_SQLITE_URL` names, such as `sqlite:///var/tmp/tests.db`
//! (`/var/tmp`; the file itself is never opened, let alone migrated); else
//! `db-test-sqlite/` in the test binary's target directory
//! (`target/debug/db-test-sqlite`). A `sqlite:` `DATABASE_URL` (the app's
//! database, for sqlx's query macros) keeps that default, as
//! `#[sqlx::test]` does: db-test writes nothing next to the app's database.
//! So does `sqlite::memory:`: transaction-mode copies are in memory in
//! every case. A `DATABASE_URL` of another database (`postgres://...`,
//! kept for a suite's server tests or the query macros) is not read by a
//! SQLite test, as under `#[sqlx::test]`; `DB_TEST_SQLITE_URL` must be a
//! SQLite URL. Every file db-test makes there starts with `db-test-`.
//!
//! # What differs from production under test (transaction mode)
//!
//! - Refused before they reach SQLite, failing the test (every later
//!   statement gets the same error): `COMMIT`, `END`, `ROLLBACK` (not
//!   `ROLLBACK TO`), `BEGIN`, `RELEASE`/`ROLLBACK TO` of db-test's or sqlx's
//!   savepoints, anywhere in a multi-statement string (a trigger's `BEGIN ..
//!   END` body is not mistaken for them); and `VACUUM`, `ATTACH`, `DETACH`,
//!   which cannot run in a transaction. Use `isolation = "database"` for them.
//! - A statement whose future was dropped (a timeout, `select!`) is
//!   waited for before the next one runs; a read (by its first keyword:
//!   `SELECT`, `VALUES`, `EXPLAIN`, a `WITH .. SELECT`) still running after
//!   250 ms is interrupted; anything else (`INSERT`, `CREATE TABLE .. AS
//!   SELECT`, `REINDEX`, ...) runs to its end, as it would in production:
//!   SQLite would roll back the whole transaction of an interrupted write.
//!   Then the test's transaction is checked (SQLite answers with no
//!   statement): a dropped statement whose error ended it (`INSERT OR
//!   ROLLBACK`, a trigger's `RAISE(ROLLBACK)`) fails the test, and its copy
//!   is not reused.
//! - `PRAGMA foreign_keys = ...` and other pragmas SQLite ignores inside a
//!   transaction have no effect. A test that sends any `PRAGMA` gets its
//!   in-memory copy closed at its end rather than reused, so that a setting
//!   that outlives the rollback (`query_only`, ...) never reaches another test.
//! - `check_constraints = true` runs `PRAGMA foreign_key_check` before the
//!   rollback and fails the test on a violation the test introduced (what
//!   `COMMIT` would reject with `DEFERRABLE INITIALLY DEFERRED` foreign
//!   keys); violations the migrations left in the template (rows imported
//!   with foreign keys off) are left out. Before that, deferred keys are
//!   checked where production's `COMMIT` would check them: after each
//!   statement outside an app transaction (run in a savepoint, undone if it
//!   leaves one broken, failing with SQLite's error) and at the outermost
//!   app transaction's `commit()` (rolled back instead), when the schema has
//!   deferred keys or the test's SQL mentions deferring.
//! - After DDL (`CREATE`/`ALTER`/`DROP`) through `Db`, sqlx's statement
//!   cache is cleared before each of the test's statements; when
//!   `acquire()` hands out the bare connection (which may run DDL unseen),
//!   it is cleared then and once more before the next statement:
//!   sqlx keeps the columns a cached `SELECT *` was prepared with, SQLite
//!   re-prepares it after the change with others, and sqlx-sqlite then
//!   panics (under `#[sqlx::test]` too). The cache of a pooled copy's
//!   earlier test is cleared the same way. In database mode the test's
//!   pool has no statement cache at all.
//! - Migrations that turn on WAL work: the in-memory copies are opened with
//!   a rollback journal (in memory), database-mode copies stay in WAL.
//! - A statement still running when the test times out is interrupted
//!   (`SQLITE_INTERRUPT`, from a progress handler db-test puts on the test's
//!   connections, in both modes; not on a pool the test builds itself from
//!   `(SqlitePoolOptions, SqliteConnectOptions)`).

#[cfg(feature = "harness")]
mod engine;
#[cfg(feature = "harness")]
mod refuse;
#[cfg(feature = "harness")]
mod setup;

#[cfg(feature = "harness")]
pub(crate) use setup::setup;

use sqlx::Sqlite;

/// The app-facing handle on a SQLite database: a [`sqlx::SqlitePool`] in
/// production, the test's transaction under `#[db_test]`. See
/// [`generic::Db`](crate::generic::Db).
pub type Db = crate::generic::Db<Sqlite>;

/// A transaction from [`Db::begin`](crate::generic::Db::begin).
pub type DbTransaction = crate::generic::DbTransaction<Sqlite>;

/// A connection from [`Db::acquire`](crate::generic::Db::acquire).
pub type DbConnection = crate::generic::DbConnection<Sqlite>;

/// The test's handle on its SQLite database. See
/// [`generic::TestDb`](crate::generic::TestDb).
#[cfg(feature = "harness")]
pub type TestDb = crate::generic::TestDb<Sqlite>;

impl crate::generic::sealed::Sealed for Sqlite {}

impl crate::generic::Dialect for Sqlite {
    #[cfg(feature = "harness")]
    const BACKEND: crate::Backend = crate::Backend::Sqlite;

    #[cfg(feature = "harness")]
    fn refuse(sql: &str, _cautious: bool) -> Option<String> {
        refuse::refuse(sql)
    }
    #[cfg(not(feature = "harness"))]
    fn refuse(_sql: &str, _cautious: bool) -> Option<String> {
        None
    }

    /// The foreign key violations the test introduced: those of the whole
    /// database less the template's own, which the migrations left and
    /// which each in-memory copy records as it opens (see
    /// `engine::fk_baseline`). SQLite checks immediate foreign keys at each
    /// statement, so what is left is what `COMMIT` rejects: a deferred
    /// foreign key (or every one under `PRAGMA defer_foreign_keys`).
    const CHECK_CONSTRAINTS: Option<&'static str> = Some(
        "SELECT * FROM pragma_foreign_key_check EXCEPT SELECT * FROM temp.db_test_fk_baseline",
    );

    /// A pragma may set connection state that outlives the rollback
    /// (`query_only`, `recursive_triggers`, `case_sensitive_like`, ...);
    /// DDL (`CREATE`/`ALTER`/`DROP`) leaves sqlx's statement cache with the
    /// columns of a schema the rollback undid (a `SELECT *` of the next test
    /// would read the wrong columns).
    #[cfg(feature = "harness")]
    fn touches_session(sql: &str) -> bool {
        crate::sqltext::contains_any_ignore_case(sql, &["PRAGMA"]) || refuse::has_ddl(sql)
    }

    /// sqlx's SQLite statement cache keeps each statement's columns as
    /// prepared; SQLite re-prepares it after DDL, with other columns.
    #[cfg(feature = "harness")]
    fn changes_schema(sql: &str) -> bool {
        refuse::has_ddl(sql)
    }

    fn clear_statements(
        conn: &mut sqlx::SqliteConnection,
    ) -> Option<futures_util::future::BoxFuture<'_, sqlx::Result<()>>> {
        use sqlx::Connection;
        Some(Box::pin(conn.clear_cached_statements()))
    }

    /// SQLite's own answer, at any depth: SQL cannot ask it without
    /// changing something (releasing db-test's savepoint releases every
    /// savepoint after it, the app's own included).
    fn in_transaction(
        conn: &mut sqlx::SqliteConnection,
    ) -> Option<futures_util::future::BoxFuture<'_, sqlx::Result<bool>>> {
        Some(Box::pin(async move {
            let mut handle = conn.lock_handle().await?;
            let raw = handle.as_raw_handle().as_ptr().cast::<std::ffi::c_void>();
            // SAFETY: `raw` is the connection's open handle, locked away
            // from sqlx's worker thread while `handle` lives;
            // `sqlite3_get_autocommit` only reads its state.
            Ok(unsafe { sqlite3_get_autocommit(raw) } == 0)
        }))
    }

    /// SQLite switches it off at every `COMMIT` and `ROLLBACK`.
    const RESET_AT_TRANSACTION_END: Option<(&'static str, &'static str)> =
        Some(("DEFER_FOREIGN_KEYS", "PRAGMA defer_foreign_keys = OFF"));

    #[cfg(feature = "harness")]
    fn advice(sql: &str) -> Option<&'static str> {
        refuse::turns_foreign_keys_off(sql).then_some(
            "`PRAGMA foreign_keys = OFF` does nothing inside a transaction (SQLite's rule), and a \
             transaction-mode test runs in one: foreign keys stay on, and rows inserted out of \
             order fail with `FOREIGN KEY constraint failed`. `PRAGMA defer_foreign_keys = ON` \
             works there (db-test checks deferred keys where a COMMIT would), or use \
             `isolation = \"database\"`.",
        )
    }

    #[cfg(feature = "harness")]
    fn fixture_in_transaction(sql: &'static str) -> std::borrow::Cow<'static, str> {
        match refuse::dump_body(sql) {
            Some(body) => std::borrow::Cow::Owned(body),
            None => std::borrow::Cow::Borrowed(sql),
        }
    }

    #[cfg(feature = "harness")]
    fn track_savepoints(sql: &str, open: &mut Vec<String>) {
        refuse::track_savepoints(sql, open);
    }

    /// `SQLITE_DBSTATUS_DEFERRED_FKS`: whether the transaction holds
    /// foreign key violations that `COMMIT` would reject (deferred keys,
    /// or every key under `PRAGMA defer_foreign_keys`), as SQLite counts
    /// them, rolled-back savepoints taken back. It fails as SQLite's own
    /// `COMMIT` fails.
    fn deferred_violation(
        conn: &mut sqlx::SqliteConnection,
    ) -> Option<futures_util::future::BoxFuture<'_, sqlx::Result<Option<sqlx::Error>>>> {
        Some(Box::pin(async move {
            let mut handle = conn.lock_handle().await?;
            let raw = handle.as_raw_handle().as_ptr().cast::<std::ffi::c_void>();
            let (mut current, mut highest) = (0, 0);
            // SAFETY: as in `in_transaction`; `sqlite3_db_status` with this
            // option only reads the connection's count.
            let rc = unsafe {
                sqlite3_db_status(
                    raw,
                    SQLITE_DBSTATUS_DEFERRED_FKS,
                    &mut current,
                    &mut highest,
                    0,
                )
            };
            Ok((rc == 0 && current > 0)
                .then(|| sqlx::Error::Database(Box::new(DeferredForeignKey))))
        }))
    }

    crate::generic::dialect_executors!();
}

/// `sqlite3_db_status`'s option for unresolved deferred foreign keys.
const SQLITE_DBSTATUS_DEFERRED_FKS: std::ffi::c_int = 10;

/// The error of a `COMMIT` that deferred foreign keys fail, as SQLite
/// reports it: `SQLITE_CONSTRAINT_FOREIGNKEY` (787), "FOREIGN KEY
/// constraint failed".
#[derive(Debug)]
struct DeferredForeignKey;

impl std::fmt::Display for DeferredForeignKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FOREIGN KEY constraint failed")
    }
}

impl std::error::Error for DeferredForeignKey {}

impl sqlx::error::DatabaseError for DeferredForeignKey {
    fn message(&self) -> &str {
        "FOREIGN KEY constraint failed"
    }
    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some("787".into())
    }
    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }
    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::ForeignKeyViolation
    }
}

// The SQLite library sqlx links (libsqlite3-sys), which sqlx calls the same
// way (`ConnectionHandle::in_transaction`).
unsafe extern "C" {
    fn sqlite3_get_autocommit(db: *mut std::ffi::c_void) -> std::ffi::c_int;
    fn sqlite3_db_status(
        db: *mut std::ffi::c_void,
        op: std::ffi::c_int,
        current: *mut std::ffi::c_int,
        highest: *mut std::ffi::c_int,
        reset: std::ffi::c_int,
    ) -> std::ffi::c_int;
    /// What `last_insert_rowid()` answers until the next insert.
    #[cfg(feature = "harness")]
    pub(super) fn sqlite3_set_last_insert_rowid(db: *mut std::ffi::c_void, rowid: i64);
}

/// The test's [`Db`], for a `TestApp::build` (or your own
/// `FromTestContext` type) on SQLite:
///
/// ```no_run
/// use db_test::{TestApp, TestContext};
///
/// struct App;
///
/// impl TestApp for App {
///     const BACKEND: db_test::Backend = db_test::Backend::Sqlite;
///     async fn build(ctx: &TestContext) -> axum::Router {
///         let db = db_test::sqlite::db(ctx);
///         axum::Router::new().with_state(db)
///     }
/// }
/// ```
///
/// # Panics
///
/// If the test does not run on SQLite.
#[cfg(feature = "harness")]
pub fn db(ctx: &crate::TestContext) -> Db {
    match crate::generic::test_state::<Sqlite>(ctx, "db_test::sqlite::Db") {
        Ok(state) => state.db.clone(),
        Err(e) => panic!("{e}"),
    }
}
