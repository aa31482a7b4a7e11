//! The backend-generic database handle, for the databases other than
//! PostgreSQL: [`Db<DB>`](Db) and, with the harness, [`TestDb<DB>`](TestDb).
//!
//! Each backend module names them for its database, as sqlx does with its
//! own generic types: `db_test::sqlite::Db` is `generic::Db<Sqlite>`.
//! (PostgreSQL keeps its own, older handle, [`crate::Db`].)
//!
//! In production a `Db<DB>` is a [`sqlx::Pool<DB>`]: every call goes straight
//! to the pool. Under `#[db_test]` in transaction mode it wraps the test's one
//! connection, which sits inside a transaction rolled back when the test ends:
//!
//! - `db.begin()` is a `SAVEPOINT`, `tx.commit()` a `RELEASE SAVEPOINT`,
//!   `tx.rollback()` (or dropping `tx`) a `ROLLBACK TO SAVEPOINT`;
//! - a statement run outside an app transaction runs after a savepoint of
//!   db-test's, so that a failing statement is undone alone and the test
//!   goes on, as under autocommit (a plain `SELECT` needs none);
//! - SQL that would end the test's transaction (`COMMIT`, `ROLLBACK`,
//!   `BEGIN`, ..., anywhere in a multi-statement string) and what else the
//!   backend cannot run in it is refused before it is sent, and fails the
//!   test: every later statement of the test gets the same error;
//! - a statement whose future is dropped mid-way (a timeout, `select!`) is
//!   undone before the next statement runs, and the connection stays usable;
//! - the connection is shared by every clone of the handle behind an async
//!   lock; a task that waits for it longer than the checkout timeout
//!   (`DB_TEST_CHECKOUT_TIMEOUT`, 10 s) gets an error naming the likely
//!   cause, and a task that outlives its test gets "test `..` is over".
//!
//! In database mode (`isolation = "database"`) it is the test database's
//! pool, used as a pool is, except that it keeps the connection its last
//! statement ran to completion on for its next statement, rather than
//! giving it back to the pool (which pings it) in between: a test's
//! statements one after another share one connection, as on a connection of
//! the test's own. Statements at the same time, `acquire()` and `begin()`
//! take connections from the pool as usual.

mod db;
#[cfg(feature = "harness")]
pub(crate) mod shared;
#[cfg(feature = "harness")]
pub(crate) mod sticky;
#[cfg(feature = "harness")]
mod testdb;

pub use db::{Db, DbAcquired, DbConn, DbConnection, DbTransaction};
#[cfg(feature = "harness")]
pub use testdb::TestDb;
#[cfg(feature = "harness")]
#[allow(unused_imports)]
pub(crate) use testdb::test_state;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use sqlx::{Either, Execute, Pool};

pub(crate) mod sealed {
    /// Only db-test's backends are [`super::Dialect`]s.
    pub trait Sealed {}
}

/// One step of a statement's results: a result summary or a row.
pub type Step<DB> = Either<<DB as sqlx::Database>::QueryResult, <DB as sqlx::Database>::Row>;

/// What differs between the databases [`Db`] works on. Sealed: implemented
/// by db-test for each backend it was built with (`sqlx::Sqlite` with the
/// `sqlite` feature, `sqlx::MySql` with `mysql`).
///
/// The executor methods only forward to sqlx's own executors of the pool
/// and the connection (so that generic code needs no higher-ranked bounds).
pub trait Dialect: sqlx::Database + sealed::Sealed {
    /// The backend, for `FromTestContext::BACKEND`.
    #[cfg(feature = "harness")]
    const BACKEND: crate::Backend;

    /// Under test (transaction mode), SQL db-test must not send: it would end
    /// the test's transaction, or cannot run in one. Returns the message of
    /// the error, saying what to do instead. Called on every statement sent
    /// through the test's handle, before it is sent.
    #[doc(hidden)]
    ///
    /// `cautious`: the session may no longer be as it was opened (the test
    /// sent something that changes session state, this text does, or the
    /// connection went out of db-test's sight).
    fn refuse(sql: &str, cautious: bool) -> Option<String>;

    /// Under test, before the rollback, when `check_constraints` is set: a
    /// statement whose rows are constraint violations that a `COMMIT` would
    /// report. `None` when the database has no deferred constraints.
    #[doc(hidden)]
    const CHECK_CONSTRAINTS: Option<&'static str> = None;

