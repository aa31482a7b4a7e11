//! The app-facing database handle, [`Db`].
//!
//! In production a `Db` is exactly a [`PgPool`]: every call goes straight to the
//! pool, with no lock and no extra round trip. Under `#[db_test]` the same type
//! wraps the test's single connection, which sits inside a transaction that is
//! rolled back when the test ends. `begin()` then becomes a `SAVEPOINT`,
//! `commit()` a `RELEASE SAVEPOINT`, and a statement issued outside an app
//! transaction is guarded by a savepoint so that a failing statement does not
//! poison the rest of the test.

use std::fmt;
use std::ops::{Deref, DerefMut};
#[cfg(feature = "harness")]
use std::sync::Arc;

use futures_util::FutureExt;
#[cfg(feature = "harness")]
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use sqlx::postgres::{PgConnection, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Either, Execute, Executor, PgPool, Postgres};

#[cfg(feature = "harness")]
use crate::query::OwnedQuery;
#[cfg(feature = "harness")]
use crate::shared::{SharedConn, SlotGuard};

/// A handle to the database that application code stores in its state.
///
/// Build it from a pool in production with [`Db::from_pool`] (or `Db::from(pool)`).
/// Under `#[db_test]` the test hands the app a `Db` bound to the test's
/// transaction (see `TestDb::db`), so the app's writes are rolled back with the test.
///
/// `&Db` is a [`sqlx::Executor`], so it is used exactly like `&PgPool`:
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> sqlx::Result<()> {
/// use db_test::Db;
///
/// let db = Db::from_pool(pool);
/// sqlx::query("INSERT INTO users (email) VALUES ($1)")
///     .bind("a@example.com")
///     .execute(&db)
///     .await?;
///
/// // An app transaction. Under test it becomes a savepoint.
/// let mut tx = db.begin().await?;
/// sqlx::query("UPDATE users SET name = 'A'").execute(&mut *tx).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Db {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Pool(PgPool),
    #[cfg(feature = "harness")]
    Test(Arc<SharedConn>),
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Pool(pool) => f.debug_tuple("Db::Pool").field(pool).finish(),
            #[cfg(feature = "harness")]
            Inner::Test(shared) => f.debug_tuple("Db::Test").field(&shared.label()).finish(),
        }
    }
}

impl From<PgPool> for Db {
    fn from(pool: PgPool) -> Self {
        Db::from_pool(pool)
    }
}

impl Db {
    /// Wraps a pool. Every call on the returned `Db` goes straight to the pool.
    pub fn from_pool(pool: PgPool) -> Self {
        Db {
            inner: Inner::Pool(pool),
        }
    }

    #[cfg(feature = "harness")]
    pub(crate) fn from_shared(shared: Arc<SharedConn>) -> Self {
        Db {
            inner: Inner::Test(shared),
        }
    }

    /// The pool behind this handle, if it is a pool (production, or a test in
    /// `isolation = "database"`). `None` under a transaction-mode test.
    pub fn pool(&self) -> Option<&PgPool> {
        match &self.inner {
            Inner::Pool(pool) => Some(pool),
            #[cfg(feature = "harness")]
            Inner::Test(_) => None,
        }
    }

    /// Takes a connection. It derefs to [`PgConnection`].
    ///
    /// Under a transaction-mode test this is the test's connection: hold the guard
    /// only as long as needed, because other users of the same `Db` wait for it.
    pub async fn acquire(&self) -> sqlx::Result<DbConnection> {
        match &self.inner {
            Inner::Pool(pool) => Ok(DbConnection {
                inner: ConnInner::Pool(pool.acquire().await?),
            }),
            #[cfg(feature = "harness")]
            Inner::Test(shared) => Ok(DbConnection {
                inner: ConnInner::Test(shared.lock_autocommit().await?),
            }),
        }
    }

