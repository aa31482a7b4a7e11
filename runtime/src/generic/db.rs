//! [`Db<DB>`](Db): the app-facing handle, a pool in production and the
//! test's transaction under `#[db_test]`.

use std::fmt;
use std::ops::{Deref, DerefMut};
#[cfg(feature = "harness")]
use std::sync::Arc;

#[cfg(feature = "harness")]
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use sqlx::pool::PoolConnection;
use sqlx::{Execute, Executor, Pool};

use super::{Dialect, Step};
#[cfg(feature = "harness")]
use super::{
    OwnedQuery,
    shared::{Shared, SlotGuard},
    sticky::Sticky,
};

/// A handle to the database that application code stores in its state,
/// generic over the database (see the backend modules' aliases, such as
/// `db_test::sqlite::Db`).
///
/// Build it from a pool in production with [`Db::from_pool`] (or
/// `Db::from(pool)`): every call then goes straight to the pool, with no lock
/// and no extra round trip. Under `#[db_test]` the test hands the app a `Db`
/// bound to the test's transaction, so the app's writes are rolled back with
/// the test (see [the module](crate::generic) for what changes under test).
///
/// `&Db` is a [`sqlx::Executor`], used exactly like `&Pool`:
///
/// ```no_run
/// # #[cfg(feature = "sqlite")]
/// # async fn f(pool: sqlx::SqlitePool) -> sqlx::Result<()> {
/// use db_test::sqlite::Db;
///
/// let db = Db::from_pool(pool);
/// sqlx::query("INSERT INTO users (email) VALUES (?)")
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
pub struct Db<DB: Dialect> {
    inner: Inner<DB>,
}

enum Inner<DB: Dialect> {
    Pool(Pool<DB>),
    #[cfg(feature = "harness")]
    Test(Arc<Shared<DB>>),
    /// A database-mode test's pool, with its last statement's connection
    /// kept aside (see [`Sticky`]).
    #[cfg(feature = "harness")]
    Sticky(Arc<Sticky<DB>>),
}

impl<DB: Dialect> Clone for Db<DB> {
    fn clone(&self) -> Self {
        Db {
            inner: match &self.inner {
                Inner::Pool(pool) => Inner::Pool(pool.clone()),
                #[cfg(feature = "harness")]
                Inner::Test(shared) => Inner::Test(shared.clone()),
                #[cfg(feature = "harness")]
                Inner::Sticky(sticky) => Inner::Sticky(sticky.clone()),
            },
        }
    }
}

impl<DB: Dialect> fmt::Debug for Db<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Pool(pool) => f.debug_tuple("Db::Pool").field(pool).finish(),
            #[cfg(feature = "harness")]
            Inner::Test(shared) => f.debug_tuple("Db::Test").field(&shared.label()).finish(),
            #[cfg(feature = "harness")]
            Inner::Sticky(sticky) => f.debug_tuple("Db::Pool").field(&sticky.pool).finish(),
        }
    }
}

impl<DB: Dialect> From<Pool<DB>> for Db<DB> {
    fn from(pool: Pool<DB>) -> Self {
        Db::from_pool(pool)
    }
}

impl<DB: Dialect> Db<DB> {
    /// Wraps a pool. Every call on the returned `Db` goes straight to the pool.
    pub fn from_pool(pool: Pool<DB>) -> Self {
        Db {
            inner: Inner::Pool(pool),
        }
    }

    #[cfg(feature = "harness")]
    pub(crate) fn from_shared(shared: Arc<Shared<DB>>) -> Self {
        Db {
            inner: Inner::Test(shared),
        }
    }

    /// A database-mode test's handle on its pool (see [`Sticky`]).
    #[cfg(feature = "harness")]
    pub(crate) fn from_sticky(sticky: Arc<Sticky<DB>>) -> Self {
        Db {
            inner: Inner::Sticky(sticky),
        }
    }

    #[cfg(feature = "harness")]
    pub(crate) fn shared(&self) -> Option<&Arc<Shared<DB>>> {
        match &self.inner {
            Inner::Test(shared) => Some(shared),
            Inner::Pool(_) | Inner::Sticky(_) => None,
        }
    }

    /// The pool behind this handle, if it is a pool (production, or a test
    /// in `isolation = "database"`). `None` under a transaction-mode test.
    pub fn pool(&self) -> Option<&Pool<DB>> {
        match &self.inner {
            Inner::Pool(pool) => Some(pool),
            #[cfg(feature = "harness")]
            Inner::Test(_) => None,
            #[cfg(feature = "harness")]
            Inner::Sticky(sticky) => Some(&sticky.pool),
        }
    }

