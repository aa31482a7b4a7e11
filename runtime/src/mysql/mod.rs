//! MySQL and MariaDB: `Db`, `TestDb` and the engine behind `#[db_test]` on `MySqlPool`.
//!
//! A test runs on MySQL/MariaDB when one of its parameters says so:
//! [`TestDb`], [`Db`], `sqlx::MySqlPool`, `PoolConnection<MySql>`,
//! `(MySqlPoolOptions, MySqlConnectOptions)`, or a `TestClient<A>` whose
//! `A::BACKEND` is `Backend::MySql`.
//!
//! ```no_run
//! use db_test::db_test;
//! use db_test::mysql::TestDb;
//!
//! #[db_test(migrations = "migrations/mysql")]
//! async fn counts_users(db: TestDb) {
//!     sqlx::query("INSERT INTO users (email) VALUES ('a@example.com')")
//!         .execute(&db).await.unwrap();
//!     let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
//!         .fetch_one(&db).await.unwrap();
//!     assert_eq!(n, 1);
//! }
//! ```
//!
//! # The server
//!
//! `DB_TEST_MYSQL_URL`, else a `mysql://`/`mariadb://` `DATABASE_URL`, else
//! an embedded server started from the system's `mariadbd`/`mysqld`
//! (`DB_TEST_MYSQL_BIN`, `PATH`, `/usr/sbin`, ...; `scripts/ensure-mariadb.sh`
//! installs MariaDB's): a private data directory (in memory under
//! `/dev/shm` when it exists, or `DB_TEST_MYSQL_DATA_DIR`; MySQL syncs every file a `CREATE TABLE`
//! makes), a Unix socket and no TCP, tuned for tests (no doublewrite, no
//! flush at commit, no binary log), shared by every test process and
//! stopped after `DB_TEST_MYSQL_IDLE_SECS` (600) without one. db-test only
//! creates, migrates and drops databases of its own there (`dbtest_...`);
//! the database a URL names is never used.
//!
//! # How tests are isolated
//!
//! The migrations run once per migrations hash into a template database,
//! built under `GET_LOCK` so that parallel test processes build it once (a
//! build killed midway is noticed and redone).
//!
//! - **Transaction mode** (the default; [`TestDb`], [`Db`]): the test takes
//!   a connection to the working database (a copy of the template shared by
//!   the process's tests) inside a transaction that is rolled back at the
//!   end; app commits are savepoints (see [`crate::generic`]).
//! - **Database mode** (`MySqlPool` and friends, or `isolation =
//!   "database"`): a database of the test's own, with real commits and DDL.
//!   MySQL has no `CREATE DATABASE ... TEMPLATE`: the template's schema
//!   (tables, views, routines, triggers) and rows are replayed by one
//!   multi-statement script. After the test, in the background, its
//!   database is reset into a spare for a later test when its schema is
//!   still the template's (rows deleted and copied back in one transaction,
//!   moved `AUTO_INCREMENT`s set back; the schema checked by one round trip
//!   of `SHOW` statements), with a new connection opened ahead; a test that
//!   changed its schema has its database dropped. With
//!   `DB_TEST_KEEP_FAILED=1`
//!   a failed test's database is kept.
//!
//! # Traps
//!
//! - **Implicit commits.** MySQL commits the current transaction before DDL
//!   and a few other statements (`CREATE`/`ALTER`/`DROP`/`TRUNCATE`/`RENAME`,
//!   `LOCK TABLES`, `GRANT`, `COMMIT`, `BEGIN`, `SET autocommit`, ...). In
//!   transaction mode such a statement would commit the test's writes into
//!   the shared working database, so db-test refuses it before it is sent,
//!   anywhere in a multi-statement string and inside `/*! ... */`
//!   comments, with an error saying to use `isolation = "database"`.
//!   `CREATE TEMPORARY TABLE` does not commit and is allowed. A stored
//!   procedure that commits cannot be seen from its call: after a `CALL`,
//!   one round trip checks the test's transaction, and the test fails if
//!   the procedure ended it (its writes before were committed; the
//!   working database is cloned again by the next test process started
//!   once no other process has it).
//! - **Session state survives `ROLLBACK`**: temporary tables, user variables,
//!   `GET_LOCK` locks, `PREPARE`d statements, `SET` session variables. A test
//!   that may have left some gets its connection closed at the end instead
//!   of handing it to the next test, its named locks released first (the
//!   server frees them only once it has processed the disconnect, which the
//!   next test could beat). In database mode the locks of the test's idle
//!   connections are released before its pool is closed.
//! - `check_constraints` is a no-op: MySQL has no deferred constraints, so
//!   every constraint is already checked when its statement runs.
//! - Transaction-mode tests share the working database: two running at once
//!   that write the same unique value wait for each other (at most
//!   `DB_TEST_LOCK_TIMEOUT`, 5 s), and with three or more InnoDB may end
//!   one with a deadlock error (1213). Give parallel tests distinct values,
//!   or use `isolation = "database"`.
//! - A timed-out test's running statement is stopped with `KILL QUERY` (its
//!   connection with `KILL CONNECTION` if it does not come back).