    /// Under test, with `check_constraints`, where the transaction holds
    /// deferred constraint violations (a statement outside an app
    /// transaction, an app transaction's `commit()`): the error production's
    /// `COMMIT` would fail with now, if any (SQLite: `sqlite3_db_status`'s
    /// `SQLITE_DBSTATUS_DEFERRED_FKS`). `None`: no deferred constraints
    /// (MySQL).
    #[doc(hidden)]
    fn deferred_violation(
        conn: &mut Self::Connection,
    ) -> Option<BoxFuture<'_, sqlx::Result<Option<sqlx::Error>>>> {
        let _ = conn;
        None
    }

    /// Under test, a setting that production resets at the end of every
    /// transaction, which a savepoint's end does not reset: the word that
    /// names it in a statement, and the statement that resets it, run
    /// after each statement outside an app transaction and at the end of
    /// the outermost one once the test named it (SQLite: `PRAGMA
    /// defer_foreign_keys`).
    #[doc(hidden)]
    const RESET_AT_TRANSACTION_END: Option<(&'static str, &'static str)> = None;

    /// Advice for a statement that runs, but not as the test may expect,
    /// inside the test's transaction (SQLite: `PRAGMA foreign_keys = OFF`,
    /// which does nothing there). Printed with the test's output, which
    /// libtest shows if the test fails. Asked only of statements
    /// [`Dialect::touches_session`] says yes to.
    #[doc(hidden)]
    #[cfg(feature = "harness")]
    fn advice(sql: &str) -> Option<&'static str> {
        let _ = sql;
        None
    }

    /// Advice for a statement whose answer inside the test's transaction
    /// is not production's (MySQL: a `FULLTEXT` search, which does not see
    /// rows the transaction wrote). Asked of every statement until it
    /// gives some, printed once per test, with the test's output.
    #[doc(hidden)]
    #[cfg(feature = "harness")]
    fn advice_once(sql: &str) -> Option<&'static str> {
        let _ = sql;
        None
    }

    /// A fixture's text as a transaction-mode test runs it, inside the
    /// test's transaction (SQLite: a `sqlite3 .dump` file's own `BEGIN
    /// TRANSACTION` and `COMMIT` taken off).
    #[doc(hidden)]
    #[cfg(feature = "harness")]
    fn fixture_in_transaction(sql: &'static str) -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed(sql)
    }

    /// Under test, keeps `open` (the names of the savepoints the test
    /// opened itself outside an app transaction, innermost last) up to
    /// date with what `sql` opens (`SAVEPOINT`) and releases (`RELEASE`).
    /// While one is open, production is inside a transaction (SQLite
    /// begins one with the first), and a statement is not committed on its
    /// own. Called only for SQL that mentions `SAVEPOINT` or `RELEASE`.
    #[doc(hidden)]
    fn track_savepoints(sql: &str, open: &mut Vec<String>) {
        let _ = (sql, open);
    }

    /// Under test, whether a statement sent through `Db` runs in a task of
    /// its own, to its end, even if its caller drops it: for a connection
    /// whose reply sqlx cannot skip from every point where a dropped future
    /// may leave it (MySQL: partway through a result set's column
    /// definitions, it reads the next one as a new result and the
    /// connection is lost, with the test's transaction).
    #[doc(hidden)]
    const DETACH_STATEMENTS: bool = false;

    /// Under test, one round trip that fails if the test's transaction is
    /// no longer open and changes nothing otherwise, at any depth (inside
    /// an app's savepoints too): run after a statement of the test failed
    /// (the failed statement itself needs no undoing: MySQL and SQLite undo
    /// a failed statement alone, keeping what came before it in the
    /// transaction, as production's autocommit keeps what committed before
    /// it), when a connection lent to `Acquire::begin` comes back, and at
    /// the end of a test whose connection went out of db-test's sight (a
    /// guard, an app transaction) before the final `ROLLBACK`, which
    /// succeeds outside a transaction on MySQL. A deadlock ends the whole
    /// transaction on MySQL, app savepoints and all; the app's retry would
    /// then commit into the shared working database. `None`: not checked
    /// there (SQLite asks its library instead, [`Dialect::in_transaction`],
    /// and its final `ROLLBACK` fails by itself outside a transaction).
    #[doc(hidden)]
    const PROBE_TRANSACTION: Option<&'static str> = None;

    /// Under test, whether the connection is in a transaction, asked of the
    /// database library where it can tell without a statement (SQLite:
    /// `sqlite3_get_autocommit`), at any depth and with nothing changed;
    /// `None` to use [`Dialect::PROBE_TRANSACTION`] instead.
    #[doc(hidden)]
    fn in_transaction(conn: &mut Self::Connection) -> Option<BoxFuture<'_, sqlx::Result<bool>>> {
        let _ = conn;
        None
    }

    /// Under test, what opens a test's transaction, with db-test's savepoint
    /// `db_test_auto` in it, in one round trip. MySQL's also forgets the
    /// last test's `LAST_INSERT_ID()` on the same connection (a new
    /// connection, as `#[sqlx::test]` gives each test, answers 0).
    #[doc(hidden)]
    const BEGIN_TEST: &'static str = "BEGIN; SAVEPOINT db_test_auto";

    /// Under test, `ROLLBACK` and then [`Dialect::BEGIN_TEST`] in one round
    /// trip, where the database runs them as one string: ends a test's
    /// transaction and opens the next test's on the same connection, in a
    /// task of the shared runtime after the test, so that neither is on a
    /// test's time. `None`: the rollback is awaited at the end of the test,
    /// and the next test begins its own (SQLite: its copies are per
    /// connection, and `BEGIN` costs no round trip).
    #[doc(hidden)]
    const RESTART_TEST: Option<&'static str> = None;

    /// Under test, a statement's error with what most likely caused it in
    /// a test suite, where the server's message alone misleads (a lock
    /// wait, a deadlock, an isolation level the test's transaction cannot
    /// take).
    #[doc(hidden)]
    fn explain(e: sqlx::Error) -> sqlx::Error {
        e
    }

    /// [`Dialect::BEGIN_TEST`], or what this server needs instead.
    #[doc(hidden)]
    fn begin_test() -> &'static str {
        Self::BEGIN_TEST
    }

    /// [`Dialect::RESTART_TEST`], or what this server needs instead.
    #[doc(hidden)]
    fn restart_test() -> Option<&'static str> {
        Self::RESTART_TEST
    }

    /// Under test, a statement that releases the session's named locks,
    /// sent before a connection whose session the test touched is closed:
    /// the server releases them only once it has processed the disconnect,
    /// which the next test could beat to the lock.
    #[doc(hidden)]
    const RELEASE_SESSION_LOCKS: Option<&'static str> = None;

    /// Under test, after a statement dropped partway on a guard (which does
    /// not run detached): one round trip whose reply must be its own, or
    /// `Err`: the connection is out of step with the server, reading the
    /// replies of other commands as its own (sqlx's MySQL connection,
    /// dropped while it waited for a `COM_STMT_PREPARE` reply, never reads
    /// that reply, and answers every later statement with the one before
    /// it). `None`: nothing to check.
    #[doc(hidden)]
    fn in_step(conn: &mut Self::Connection) -> Option<BoxFuture<'_, sqlx::Result<()>>> {
        let _ = conn;
        None
    }

    /// Whether `e`, from [`Dialect::PROBE_TRANSACTION`] or the final
    /// `ROLLBACK`, says the test's transaction is no longer open (rather
    /// than, say, that a stopped statement's error arrived late).
    #[doc(hidden)]
    fn transaction_gone(e: &sqlx::Error) -> bool {
        let _ = e;
        true
    }

    /// Under test, whether `e` is the server's word that it ended the
    /// connection's session (a `KILL`, a shutdown), beyond the library's
    /// own errors of a broken connection.
    #[doc(hidden)]
    fn session_ended(e: &sqlx::Error) -> bool {
        let _ = e;
        false
    }

    /// Under test, a copy of a statement's arguments, to send the test's
    /// first statement again on another connection when the server had
    /// ended the session of the one the test was given before it arrived;
    /// `None`: not sent again (the test gets the error).
    #[doc(hidden)]
    fn clone_arguments(arguments: &Self::Arguments) -> Option<Self::Arguments> {
        let _ = arguments;
        None
    }

    /// Under test, whether `sql` may end the test's transaction where
    /// db-test cannot read it (MySQL: a `CALL` of a procedure that
    /// commits): the transaction is checked after it.
    #[doc(hidden)]
    fn may_commit_unseen(sql: &str) -> bool {
        let _ = sql;
        false
    }

    /// Whether what a test commits on its connection in transaction mode
    /// reaches other tests (MySQL: one working database for the process's
    /// tests), rather than a copy of the connection's own (SQLite).
    #[doc(hidden)]
    const SHARED_WORKING_DATABASE: bool = false;

    /// Under test, whether `sql` may leave state on the connection that the
    /// rollback does not undo (a session setting): the connection is then
    /// closed when the test ends, rather than handed to the next test.
    #[doc(hidden)]
    fn touches_session(sql: &str) -> bool {
        let _ = sql;
        false
    }

    /// Under test, whether `sql` may change the schema in a way that sqlx's
    /// cache of prepared statements does not follow (SQLite: a cached
    /// `SELECT *` keeps the columns it was prepared with): from then on,
    /// the test's connection clears that cache before each statement. Asked
    /// only of statements [`Dialect::touches_session`] says yes to (a
    /// schema change is session state the rollback leaves in that cache).
    #[doc(hidden)]
    fn changes_schema(sql: &str) -> bool {
        let _ = sql;
        false
    }

    /// Clears sqlx's cache of prepared statements on `conn` (see
    /// [`Dialect::changes_schema`]).
    #[doc(hidden)]
    fn clear_statements(conn: &mut Self::Connection) -> Option<BoxFuture<'_, sqlx::Result<()>>> {
        let _ = conn;
        None
    }

    #[doc(hidden)]
    fn pool_fetch_many<'e, 'q: 'e, E: 'q + Execute<'q, Self>>(
        pool: &'e Pool<Self>,
        query: E,
    ) -> BoxStream<'e, sqlx::Result<Step<Self>>>;
    #[doc(hidden)]
    fn pool_fetch_optional<'e, 'q: 'e, E: 'q + Execute<'q, Self>>(
        pool: &'e Pool<Self>,
        query: E,
    ) -> BoxFuture<'e, sqlx::Result<Option<Self::Row>>>;
    #[doc(hidden)]
    fn pool_prepare_with<'e>(
        pool: &'e Pool<Self>,
        sql: sqlx::SqlStr,
        parameters: &'e [Self::TypeInfo],
    ) -> BoxFuture<'e, sqlx::Result<Self::Statement>>;
    #[doc(hidden)]
    fn pool_describe<'e>(
        pool: &'e Pool<Self>,
        sql: sqlx::SqlStr,
    ) -> BoxFuture<'e, sqlx::Result<sqlx::Describe<Self>>>;
    #[doc(hidden)]
    fn conn_fetch_many<'e, 'q: 'e, E: 'q + Execute<'q, Self>>(
        conn: &'e mut Self::Connection,
        query: E,
    ) -> BoxStream<'e, sqlx::Result<Step<Self>>>;
    #[doc(hidden)]
    fn conn_fetch_optional<'e, 'q: 'e, E: 'q + Execute<'q, Self>>(
        conn: &'e mut Self::Connection,
        query: E,
    ) -> BoxFuture<'e, sqlx::Result<Option<Self::Row>>>;
    #[doc(hidden)]
    fn conn_prepare_with<'e>(
        conn: &'e mut Self::Connection,
        sql: sqlx::SqlStr,
        parameters: &'e [Self::TypeInfo],
    ) -> BoxFuture<'e, sqlx::Result<Self::Statement>>;
    #[doc(hidden)]
    fn conn_describe<'e>(
        conn: &'e mut Self::Connection,
        sql: sqlx::SqlStr,
    ) -> BoxFuture<'e, sqlx::Result<sqlx::Describe<Self>>>;
}