    /// Takes a connection. It derefs to [`DbConn`], which derefs to the
    /// database's connection type.
    ///
    /// Under a transaction-mode test this is the test's connection: hold the
    /// guard only as long as needed, because other users of the same `Db`
    /// wait for it. Statements through the guard ([`DbConn`]) are checked as
    /// through the `Db`; its bare connection (`&mut **conn`, or a `&mut`
    /// connection parameter it is passed to) is out of db-test's sight: the
    /// test's transaction is checked at the end, and the connection is
    /// closed rather than handed to the next test (session state set there
    /// would survive the rollback).
    pub async fn acquire(&self) -> sqlx::Result<DbConnection<DB>> {
        match &self.inner {
            Inner::Pool(pool) => Ok(DbConnection {
                inner: ConnInner::Pool(pool.acquire().await?),
            }),
            #[cfg(feature = "harness")]
            Inner::Test(shared) => Ok(DbConnection {
                inner: ConnInner::Test(shared.lock_raw().await?),
            }),
            #[cfg(feature = "harness")]
            Inner::Sticky(sticky) => Ok(DbConnection {
                inner: ConnInner::Pool(sticky.take().await?),
            }),
        }
    }

    /// Starts a transaction. Under a transaction-mode test it is a
    /// `SAVEPOINT` inside the test's transaction.
    ///
    /// Dropping the guard without [`DbTransaction::commit`] rolls it back.
    pub async fn begin(&self) -> sqlx::Result<DbTransaction<DB>> {
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
            #[cfg(feature = "harness")]
            Inner::Sticky(sticky) => Ok(DbTransaction {
                inner: TxInner::Pool(sqlx::Transaction::begin(sticky.take().await?, None).await?),
            }),
        }
    }
}

impl<DB: Dialect> Db<DB> {
    /// Starts a transaction with a statement of the app's own (SQLite's
    /// `BEGIN IMMEDIATE`, MySQL's `START TRANSACTION WITH CONSISTENT
    /// SNAPSHOT`), as [`sqlx::Pool::begin_with`]. Under a transaction-mode
    /// test the statement is not sent: a `SAVEPOINT` inside the test's
    /// transaction stands for it, as for [`Db::begin`] (the test's
    /// transaction has begun already, and a copy of SQLite's, or a
    /// rolled-back transaction, has no other writer to lock out).
    pub async fn begin_with(
        &self,
        statement: impl sqlx::SqlSafeStr,
    ) -> sqlx::Result<DbTransaction<DB>> {
        match &self.inner {
            Inner::Pool(pool) => Ok(DbTransaction {
                inner: TxInner::Pool(pool.begin_with(statement).await?),
            }),
            #[cfg(feature = "harness")]
            Inner::Sticky(sticky) => Ok(DbTransaction {
                inner: TxInner::Pool(
                    sqlx::Transaction::begin(sticky.take().await?, Some(statement.into_sql_str()))
                        .await?,
                ),
            }),
            #[cfg(feature = "harness")]
            Inner::Test(_) => {
                let _ = statement;
                self.begin().await
            }
        }
    }
}

/// A connection taken from a [`Db`] with [`Db::acquire`]. Derefs to
/// [`DbConn`], which derefs to the database's connection type:
/// `.execute(&mut *conn)` works, and so does `&mut **conn` where a
/// `&mut SqliteConnection` (say) is expected.
pub struct DbConnection<DB: Dialect> {
    inner: ConnInner<DB>,
}

enum ConnInner<DB: Dialect> {
    Pool(PoolConnection<DB>),
    #[cfg(feature = "harness")]
    Test(SlotGuard<DB>),
}

impl<DB: Dialect> fmt::Debug for DbConnection<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DbConnection")
    }
}

impl<DB: Dialect> Deref for DbConnection<DB> {
    type Target = DbConn<DB>;
    fn deref(&self) -> &DbConn<DB> {
        DbConn::from_ref(match &self.inner {
            ConnInner::Pool(c) => &**c,
            #[cfg(feature = "harness")]
            ConnInner::Test(g) => g.conn(),
        })
    }
}

impl<DB: Dialect> DerefMut for DbConnection<DB> {
    fn deref_mut(&mut self) -> &mut DbConn<DB> {
        DbConn::from_mut(match &mut self.inner {
            ConnInner::Pool(c) => &mut **c,
            #[cfg(feature = "harness")]
            ConnInner::Test(g) => g.conn_mut(),
        })
    }
}