    /// Starts a transaction. Under a transaction-mode test it is a `SAVEPOINT`
    /// inside the test's transaction, and nesting works to any depth (call
    /// [`sqlx::Connection::begin`] on the guard).
    ///
    /// Dropping the guard without [`DbTransaction::commit`] rolls it back.
    pub async fn begin(&self) -> sqlx::Result<DbTransaction> {
        match &self.inner {
            Inner::Pool(pool) => Ok(DbTransaction {
                inner: TxInner::Pool(pool.begin().await?),
            }),
            #[cfg(feature = "harness")]
            Inner::Test(shared) => Ok(DbTransaction {
                inner: TxInner::Test {
                    guard: shared.begin().await?,
                    open: true,
                },
            }),
        }
    }

    /// Starts a transaction with a statement of the app's own (`BEGIN
    /// ISOLATION LEVEL SERIALIZABLE`, say), as [`sqlx::Pool::begin_with`].
    /// Under a transaction-mode test a `SAVEPOINT` inside the test's
    /// transaction stands for it, as for [`Db::begin`], and the statement's
    /// transaction modes are set on it with `SET TRANSACTION`: `READ ONLY`
    /// holds until the savepoint ends; an isolation level other than the
    /// test's (`READ COMMITTED`) fails, saying that such a test runs in
    /// `isolation = "database"` (the test's transaction has begun already).
    pub async fn begin_with(
        &self,
        statement: impl sqlx::SqlSafeStr,
    ) -> sqlx::Result<DbTransaction> {
        match &self.inner {
            Inner::Pool(pool) => Ok(DbTransaction {
                inner: TxInner::Pool(pool.begin_with(statement).await?),
            }),
            #[cfg(feature = "harness")]
            Inner::Test(_) => {
                let statement = statement.into_sql_str();
                let mut tx = self.begin().await?;
                if let Some(modes) = transaction_modes(statement.as_str()) {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET TRANSACTION {modes}")))
                        .execute(&mut *tx)
                        .await?;
                }
                Ok(tx)
            }
        }
    }
}

/// The transaction modes of a `BEGIN`/`START TRANSACTION` statement (`READ
/// ONLY`, `ISOLATION LEVEL ..`, `DEFERRABLE`), if it names any.
#[cfg(feature = "harness")]
fn transaction_modes(statement: &str) -> Option<&str> {
    let text = statement.trim().trim_end_matches(';').trim_end();
    let upper = text.to_ascii_uppercase();
    let rest = if let Some(rest) = upper.strip_prefix("START TRANSACTION") {
        &text[text.len() - rest.len()..]
    } else if let Some(rest) = upper.strip_prefix("BEGIN") {
        let rest = rest.trim_start();
        let rest = rest
            .strip_prefix("TRANSACTION")
            .or_else(|| rest.strip_prefix("WORK"))
            .unwrap_or(rest);
        &text[text.len() - rest.len()..]
    } else {
        return None;
    };
    let rest = rest.trim();
    (!rest.is_empty()).then_some(rest)
}

/// A connection taken from a [`Db`]. Derefs to [`DbConn`], which derefs to
/// [`PgConnection`]: `.execute(&mut *conn)` and a `&mut PgConnection`
/// parameter both work.
pub struct DbConnection {
    inner: ConnInner,
}

enum ConnInner {
    Pool(sqlx::pool::PoolConnection<Postgres>),
    #[cfg(feature = "harness")]
    Test(SlotGuard),
}

impl fmt::Debug for DbConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DbConnection")
    }
}

impl Deref for DbConnection {
    type Target = DbConn;
    fn deref(&self) -> &DbConn {
        DbConn::from_ref(match &self.inner {
            ConnInner::Pool(c) => c,
            #[cfg(feature = "harness")]
            ConnInner::Test(g) => g.conn(),
        })
    }
}

impl DerefMut for DbConnection {
    fn deref_mut(&mut self) -> &mut DbConn {
        DbConn::from_mut(match &mut self.inner {
            ConnInner::Pool(c) => c,
            #[cfg(feature = "harness")]
            ConnInner::Test(g) => g.conn_mut(),
        })
    }
}

/// A transaction started with [`Db::begin`]. Derefs to [`DbConn`] (and on
/// to [`PgConnection`]), so queries run on it with `.execute(&mut *tx)`, and
/// `&mut *tx` can be passed where a `&mut PgConnection` is expected.
///
/// Dropping it without calling [`commit`](DbTransaction::commit) rolls it back.
pub struct DbTransaction {
    inner: TxInner,
}