#[cfg(feature = "harness")]
mod databases;
#[cfg(feature = "harness")]
mod embedded;
#[cfg(feature = "harness")]
pub(crate) mod engine;
#[cfg(feature = "harness")]
mod lexer;
#[cfg(feature = "harness")]
mod recycle;
#[cfg(feature = "harness")]
mod template;

use sqlx::MySql;

/// The app-facing handle on a MySQL/MariaDB database: a
/// [`sqlx::MySqlPool`] in production (every call goes straight to the pool),
/// the test's rolled-back transaction under `#[db_test]`, where `begin()` is
/// a savepoint and statements that would commit implicitly (DDL, `LOCK
/// TABLES`, `COMMIT`, ...) are refused. See
/// [`generic::Db`](crate::generic::Db).
///
/// ```no_run
/// use db_test::db_test;
/// use db_test::mysql::Db;
///
/// #[db_test(migrations = "migrations/mysql")]
/// async fn counts_users(db: Db) {
///     let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
///         .fetch_one(&db)
///         .await
///         .unwrap();
///     assert_eq!(n, 0);
/// }
/// ```
pub type Db = crate::generic::Db<MySql>;

/// A transaction from [`Db::begin`](crate::generic::Db::begin): a savepoint
/// under test.
pub type DbTransaction = crate::generic::DbTransaction<MySql>;

/// A connection from [`Db::acquire`](crate::generic::Db::acquire): under a
/// transaction-mode test, the test's connection.
pub type DbConnection = crate::generic::DbConnection<MySql>;

/// The test's handle on its MySQL/MariaDB database: the test's transaction
/// (default), or a pool on its own database (`isolation = "database"`). See
/// [`generic::TestDb`](crate::generic::TestDb).
#[cfg(feature = "harness")]
pub type TestDb = crate::generic::TestDb<MySql>;

impl crate::generic::sealed::Sealed for MySql {}

/// A test's transaction at the session's isolation level: it also forgets
/// the last test's `LAST_INSERT_ID()` on the same connection, and sets
/// db-test's savepoint (see `Dialect::BEGIN_TEST`).
macro_rules! begin_at_server_level {
    () => {
        "BEGIN; DO LAST_INSERT_ID(0); SAVEPOINT db_test_auto"
    };
}

/// MySQL/MariaDB: under test, statements that commit implicitly are refused
/// (see the module's docs); `check_constraints` is a no-op, since MySQL has
/// no deferred constraints (every constraint is checked when its statement
/// runs).
impl crate::generic::Dialect for MySql {
    #[cfg(feature = "harness")]
    const BACKEND: crate::Backend = crate::Backend::MySql;

    #[cfg(feature = "harness")]
    fn refuse(sql: &str, cautious: bool) -> Option<String> {
        lexer::session_commit(sql, cautious).map(|found| lexer::refusal(&found))
    }
    #[cfg(not(feature = "harness"))]
    fn refuse(_sql: &str, _cautious: bool) -> Option<String> {
        None
    }

    #[cfg(feature = "harness")]
    fn touches_session(sql: &str) -> bool {
        lexer::leaves_session_state(sql)
    }