/// A transaction started with [`Db::begin`]. Derefs to [`DbConn`] (and on
/// to the database's connection type), so queries run on it with
/// `.execute(&mut *tx)`.
///
/// Dropping it without calling [`commit`](DbTransaction::commit) rolls it back.
pub struct DbTransaction<DB: Dialect> {
    inner: TxInner<DB>,
}

enum TxInner<DB: Dialect> {
    Pool(sqlx::Transaction<'static, DB>),
    #[cfg(feature = "harness")]
    Test {
        guard: SlotGuard<DB>,
        open: bool,
    },
    Taken,
}

impl<DB: Dialect> fmt::Debug for DbTransaction<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DbTransaction")
    }
}

impl<DB: Dialect> DbTransaction<DB> {
    /// Commits the transaction (under test: `RELEASE SAVEPOINT`).
    pub async fn commit(mut self) -> sqlx::Result<()> {
        match std::mem::replace(&mut self.inner, TxInner::Taken) {
            TxInner::Pool(tx) => tx.commit().await,
            #[cfg(feature = "harness")]
            TxInner::Test { mut guard, .. } => guard.end_savepoint(true).await,
            TxInner::Taken => Ok(()),
        }
    }

    /// Rolls the transaction back (under test: `ROLLBACK TO SAVEPOINT`).
    pub async fn rollback(mut self) -> sqlx::Result<()> {
        match std::mem::replace(&mut self.inner, TxInner::Taken) {
            TxInner::Pool(tx) => tx.rollback().await,
            #[cfg(feature = "harness")]
            TxInner::Test { mut guard, .. } => guard.end_savepoint(false).await,
            TxInner::Taken => Ok(()),
        }
    }
}

impl<DB: Dialect> Drop for DbTransaction<DB> {
    fn drop(&mut self) {
        #[cfg(feature = "harness")]
        if let TxInner::Test { guard, open: true } = &mut self.inner {
            guard.start_rollback_savepoint();
        }
    }
}

impl<DB: Dialect> Deref for DbTransaction<DB> {
    type Target = DbConn<DB>;
    fn deref(&self) -> &DbConn<DB> {
        DbConn::from_ref(match &self.inner {
            TxInner::Pool(tx) => &**tx,
            #[cfg(feature = "harness")]
            TxInner::Test { guard, .. } => guard.conn(),
            TxInner::Taken => unreachable!("transaction used after commit"),
        })
    }
}

impl<DB: Dialect> DerefMut for DbTransaction<DB> {
    fn deref_mut(&mut self) -> &mut DbConn<DB> {
        DbConn::from_mut(match &mut self.inner {
            TxInner::Pool(tx) => &mut **tx,
            #[cfg(feature = "harness")]
            TxInner::Test { guard, .. } => guard.conn_mut(),
            TxInner::Taken => unreachable!("transaction used after commit"),
        })
    }
}