enum TxInner {
    Pool(sqlx::Transaction<'static, Postgres>),
    #[cfg(feature = "harness")]
    Test {
        guard: SlotGuard,
        open: bool,
    },
    Taken,
}

impl fmt::Debug for DbTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DbTransaction")
    }
}

impl DbTransaction {
    /// Commits the transaction (under test: `RELEASE SAVEPOINT`).
    pub async fn commit(mut self) -> sqlx::Result<()> {
        match &mut self.inner {
            TxInner::Pool(_) => match std::mem::replace(&mut self.inner, TxInner::Taken) {
                TxInner::Pool(tx) => tx.commit().await,
                _ => unreachable!(),
            },
            #[cfg(feature = "harness")]
            TxInner::Test { guard, open } => {
                let depth = guard.depth();
                let committed = guard.commit_savepoint().await;
                // Ended (a failed deferred constraint rolls it back), or
                // still open for the drop below to roll back.
                *open = guard.depth() >= depth;
                committed
            }
            TxInner::Taken => Ok(()),
        }
    }

    /// Rolls the transaction back (under test: `ROLLBACK TO SAVEPOINT`).
    pub async fn rollback(mut self) -> sqlx::Result<()> {
        match &mut self.inner {
            TxInner::Pool(_) => match std::mem::replace(&mut self.inner, TxInner::Taken) {
                TxInner::Pool(tx) => tx.rollback().await,
                _ => unreachable!(),
            },
            #[cfg(feature = "harness")]
            TxInner::Test { guard, open } => {
                guard.rollback_savepoint().await?;
                *open = false;
                Ok(())
            }
            TxInner::Taken => Ok(()),
        }
    }
}

impl Drop for DbTransaction {
    fn drop(&mut self) {
        #[cfg(feature = "harness")]
        if let TxInner::Test { guard, open: true } = &mut self.inner {
            guard.start_rollback_savepoint();
        }
    }
}

impl Deref for DbTransaction {
    type Target = DbConn;
    fn deref(&self) -> &DbConn {
        DbConn::from_ref(match &self.inner {
            TxInner::Pool(tx) => tx,
            #[cfg(feature = "harness")]
            TxInner::Test { guard, .. } => guard.conn(),
            TxInner::Taken => unreachable!("transaction used after commit"),
        })
    }
}

impl DerefMut for DbTransaction {
    fn deref_mut(&mut self) -> &mut DbConn {
        DbConn::from_mut(match &mut self.inner {
            TxInner::Pool(tx) => tx,
            #[cfg(feature = "harness")]
            TxInner::Test { guard, .. } => guard.conn_mut(),
            TxInner::Taken => unreachable!("transaction used after commit"),
        })
    }
}

type Step = Either<PgQueryResult, PgRow>;

impl<'c> Executor<'c> for &'c Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, sqlx::Result<Step>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        match &self.inner {
            Inner::Pool(pool) => pool.fetch_many(query),
            #[cfg(feature = "harness")]
            Inner::Test(shared) => {
                let shared = shared.clone();
                steps_stream(Box::pin(async move {
                    let query = OwnedQuery::take(query)?;
                    shared.run_statement(query).await
                }))
            }
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, sqlx::Result<Option<PgRow>>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        match &self.inner {
            Inner::Pool(pool) => pool.fetch_optional(query),
            #[cfg(feature = "harness")]
            Inner::Test(shared) => {
                let shared = shared.clone();
                async move {
                    let query = OwnedQuery::take(query)?;
                    let steps = shared.run_statement(query).await?;
                    Ok(steps.into_iter().find_map(|s| s.right()))
                }
                .boxed()
            }
        }
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, sqlx::Result<PgStatement>>
    where
        'c: 'e,
    {
        match &self.inner {
            Inner::Pool(pool) => pool.prepare_with(sql, parameters),
            #[cfg(feature = "harness")]
            Inner::Test(shared) => {
                let shared = shared.clone();
                async move {
                    let mut guard = shared.lock_autocommit().await?;
                    guard.conn_mut().prepare_with(sql, parameters).await
                }
                .boxed()
            }
        }
    }

    #[doc(hidden)]
    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> BoxFuture<'e, sqlx::Result<sqlx::Describe<Postgres>>>
    where
        'c: 'e,
    {
        match &self.inner {
            Inner::Pool(pool) => pool.describe(sql),
            #[cfg(feature = "harness")]
            Inner::Test(shared) => {
                let shared = shared.clone();
                async move {
                    let mut guard = shared.lock_autocommit().await?;
                    guard.conn_mut().describe(sql).await
                }
                .boxed()
            }
        }
    }
}