/// The executor methods of a [`Dialect`] impl: they forward to sqlx's
/// executors of the concrete pool and connection types.
macro_rules! dialect_executors {
    () => {
        fn pool_fetch_many<'e, 'q: 'e, E: 'q + sqlx::Execute<'q, Self>>(
            pool: &'e sqlx::Pool<Self>,
            query: E,
        ) -> futures_util::stream::BoxStream<'e, sqlx::Result<$crate::generic::Step<Self>>> {
            sqlx::Executor::fetch_many(pool, query)
        }
        fn pool_fetch_optional<'e, 'q: 'e, E: 'q + sqlx::Execute<'q, Self>>(
            pool: &'e sqlx::Pool<Self>,
            query: E,
        ) -> futures_util::future::BoxFuture<'e, sqlx::Result<Option<Self::Row>>> {
            sqlx::Executor::fetch_optional(pool, query)
        }
        fn pool_prepare_with<'e>(
            pool: &'e sqlx::Pool<Self>,
            sql: sqlx::SqlStr,
            parameters: &'e [Self::TypeInfo],
        ) -> futures_util::future::BoxFuture<'e, sqlx::Result<Self::Statement>> {
            sqlx::Executor::prepare_with(pool, sql, parameters)
        }
        fn pool_describe<'e>(
            pool: &'e sqlx::Pool<Self>,
            sql: sqlx::SqlStr,
        ) -> futures_util::future::BoxFuture<'e, sqlx::Result<sqlx::Describe<Self>>> {
            sqlx::Executor::describe(pool, sql)
        }
        fn conn_fetch_many<'e, 'q: 'e, E: 'q + sqlx::Execute<'q, Self>>(
            conn: &'e mut Self::Connection,
            query: E,
        ) -> futures_util::stream::BoxStream<'e, sqlx::Result<$crate::generic::Step<Self>>> {
            sqlx::Executor::fetch_many(conn, query)
        }
        fn conn_fetch_optional<'e, 'q: 'e, E: 'q + sqlx::Execute<'q, Self>>(
            conn: &'e mut Self::Connection,
            query: E,
        ) -> futures_util::future::BoxFuture<'e, sqlx::Result<Option<Self::Row>>> {
            sqlx::Executor::fetch_optional(conn, query)
        }
        fn conn_prepare_with<'e>(
            conn: &'e mut Self::Connection,
            sql: sqlx::SqlStr,
            parameters: &'e [Self::TypeInfo],
        ) -> futures_util::future::BoxFuture<'e, sqlx::Result<Self::Statement>> {
            sqlx::Executor::prepare_with(conn, sql, parameters)
        }
        fn conn_describe<'e>(
            conn: &'e mut Self::Connection,
            sql: sqlx::SqlStr,
        ) -> futures_util::future::BoxFuture<'e, sqlx::Result<sqlx::Describe<Self>>> {
            sqlx::Executor::describe(conn, sql)
        }
    };
}
pub(crate) use dialect_executors;