impl<'c, DB: Dialect> Executor<'c> for &'c Db<DB> {
    type Database = DB;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, sqlx::Result<Step<DB>>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        match &self.inner {
            Inner::Pool(pool) => DB::pool_fetch_many(pool, query),
            #[cfg(feature = "harness")]
            Inner::Test(shared) => {
                let shared = shared.clone();
                steps_stream::<DB>(Box::pin(async move {
                    shared.run(OwnedQuery::take(query)?).await
                }))
            }
            #[cfg(feature = "harness")]
            Inner::Sticky(sticky) => {
                let sticky = sticky.clone();
                Box::pin(sqlx_core::ext::async_stream::TryAsyncStream::new(
                    move |yielder| async move {
                        use futures_util::TryStreamExt;
                        let mut conn = sticky.take().await?;
                        {
                            let mut steps = DB::conn_fetch_many(&mut conn, query);
                            while let Some(step) = steps.try_next().await? {
                                yielder.r#yield(step).await;
                            }
                        }
                        sticky.keep(conn);
                        Ok(())
                    },
                ))
            }
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, sqlx::Result<Option<DB::Row>>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        match &self.inner {
            Inner::Pool(pool) => DB::pool_fetch_optional(pool, query),
            #[cfg(feature = "harness")]
            Inner::Test(shared) => {
                let shared = shared.clone();
                async move {
                    let steps = shared.run(OwnedQuery::take(query)?).await?;
                    Ok(steps.into_iter().find_map(|s| s.right()))
                }
                .boxed()
            }
            #[cfg(feature = "harness")]
            Inner::Sticky(sticky) => {
                let sticky = sticky.clone();
                async move {
                    let mut conn = sticky.take().await?;
                    let row = DB::conn_fetch_optional(&mut conn, query).await?;
                    sticky.keep(conn);
                    Ok(row)
                }
                .boxed()
            }
        }
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [DB::TypeInfo],
    ) -> BoxFuture<'e, sqlx::Result<DB::Statement>>
    where
        'c: 'e,
    {
        match &self.inner {
            Inner::Pool(pool) => DB::pool_prepare_with(pool, sql, parameters),
            #[cfg(feature = "harness")]
            Inner::Test(shared) => {
                let shared = shared.clone();
                async move {
                    let mut guard = shared.lock_checked().await?;
                    DB::conn_prepare_with(guard.conn_mut(), sql, parameters).await
                }
                .boxed()
            }
            #[cfg(feature = "harness")]
            Inner::Sticky(sticky) => {
                let sticky = sticky.clone();
                async move {
                    let mut conn = sticky.take().await?;
                    let statement = DB::conn_prepare_with(&mut conn, sql, parameters).await?;
                    sticky.keep(conn);
                    Ok(statement)
                }
                .boxed()
            }
        }
    }

    #[doc(hidden)]
    fn describe<'e>(self, sql: sqlx::SqlStr) -> BoxFuture<'e, sqlx::Result<sqlx::Describe<DB>>>
    where
        'c: 'e,
    {
        match &self.inner {
            Inner::Pool(pool) => DB::pool_describe(pool, sql),
            #[cfg(feature = "harness")]
            Inner::Test(shared) => {
                let shared = shared.clone();
                async move {
                    let mut guard = shared.lock_checked().await?;
                    DB::conn_describe(guard.conn_mut(), sql).await
                }
                .boxed()
            }
            #[cfg(feature = "harness")]
            Inner::Sticky(sticky) => {
                let sticky = sticky.clone();
                async move {
                    let mut conn = sticky.take().await?;
                    let description = DB::conn_describe(&mut conn, sql).await?;
                    sticky.keep(conn);
                    Ok(description)
                }
                .boxed()
            }
        }
    }
}

/// The connection behind a [`DbConnection`] or [`DbTransaction`] guard.
///
/// It derefs to the database's connection type, and `&mut DbConn` is itself
/// a [`sqlx::Executor`]. In production it is the connection, nothing more.
/// Under `#[db_test]`, statements run through it get what statements
/// through [`Db`] get: refused if they would end the test's transaction,
/// counted and logged with the test's others.
#[repr(transparent)]
pub struct DbConn<DB: Dialect>(DB::Connection);

impl<DB: Dialect> DbConn<DB> {
    fn from_ref(conn: &DB::Connection) -> &DbConn<DB> {
        // SAFETY: `DbConn` is `repr(transparent)` over the connection.
        unsafe { &*(conn as *const DB::Connection as *const DbConn<DB>) }
    }

    fn from_mut(conn: &mut DB::Connection) -> &mut DbConn<DB> {
        // SAFETY: `DbConn` is `repr(transparent)` over the connection.
        unsafe { &mut *(conn as *mut DB::Connection as *mut DbConn<DB>) }
    }
}

impl<DB: Dialect> fmt::Debug for DbConn<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DbConn")
    }
}

impl<DB: Dialect> Deref for DbConn<DB> {
    type Target = DB::Connection;
    fn deref(&self) -> &DB::Connection {
        &self.0
    }
}

impl<DB: Dialect> DerefMut for DbConn<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.0
    }
}

impl<DB: Dialect> AsMut<DB::Connection> for DbConn<DB> {
    fn as_mut(&mut self) -> &mut DB::Connection {
        &mut self.0
    }
}

impl<'c, DB: Dialect> Executor<'c> for &'c mut DbConn<DB> {
    type Database = DB;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, sqlx::Result<Step<DB>>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        #[cfg(feature = "harness")]
        if let Some(state) = super::shared::state_of::<DB>(&self.0) {
            return steps_stream::<DB>(Box::pin(async move {
                super::shared::run_on::<DB>(&state, &mut self.0, OwnedQuery::take(query)?).await
            }));
        }
        DB::conn_fetch_many(&mut self.0, query)
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, sqlx::Result<Option<DB::Row>>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        #[cfg(feature = "harness")]
        if let Some(state) = super::shared::state_of::<DB>(&self.0) {
            return async move {
                let query = OwnedQuery::take(query)?;
                let steps = super::shared::run_on::<DB>(&state, &mut self.0, query).await?;
                Ok(steps.into_iter().find_map(|s| s.right()))
            }
            .boxed();
        }
        DB::conn_fetch_optional(&mut self.0, query)
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [DB::TypeInfo],
    ) -> BoxFuture<'e, sqlx::Result<DB::Statement>>
    where
        'c: 'e,
    {
        DB::conn_prepare_with(&mut self.0, sql, parameters)
    }

    #[doc(hidden)]
    fn describe<'e>(self, sql: sqlx::SqlStr) -> BoxFuture<'e, sqlx::Result<sqlx::Describe<DB>>>
    where
        'c: 'e,
    {
        DB::conn_describe(&mut self.0, sql)
    }
}