/// The connection behind a [`DbConnection`] or [`DbTransaction`] guard.
///
/// It derefs to [`PgConnection`], so `&mut *tx` goes wherever a
/// `&mut PgConnection` is expected, and `&mut DbConn` is itself a
/// [`sqlx::Executor`] and a [`sqlx::Acquire`]. In production it is the
/// connection, nothing more. Under `#[db_test]`, statements run through it
/// are counted and logged with the test's others (`TestDb::query_count`,
/// `assert_queries`, the failure report).
#[repr(transparent)]
pub struct DbConn(PgConnection);

impl DbConn {
    fn from_ref(conn: &PgConnection) -> &DbConn {
        // SAFETY: `DbConn` is `repr(transparent)` over `PgConnection`.
        unsafe { &*(conn as *const PgConnection as *const DbConn) }
    }

    fn from_mut(conn: &mut PgConnection) -> &mut DbConn {
        // SAFETY: `DbConn` is `repr(transparent)` over `PgConnection`.
        unsafe { &mut *(conn as *mut PgConnection as *mut DbConn) }
    }
}

impl fmt::Debug for DbConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DbConn")
    }
}

impl Deref for DbConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.0
    }
}

impl DerefMut for DbConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.0
    }
}

impl AsMut<PgConnection> for DbConn {
    fn as_mut(&mut self) -> &mut PgConnection {
        &mut self.0
    }
}

impl<'c> Executor<'c> for &'c mut DbConn {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, sqlx::Result<Step>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        // A test's connection: the statement gets what a statement through
        // `Db` gets (autocommit semantics, counting, recovery if dropped).
        #[cfg(feature = "harness")]
        if let Some(state) = crate::shared::state_of(&self.0) {
            return steps_stream(Box::pin(async move {
                crate::shared::run_on_guard(&state, &mut self.0, OwnedQuery::take(query)?).await
            }));
        }
        self.0.fetch_many(query)
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, sqlx::Result<Option<PgRow>>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        #[cfg(feature = "harness")]
        if let Some(state) = crate::shared::state_of(&self.0) {
            return async move {
                let query = OwnedQuery::take(query)?;
                let steps = crate::shared::run_on_guard(&state, &mut self.0, query).await?;
                Ok(steps.into_iter().find_map(|s| s.right()))
            }
            .boxed();
        }
        self.0.fetch_optional(query)
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, sqlx::Result<PgStatement>>
    where
        'c: 'e,
    {
        self.0.prepare_with(sql, parameters)
    }

    #[doc(hidden)]
    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> BoxFuture<'e, sqlx::Result<sqlx::Describe<Postgres>>>
    where
        'c: 'e,
    {
        self.0.describe(sql)
    }
}

impl<'c> sqlx::Acquire<'c> for &'c mut DbConn {
    type Database = Postgres;
    type Connection = &'c mut PgConnection;

    fn acquire(self) -> BoxFuture<'c, sqlx::Result<Self::Connection>> {
        futures_util::future::ready(Ok(&mut self.0)).boxed()
    }

    fn begin(self) -> BoxFuture<'c, sqlx::Result<sqlx::Transaction<'c, Postgres>>> {
        sqlx::Transaction::begin(&mut self.0, None).boxed()
    }
}

/// The connection [`sqlx::Acquire`] gives for `&Db`: a [`DbConnection`]
/// that derefs straight to [`PgConnection`], as `Acquire` requires.
#[derive(Debug)]
pub struct DbAcquired(DbConnection);