#[cfg(feature = "harness")]
/// A query taken apart, so that its SQL can be looked at before it is sent,
/// then sent as it was.
pub(crate) struct OwnedQuery<DB: sqlx::Database> {
    pub(crate) sql: sqlx::SqlStr,
    statement: Option<DB::Statement>,
    arguments: Option<DB::Arguments>,
    persistent: bool,
}

#[cfg(feature = "harness")]
impl<DB: sqlx::Database> OwnedQuery<DB> {
    pub(crate) fn take<'q, E: Execute<'q, DB>>(mut query: E) -> sqlx::Result<Self> {
        let statement = query.statement().cloned();
        let arguments = query.take_arguments().map_err(sqlx::Error::Encode)?;
        let persistent = query.persistent();
        let sql = query.sql();
        Ok(OwnedQuery {
            sql,
            statement,
            arguments,
            persistent,
        })
    }

    /// A copy to send again (see [`Dialect::clone_arguments`]).
    pub(crate) fn try_clone(&self) -> Option<Self>
    where
        DB: Dialect,
    {
        let arguments = match &self.arguments {
            Some(arguments) => Some(DB::clone_arguments(arguments)?),
            None => None,
        };
        Some(OwnedQuery {
            sql: self.sql.clone(),
            statement: self.statement.clone(),
            arguments,
            persistent: self.persistent,
        })
    }

    /// A query of SQL text alone (db-test's own statements).
    #[cfg(feature = "harness")]
    pub(crate) fn raw(sql: &str) -> Self {
        OwnedQuery {
            sql: sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(sql.to_string())),
            statement: None,
            arguments: None,
            persistent: false,
        }
    }
}

#[cfg(feature = "harness")]
impl<'q, DB: sqlx::Database> Execute<'q, DB> for OwnedQuery<DB> {
    fn sql(self) -> sqlx::SqlStr {
        self.sql
    }
    fn statement(&self) -> Option<&DB::Statement> {
        self.statement.as_ref()
    }
    fn take_arguments(&mut self) -> Result<Option<DB::Arguments>, sqlx::error::BoxDynError> {
        Ok(self.arguments.take())
    }
    fn persistent(&self) -> bool {
        self.persistent
    }
}