    #[cfg(feature = "harness")]
    fn advice_once(sql: &str) -> Option<&'static str> {
        crate::sqltext::contains_any_word_ignore_case(sql, &["AGAINST"]).then_some(
            "InnoDB's FULLTEXT search (`MATCH (..) AGAINST (..)`) does not see rows that are \
             not committed, even by the transaction that wrote them, and a transaction-mode \
             test runs in one: rows the test wrote are not found (in production each is \
             committed first). Give such a test `isolation = \"database\"` (a `MySqlPool` \
             parameter selects it).",
        )
    }

    #[cfg(feature = "harness")]
    fn may_commit_unseen(sql: &str) -> bool {
        lexer::calls_procedure(sql)
    }

    // MariaDB 10.5+, MySQL 5.7+ (an older server's error is ignored).
    const RELEASE_SESSION_LOCKS: Option<&'static str> = Some("DO RELEASE_ALL_LOCKS()");

    // Every check that the test's transaction is open is the same probe: a
    // savepoint of db-test's own, set and released, so nothing else moves
    // (setting `db_test_auto` again inside an app's savepoint would move it
    // after that one, and a test that released `db_test_auto` on a bare
    // connection did not end its transaction). Outside a transaction
    // (autocommit) `SAVEPOINT` succeeds, and is gone by the next statement:
    // "SAVEPOINT db_test_probe does not exist".
    const PROBE_TRANSACTION: Option<&'static str> =
        Some("SAVEPOINT db_test_probe; RELEASE SAVEPOINT db_test_probe");

    // READ COMMITTED, for this transaction only (`@@transaction_isolation`
    // keeps the server's default). Tests share the working database, and
    // a test's transaction lasts as long as the test, app commits
    // included: under REPEATABLE READ the gap and next-key locks of one
    // test's `SELECT ... FOR UPDATE` of a missing row, or of an `UPDATE`
    // scanning rows it does not change, block or deadlock another test
    // writing rows of its own, which under `#[sqlx::test]` has a database
    // to itself. READ COMMITTED takes no gap locks there. What the test
    // sees is the same: nothing commits into the working database.
    const BEGIN_TEST: &'static str = concat!(
        "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; ",
        begin_at_server_level!()
    );

    // Led by the probe: a test whose transaction a statement db-test did
    // not recognise ended (committed) is found after it, though it passed
    // (see `found_committed`). Two statements more, off the test's time.
    const RESTART_TEST: Option<&'static str> = Some(concat!(
        "SAVEPOINT db_test_probe; RELEASE SAVEPOINT db_test_probe; ",
        "ROLLBACK; SET TRANSACTION ISOLATION LEVEL READ COMMITTED; ",
        begin_at_server_level!()
    ));

    // A server writing a statement-based binary log refuses InnoDB writes
    // under READ COMMITTED (error 1665): its tests keep the default level.
    #[cfg(feature = "harness")]
    fn begin_test() -> &'static str {
        match engine::statement_binlog() {
            true => begin_at_server_level!(),
            false => Self::BEGIN_TEST,
        }
    }

    #[cfg(feature = "harness")]
    fn restart_test() -> Option<&'static str> {
        match engine::statement_binlog() {
            true => Some(concat!(
                "SAVEPOINT db_test_probe; RELEASE SAVEPOINT db_test_probe; ROLLBACK; ",
                begin_at_server_level!()
            )),
            false => Self::RESTART_TEST,
        }
    }

    const SHARED_WORKING_DATABASE: bool = true;

    const DETACH_STATEMENTS: bool = true;

    #[cfg(feature = "harness")]
    fn transaction_gone(e: &sqlx::Error) -> bool {
        // ER_SP_DOES_NOT_EXIST: "SAVEPOINT db_test_probe does not exist".
        e.as_database_error()
            .and_then(|d| d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
            .is_some_and(|d| d.number() == 1305)
    }

    #[cfg(feature = "harness")]
    fn session_ended(e: &sqlx::Error) -> bool {
        // ER_SERVER_SHUTDOWN; MariaDB's ER_CONNECTION_KILLED ("Connection
        // was killed", sent to a session killed while idle); MySQL's
        // ER_CLIENT_INTERACTION_TIMEOUT (`wait_timeout`).
        e.as_database_error()
            .and_then(|d| d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
            .is_some_and(|d| matches!(d.number(), 1053 | 1927 | 4031))
    }

    #[cfg(feature = "harness")]
    fn explain(e: sqlx::Error) -> sqlx::Error {
        let number = e
            .as_database_error()
            .and_then(|d| d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
            .map(|d| d.number());
        let hint = match number {
            // ER_LOCK_WAIT_TIMEOUT
            Some(1205) => {
                "db-test: the statement waited for a row lock until innodb_lock_wait_timeout \
                 (DB_TEST_LOCK_TIMEOUT). Likely cause: another transaction-mode test holds it in \
                 its own uncommitted transaction (the same unique value, or a row it wrote that \
                 a locking read reached: `FOR UPDATE SKIP LOCKED` skips those). Use unique test \
                 data, or `isolation = \"database\"`."
            }
            // ER_LOCK_DEADLOCK
            Some(1213) => {
                "db-test: a real deadlock: two transactions each waited for a lock the other \
                 held, and the server rolled back this test's whole transaction. If they are two \
                 tests, they write the same rows or unique values in opposite orders; use unique \
                 test data, or `isolation = \"database\"`."
            }
            // ER_CANT_CHANGE_TX_CHARACTERISTICS
            Some(1568) => {
                "db-test: in transaction mode the test runs inside db-test's own transaction, \
                 which already began, so its isolation level or access mode cannot change. A \
                 test that sets one runs in a database of its own: `isolation = \"database\"`."
            }
            _ => return e,
        };
        match e {
            sqlx::Error::Database(inner) => crate::hint::with_hint(inner, hint),
            other => other,
        }
    }

    fn clone_arguments(arguments: &Self::Arguments) -> Option<Self::Arguments> {
        Some(arguments.clone())
    }

    #[cfg(feature = "harness")]
    fn in_step(
        conn: &mut Self::Connection,
    ) -> Option<futures_util::future::BoxFuture<'_, sqlx::Result<()>>> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NONCE: AtomicU64 = AtomicU64::new(0);
        Some(Box::pin(async move {
            let nonce = format!(
                "dbt-{}-{}",
                std::process::id(),
                NONCE.fetch_add(1, Ordering::Relaxed)
            );
            let out_of_step = |what: String| {
                sqlx::Error::Protocol(format!(
                    "the connection is out of step with the server ({what}): a statement \
                     sent on a guard or in an app transaction (`&mut *tx`) was dropped \
                     partway, where sqlx cannot read the rest of its reply on MySQL/MariaDB; \
                     a statement sent through `Db` does not have this"
                ))
            };
            // Text protocol: nothing prepared, one reply.
            let reply = crate::clock::timeout(
                std::time::Duration::from_secs(5),
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SELECT '{nonce}'")))
                    .fetch_all(&mut *conn),
            )
            .await;
            match reply {
                Err(()) => Err(out_of_step("no reply to a check within 5s".into())),
                Ok(Err(e)) => Err(out_of_step(format!("a check failed: {e}"))),
                Ok(Ok(rows)) => {
                    let got: Option<String> = rows
                        .first()
                        .and_then(|row| sqlx::Row::try_get::<String, _>(row, 0).ok());
                    if rows.len() == 1 && got.as_deref() == Some(nonce.as_str()) {
                        Ok(())
                    } else {
                        Err(out_of_step(format!(
                            "a check got {} row(s), {got:?}, for its own {nonce:?}",
                            rows.len()
                        )))
                    }
                }
            }
        }))
    }

    crate::generic::dialect_executors!();
}

#[cfg(feature = "harness")]
pub(crate) use harness::setup;

/// The URL of the MySQL/MariaDB server db-test uses: `DB_TEST_MYSQL_URL`,
/// else a `mysql:` `DATABASE_URL`, else the embedded server (started by this
/// call if it is not running), as `mysql://root@localhost/?socket=..`. For
/// the `mysql` client, sqlx-cli or a benchmark:
///
/// ```text
/// cargo run -q -p db-test --features mysql --example server_url -- --mysql
/// ```
///
/// Tests never run in the database this URL names.
#[cfg(feature = "harness")]
pub fn server_url() -> Result<String, String> {
    crate::runtime().block_on(async { engine::engine().await.map(|e| e.url.clone()) })
}

#[cfg(feature = "harness")]
mod harness {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use futures_util::future::BoxFuture;
    use sqlx::MySql;
    use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};

    use super::Db;
    use super::engine::{self, Engine};
    use super::template;
    use crate::config;
    use crate::context::{Backend, BoxError, ContextInner, FromTestContext, TestContext};
    use crate::generic::shared::{Canceller, Shared, TestState, TxResource, apply_fixtures};
    use crate::generic::sticky::Sticky;
    use crate::run::{Ending, Isolation, Prepared, Resource, TestSpec, Verdict, isolation_of};
    use crate::run::{fill_pool, settle_pool};
    use crate::shared::TEARDOWN_GRACE;
    use crate::slots::SessionId;

    /// Sets up a MySQL test: its transaction on the working database, or a
    /// database of its own; then its fixtures.
    pub(crate) async fn setup(spec: &'static TestSpec) -> Result<Prepared, String> {
        let engine = match engine::started() {
            Some(engine) => engine?,
            // The first test: its migrations are read while the engine
            // starts.
            None => first_engine(spec).await?,
        };
        let template = match engine.built_template(spec.migrations, spec.manifest_dir) {
            Some(template) => template,
            None => build_template(spec, engine).await?,
        };
        let (resource, state, database, database_mode): (Box<dyn Resource>, _, _, _) =
            match isolation_of(spec) {
                Isolation::Transaction => {
                    let (resource, state) = setup_transaction(spec, engine, &template).await?;
                    (resource, state, template.working.clone(), false)
                }
                Isolation::Database => {
                    let (resource, state, name) =
                        setup_database(spec, engine, template.clone()).await?;
                    (resource, state, name, true)
                }
            };
        let fixtures = match &state.pool {
            // Database mode: on a connection opened here, on the shared
            // runtime, so that it outlives a body on a runtime of its own.
            Some(pool) => prewarm_with_fixtures(spec, pool).await,
            None if spec.fixtures.is_empty() => Ok(()),
            None => boxed_apply_fixtures(spec, &state.db).await,
        };
        if let Err(msg) = fixtures {
            let (failure, _) = resource
                .teardown(Ending {
                    spec,
                    reason: "a fixture failed",
                    failed: true,
                    timed_out: false,
                    on_own_runtime: false,
                })
                .await;
            return Err(format!(
                "{msg}{}",
                failure.map(|f| format!("\n{f}")).unwrap_or_default()
            ));
        }
        let inner = ContextInner {
            name: spec.name,
            backend: Backend::MySql,
            database_mode,
            db: None,
            shared: None,
            pool: None,
            options: None,
            backend_state: Some(state),
            database,
            tasks: Default::default(),
        };
        Ok((resource, inner))
    }

    // What only some tests await comes boxed from a function of its own:
    // see `run::prepare`.

    fn first_engine(
        spec: &'static TestSpec,
    ) -> BoxFuture<'static, Result<&'static Engine, String>> {
        Box::pin(async {
            tokio::join!(
                engine::engine(),
                crate::postgres::template::resolve_migrations_once(
                    spec.migrations,
                    spec.manifest_dir
                )
            )
            .0
        })
    }

    fn build_template(
        spec: &'static TestSpec,
        engine: &'static Engine,
    ) -> futures_util::future::LocalBoxFuture<'static, Result<Arc<template::Template>, String>>
    {
        Box::pin(engine.template(spec.migrations, spec.manifest_dir))
    }

    /// A transaction-mode test's fixtures, in its transaction. Session
    /// settings they change (a `mysqldump` file's header turns
    /// `FOREIGN_KEY_CHECKS` and `UNIQUE_CHECKS` off, sets `sql_mode`,
    /// `time_zone`, `NAMES`) are set back after them: `#[sqlx::test]` runs
    /// fixtures on a connection of their own, so its test body has none.
    fn boxed_apply_fixtures<'a>(
        spec: &'static TestSpec,
        db: &'a Db,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let sets = spec
                .fixtures
                .iter()
                .any(|f| super::lexer::leaves_session_state(f.sql));
            let before = match sets {
                true => Some(session_settings(db).await.map_err(|e| {
                    format!(
                        "db-test: reading the session settings before the fixtures of test \
                         `{}`: {e}",
                        spec.name
                    )
                })?),
                false => None,
            };
            apply_fixtures(spec, db).await?;
            if let Some(before) = before {
                sqlx::Executor::execute(db, sqlx::raw_sql(sqlx::AssertSqlSafe(before)))
                    .await
                    .map_err(|e| {
                        format!(
                            "db-test: setting back the session settings the fixtures of test \
                             `{}` changed: {e}",
                            spec.name
                        )
                    })?;
            }
            Ok(())
        })
    }

    /// The session settings a fixture may change, as the `SET` that
    /// restores them: (variable, whether its value is a number).
    const FIXTURE_SETTINGS: [(&str, bool); 8] = [
        ("foreign_key_checks", true),
        ("unique_checks", true),
        ("sql_notes", true),
        ("sql_mode", false),
        ("time_zone", false),
        ("character_set_client", false),
        ("character_set_results", false),
        ("collation_connection", false),
    ];

    async fn session_settings(db: &Db) -> Result<String, sqlx::Error> {
        use sqlx::Row;
        let select = FIXTURE_SETTINGS
            .iter()
            .map(|(name, _)| format!("CAST(@@SESSION.{name} AS CHAR)"))
            .collect::<Vec<_>>()
            .join(", ");
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {select}")))
            .fetch_one(db)
            .await?;
        let mut set = Vec::new();
        for (i, (name, number)) in FIXTURE_SETTINGS.iter().enumerate() {
            let value: Option<String> = row.try_get(i)?;
            let value = match value {
                None => "NULL".to_string(),
                Some(v) if *number && v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() => v,
                Some(v) => engine::literal(&v),
            };
            set.push(format!("{name} = {value}"));
        }
        Ok(format!("SET SESSION {}", set.join(", ")))
    }

    fn prewarm_with_fixtures<'a>(
        spec: &'static TestSpec,
        pool: &'a MySqlPool,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            if spec.fixtures.is_empty() && pool.num_idle() > 0 {
                // A spare's pool: connected already.
                return Ok(());
            }
            let connect_failed = |e: sqlx::Error| {
                format!(
                    "db-test: cannot connect to the database of test `{}`: {e}",
                    spec.name
                )
            };
            if !spec.fixtures.is_empty() {
                // On a connection of their own, closed after them, as
                // `#[sqlx::test]` runs them: the session settings of a
                // `mysqldump` file's header do not reach the test's pool.
                let conn = pool.acquire().await.map_err(connect_failed)?.detach();
                crate::run::fixtures_on(spec, conn).await?;
            }
            if pool.num_idle() == 0 {
                drop(pool.acquire().await.map_err(connect_failed)?);
                settle_pool(pool).await;
            }
            Ok(())
        })
    }

    async fn setup_transaction(
        spec: &'static TestSpec,
        engine: &'static Engine,
        template: &template::Template,
    ) -> Result<(Box<dyn Resource>, Arc<TestState<MySql>>), String> {
        let mut last_err = None;
        for _ in 0..3 {
            let (conn, home) = template.slots.checkout_connection().await.map_err(|e| {
                format!(
                    "db-test: cannot get a connection to {} on {} for test `{}`: {e}",
                    template.working, engine.display_url, spec.name
                )
            })?;
            // To stop its statements when the test times out (`KILL QUERY`):
            // the id of the slot's connection, which may be replaced before
            // the test's first statement (see `Shared::replace`).
            let session = home.session();
            match Shared::open(conn, home, spec.name.to_string()).await {
                Ok(shared) => {
                    shared.set_canceller(Arc::new(KillQuery {
                        engine,
                        session: session.clone(),
                        prefix: template.prefix.clone(),
                    }));
                    let state = Arc::new(TestState {
                        db: Db::from_shared(shared.clone()),
                        pool: None,
                        options: engine.options_for(&template.working),
                    });
                    let resource = Box::new(MySqlTx {
                        inner: TxResource { shared },
                        engine,
                        session,
                        prefix: template.prefix.clone(),
                    });
                    return Ok((resource, state));
                }
                Err((e, conn, home)) => {
                    home.discard(conn);
                    last_err = Some(e);
                }
            }
        }
        Err(format!(
            "db-test: cannot begin the transaction of test `{}` on {}: {}",
            spec.name,
            engine.display_url,
            last_err.map(|e| e.to_string()).unwrap_or_default()
        ))
    }

    /// Stops a dropped statement still running on a test's connection.
    struct KillQuery {
        engine: &'static Engine,
        /// Read when needed: the test holds the slot meanwhile.
        session: SessionId,
        /// The template's prefix: its working database is marked dirty if
        /// the test's transaction is found committed after the test.
        prefix: String,
    }

    impl Canceller for KillQuery {
        fn cancel(&self) -> BoxFuture<'static, ()> {
            let (engine, id) = (self.engine, self.session.load(Ordering::Acquire));
            Box::pin(async move { engine.kill(id, false).await })
        }

        fn committed(&self) -> BoxFuture<'static, ()> {
            mark_working_dirty(self.engine, self.prefix.clone())
        }
    }

    /// A transaction-mode test: the generic core's resource, plus what a
    /// timed-out test needs on MySQL (its statement stopped on the server).
    struct MySqlTx {
        inner: TxResource<MySql>,
        engine: &'static Engine,
        /// The slot's connection id, read at the start of the teardown,
        /// while the test still holds the slot.
        session: SessionId,
        /// The template's prefix: its working database is marked dirty when
        /// the test committed into it.
        prefix: String,
    }

    impl Resource for MySqlTx {
        fn settle(&self) -> BoxFuture<'_, ()> {
            self.inner.settle()
        }

        fn teardown(self: Box<Self>, ending: Ending) -> BoxFuture<'static, Verdict> {
            Box::pin(async move {
                let MySqlTx {
                    inner,
                    engine,
                    session,
                    prefix,
                } = *self;
                let connection_id = session.load(Ordering::Acquire);
                if ending.timed_out {
                    // The rollback waits for the running statement: stop it.
                    kill(engine, connection_id, false).await;
                }
                let name = ending.spec.name;
                let shared = inner.shared.clone();
                let inner = Box::new(inner).teardown(ending);
                match tokio::time::timeout(TEARDOWN_GRACE * 2, inner).await {
                    Ok(verdict) => {
                        if shared.was_held_at_end() {
                            // A guard, or a transaction from
                            // `Acquire::begin`, outlived the test: end its
                            // session (a rollback), before the task can
                            // send a `COMMIT` on the bare connection.
                            kill(engine, connection_id, true).await;
                        }
                        if shared.ended_out_of_sight() {
                            mark_working_dirty(engine, prefix).await;
                        }
                        verdict
                    }
                    Err(_) => {
                        // Never hang: end the session; the pool drops it.
                        kill(engine, connection_id, true).await;
                        (
                            Some(format!(
                                "db-test: the connection of test `{name}` did not come back \
                                 within {:?} after the test; it was killed (its transaction \
                                 is rolled back by the server)",
                                TEARDOWN_GRACE * 2
                            )),
                            Vec::new(),
                        )
                    }
                }
            })
        }
    }

    // Boxed, for the teardown above: see `run::prepare`.

    fn kill(engine: &'static Engine, id: u64, connection: bool) -> BoxFuture<'static, ()> {
        Box::pin(engine.kill(id, connection))
    }

    fn mark_working_dirty(engine: &'static Engine, prefix: String) -> BoxFuture<'static, ()> {
        Box::pin(async move { engine.mark_working_dirty(&prefix).await })
    }

    #[allow(clippy::type_complexity)]
    fn setup_database(
        spec: &'static TestSpec,
        engine: &'static Engine,
        template: Arc<template::Template>,
    ) -> BoxFuture<'static, Result<(Box<dyn Resource>, Arc<TestState<MySql>>, String), String>>
    {
        Box::pin(async move {
            let _ = spec;
            let (name, pool) = engine.create_test_database(&template).await?;
            let options = engine.options_for(&name);
            let pool = pool.unwrap_or_else(|| engine.test_pool(&name));
            let sticky = Sticky::new(pool.clone());
            let resource: Box<dyn Resource> = Box::new(DatabaseResource {
                engine,
                template,
                name: name.clone(),
                pool: pool.clone(),
                sticky: sticky.clone(),
            });
            let state = Arc::new(TestState {
                db: Db::from_sticky(sticky),
                pool: Some(pool),
                options,
            });
            Ok((resource, state, name))
        })
    }

    /// A per-test database, dropped at the end.
    struct DatabaseResource {
        engine: &'static Engine,
        template: Arc<template::Template>,
        name: String,
        pool: MySqlPool,
        /// The test's `Db` on the pool: its connection kept aside goes back
        /// at the end.
        sticky: Arc<Sticky<MySql>>,
    }

    impl Resource for DatabaseResource {
        fn prewarm(&self) -> BoxFuture<'_, ()> {
            Box::pin(fill_pool(&self.pool))
        }

        fn settle(&self) -> BoxFuture<'_, ()> {
            // The connection the test's `Db` kept goes back too: the pool
            // settles only when every connection is idle.
            Box::pin(async move {
                drop(self.sticky.close());
                settle_pool(&self.pool).await
            })
        }

        fn teardown(self: Box<Self>, ending: Ending) -> BoxFuture<'static, Verdict> {
            Box::pin(async move {
                let DatabaseResource {
                    engine,
                    template,
                    name,
                    pool,
                    sticky,
                } = *self;
                let held = sticky.close();
                let keep = ending.failed && config::keep_failed();
                if !ending.timed_out && !keep {
                    Engine::release_session_locks(&pool, held).await;
                    // Closed, then recycled or dropped, in the background:
                    // the test is over.
                    engine.release_test_database(template, name, pool, ending.spec.name);
                    return (None, Vec::new());
                }
                // Back to the pool, which is closed below.
                drop(held);
                if ending.timed_out {
                    // Whatever the test still runs on the server stops now.
                    engine.kill_sessions(&name, true).await;
                }
                engine.close_test_pool(&name, &pool, ending.spec.name).await;
                engine.end_test_database(&template);
                if !keep {
                    return (engine.drop_test_database(&name).await.err(), Vec::new());
                }
                match engine.keep_test_database(&name).await {
                    Ok(()) => {
                        eprintln!(
                            "db-test: kept the database of failed test `{}` \
                             (DB_TEST_KEEP_FAILED=1): {name} on {}",
                            ending.spec.name, engine.display_url
                        );
                        (None, Vec::new())
                    }
                    Err(e) => (Some(e), Vec::new()),
                }
            })
        }
    }

    fn state(ctx: &TestContext, what: &str) -> Result<Arc<TestState<MySql>>, BoxError> {
        ctx.backend_state::<TestState<MySql>>(what, Backend::MySql)
    }

    fn own_pool(ctx: &TestContext, what: &str) -> Result<MySqlPool, BoxError> {
        state(ctx, what)?.pool.clone().ok_or_else(|| {
            format!(
                "`{what}` needs a database of its own, but test `{}` runs in transaction mode; \
                 use `#[db_test(isolation = \"database\")]`",
                ctx.test_name()
            )
            .into()
        })
    }

    /// A pool on the test's own database, as `#[sqlx::test]` gives: the test
    /// runs in `isolation = "database"`.
    impl FromTestContext for MySqlPool {
        const BACKEND: Backend = Backend::MySql;
        const NEEDS_OWN_DATABASE: bool = true;
        const SQLX_TEST_TYPE: bool = true;
        async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
            own_pool(ctx, "MySqlPool")
        }
    }

    /// A connection to the test's own database (`isolation = "database"`).
    impl FromTestContext for sqlx::pool::PoolConnection<MySql> {
        const BACKEND: Backend = Backend::MySql;
        const NEEDS_OWN_DATABASE: bool = true;
        const SQLX_TEST_TYPE: bool = true;
        async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
            Ok(own_pool(ctx, "PoolConnection<MySql>")?.acquire().await?)
        }
    }

    /// Options to build a pool on the test's own database
    /// (`isolation = "database"`).
    impl FromTestContext for (MySqlPoolOptions, MySqlConnectOptions) {
        const BACKEND: Backend = Backend::MySql;
        const NEEDS_OWN_DATABASE: bool = true;
        const SQLX_TEST_TYPE: bool = true;
        async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
            let what = "(MySqlPoolOptions, MySqlConnectOptions)";
            own_pool(ctx, what)?;
            Ok((
                MySqlPoolOptions::new().max_connections(config::database_pool_size()),
                state(ctx, what)?.options.clone(),
            ))
        }
    }
}