impl Deref for DbAcquired {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.0
    }
}

impl DerefMut for DbAcquired {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.0
    }
}

/// `&Db` is an [`sqlx::Acquire`], so functions written as
/// `async fn f<'a>(conn: impl Acquire<'a, Database = Postgres>)` take the
/// app's handle.
///
/// In production both methods are the pool's. Under a transaction-mode
/// test, `acquire()` is the test's connection (like [`Db::acquire`]), and
/// `begin()` is sqlx's own [`sqlx::Transaction`] on it, nested in the test's
/// transaction: a savepoint that its `commit()` releases and its `rollback()`
/// (or drop) rolls back, all of it undone with the test. Until it ends, the
/// test's other database calls wait for the connection, as for a guard from
/// [`Db::begin`]. Statements sent through it bypass db-test's statement
/// handling (a raw `COMMIT` still fails the test at its end, and
/// `assert_queries` does not count them); prefer [`Db::begin`] in code
/// written for db-test.
///
/// ```no_run
/// # async fn f(db: db_test::Db) -> sqlx::Result<()> {
/// use sqlx::{Acquire, Postgres};
///
/// async fn add_user<'a>(conn: impl Acquire<'a, Database = Postgres>) -> sqlx::Result<()> {
///     let mut tx = conn.begin().await?;
///     sqlx::query("INSERT INTO users (email) VALUES ('a@example.com')")
///         .execute(&mut *tx)
///         .await?;
///     tx.commit().await
/// }
///
/// add_user(&db).await?;
/// # Ok(())
/// # }
/// ```
impl<'c> sqlx::Acquire<'c> for &'c Db {
    type Database = Postgres;
    type Connection = DbAcquired;

    fn acquire(self) -> BoxFuture<'c, sqlx::Result<DbAcquired>> {
        async move { Ok(DbAcquired(Db::acquire(self).await?)) }.boxed()
    }

    fn begin(self) -> BoxFuture<'c, sqlx::Result<sqlx::Transaction<'c, Postgres>>> {
        match &self.inner {
            Inner::Pool(pool) => {
                let pool = pool.clone();
                async move { pool.begin().await }.boxed()
            }
            #[cfg(feature = "harness")]
            Inner::Test(shared) => {
                let shared = shared.clone();
                async move { crate::shared::detached::transaction(shared.lend().await?).await }
                    .boxed()
            }
        }
    }
}

/// The steps of a statement db-test ran to its end (under test, statements
/// are read whole), as the stream sqlx's `fetch_many` returns.
#[cfg(feature = "harness")]
///
/// `run` comes boxed: the combinators move it by value, which a debug build
/// does through stack copies of its whole size, on the test's thread.
fn steps_stream<'e>(
    run: BoxFuture<'e, sqlx::Result<Vec<Step>>>,
) -> BoxStream<'e, sqlx::Result<Step>> {
    futures_util::stream::once(run)
        .flat_map(|result| match result {
            Ok(steps) => futures_util::stream::iter(steps.into_iter().map(Ok)).left_stream(),
            Err(e) => futures_util::stream::once(async move { Err(e) }).right_stream(),
        })
        .boxed()
}

#[cfg(all(test, feature = "harness"))]
mod begin_with_tests {
    use super::transaction_modes;

    #[test]
    fn the_modes_of_a_begin_statement() {
        assert_eq!(transaction_modes("BEGIN"), None);
        assert_eq!(transaction_modes("begin;"), None);
        assert_eq!(transaction_modes("START TRANSACTION"), None);
        assert_eq!(transaction_modes("BEGIN READ ONLY"), Some("READ ONLY"));
        assert_eq!(
            transaction_modes("begin transaction isolation level serializable;"),
            Some("isolation level serializable")
        );
        assert_eq!(
            transaction_modes("START TRANSACTION READ ONLY, DEFERRABLE"),
            Some("READ ONLY, DEFERRABLE")
        );
        assert_eq!(
            transaction_modes("BEGIN WORK READ WRITE"),
            Some("READ WRITE")
        );
        assert_eq!(transaction_modes("SELECT 1"), None);
    }
}