/// The steps of a statement db-test ran to its end (under test, statements
/// are read whole), as the stream sqlx's `fetch_many` returns.
#[cfg(feature = "harness")]
///
/// `run` comes boxed: the combinators move it by value, which a debug build
/// does through stack copies of its whole size, on the test's thread.
fn steps_stream<'e, DB: Dialect>(
    run: BoxFuture<'e, sqlx::Result<Vec<Step<DB>>>>,
) -> BoxStream<'e, sqlx::Result<Step<DB>>> {
    use futures_util::StreamExt;
    futures_util::stream::once(run)
        .flat_map(|result| match result {
            Ok(steps) => futures_util::stream::iter(steps.into_iter().map(Ok)).left_stream(),
            Err(e) => futures_util::stream::once(async move { Err(e) }).right_stream(),
        })
        .boxed()
}

impl<'c, DB: Dialect> sqlx::Acquire<'c> for &'c mut DbConn<DB> {
    type Database = DB;
    type Connection = &'c mut DB::Connection;

    fn acquire(self) -> BoxFuture<'c, sqlx::Result<Self::Connection>> {
        Box::pin(futures_util::future::ready(Ok(&mut self.0)))
    }

    fn begin(self) -> BoxFuture<'c, sqlx::Result<sqlx::Transaction<'c, DB>>> {
        Box::pin(sqlx::Transaction::begin(&mut self.0, None))
    }
}

/// The connection [`sqlx::Acquire`] gives for `&Db`: a [`DbConnection`]
/// that derefs straight to the database's connection type, as `Acquire`
/// requires.
#[derive(Debug)]
pub struct DbAcquired<DB: Dialect>(DbConnection<DB>);

impl<DB: Dialect> Deref for DbAcquired<DB> {
    type Target = DB::Connection;
    fn deref(&self) -> &DB::Connection {
        &self.0
    }
}

impl<DB: Dialect> DerefMut for DbAcquired<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.0
    }
}

/// `&Db` is an [`sqlx::Acquire`], so functions written as
/// `async fn f<'a>(conn: impl Acquire<'a, Database = Sqlite>)` take the
/// app's handle.
///
/// In production both methods are the pool's. Under a transaction-mode
/// test, `acquire()` is the test's connection (like [`Db::acquire`]), and
/// `begin()` is sqlx's own [`sqlx::Transaction`] on it, nested in the test's
/// transaction: a savepoint that its `commit()` releases and its `rollback()`
/// (or drop) rolls back, all of it undone with the test. Until it ends, the
/// test's other database calls wait for the connection, as for a guard from
/// [`Db::begin`]. Statements sent through it bypass db-test's statement
/// handling, as on a guard's bare connection: MySQL's implicit-commit DDL is
/// not refused there, and a raw `COMMIT` (or such DDL) fails the test at its
/// end, after it reached the server (on MySQL what the test wrote before it
/// is then in the shared working database, which the next test process
/// clones again). Prefer [`Db::begin`] in code written for db-test.
impl<'c, DB: Dialect> sqlx::Acquire<'c> for &'c Db<DB> {
    type Database = DB;
    type Connection = DbAcquired<DB>;

    fn acquire(self) -> BoxFuture<'c, sqlx::Result<DbAcquired<DB>>> {
        Box::pin(async move { Ok(DbAcquired(Db::acquire(self).await?)) })
    }

    fn begin(self) -> BoxFuture<'c, sqlx::Result<sqlx::Transaction<'c, DB>>> {
        match &self.inner {
            Inner::Pool(pool) => {
                let pool = pool.clone();
                Box::pin(async move { pool.begin().await })
            }
            #[cfg(feature = "harness")]
            Inner::Sticky(sticky) => {
                let sticky = sticky.clone();
                Box::pin(async move { sqlx::Transaction::begin(sticky.take().await?, None).await })
            }
            #[cfg(feature = "harness")]
            Inner::Test(shared) => {
                let shared = shared.clone();
                Box::pin(
                    async move { crate::shared::detached::transaction(shared.lend().await?).await },
                )
            }
        }
    }
}
