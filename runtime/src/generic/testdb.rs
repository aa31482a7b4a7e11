//! [`TestDb<DB>`](TestDb), and the `FromTestContext` impls of the generic handles.

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use sqlx::{Execute, Executor};

use super::shared::TestState;
use super::{Db, DbConnection, DbTransaction, Dialect, Step};
use crate::context::{BoxError, FromTestContext, TestContext};

/// The test's handle on its database, generic over the database (see the
/// backend modules' aliases, such as `db_test::sqlite::TestDb`).
///
/// In transaction mode (the default) it is the test's one connection, inside
/// a transaction that is rolled back when the test ends. `&TestDb` is a
/// [`sqlx::Executor`], it derefs to [`Db`], and [`TestDb::db`] gives the app
/// a `Db` on the same transaction. In database mode it is a pool on the
/// test's own database.
///
/// ```no_run
/// # #[cfg(feature = "sqlite")]
/// # mod m {
/// use db_test::db_test;
/// use db_test::sqlite::TestDb;
///
/// #[db_test]
/// async fn inserts_are_visible_inside_the_test(db: TestDb) {
///     sqlx::query("INSERT INTO users (email) VALUES ('a@example.com')")
///         .execute(&db).await.unwrap();
///     let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
///         .fetch_one(&db).await.unwrap();
///     assert_eq!(n, 1);
/// }
/// # }
/// ```
pub struct TestDb<DB: Dialect> {
    state: Arc<TestState<DB>>,
}

impl<DB: Dialect> Clone for TestDb<DB> {
    fn clone(&self) -> Self {
        TestDb {
            state: self.state.clone(),
        }
    }
}

impl<DB: Dialect> std::fmt::Debug for TestDb<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb")
            .field("db", &self.state.db)
            .finish()
    }
}

impl<DB: Dialect> TestDb<DB> {
    /// A [`Db`] for the app: every clone runs on the test's transaction.
    pub fn db(&self) -> Db<DB> {
        self.state.db.clone()
    }

    /// [`Db::begin`]: an app transaction, a savepoint under test.
    pub async fn begin(&self) -> sqlx::Result<DbTransaction<DB>> {
        self.state.db.begin().await
    }

    /// [`Db::acquire`]: the test's connection (under test), as a guard.
    pub async fn acquire(&self) -> sqlx::Result<DbConnection<DB>> {
        self.state.db.acquire().await
    }

    /// Options for opening more connections to the test's database. In
    /// transaction mode such a connection does not see the test's
    /// uncommitted writes, and must not write. On SQLite in transaction
    /// mode the test's database is an in-memory copy no other connection
    /// can open: these options name a database of their own (empty); a
    /// test that needs more connections runs in `isolation = "database"`.
    pub fn connect_options(&self) -> <DB::Connection as sqlx::Connection>::Options {
        self.state.options.clone()
    }

    /// Sets how long a task waits for the test's connection while another
    /// task holds it (default `DB_TEST_CHECKOUT_TIMEOUT`, 10 s). No effect
    /// in database mode.
    pub fn set_checkout_timeout(&self, timeout: std::time::Duration) {
        if let Some(shared) = self.state.db.shared() {
            shared.set_checkout_timeout(timeout);
        }
    }

    /// How many statements ran on the test's connection so far, by the test
    /// or by the app (through `Db`, in an app transaction, on a connection
    /// from `acquire()`). Transaction control is not counted. Always 0 in
    /// database mode.
    pub async fn query_count(&self) -> u64 {
        self.state
            .db
            .shared()
            .map(|s| s.statement_count())
            .unwrap_or(0)
    }

    /// Runs `work` and asserts that it ran exactly `expected` statements on
    /// the test's connection (see [`TestDb::query_count`]). On a mismatch the
    /// panic lists the statements that ran.
    #[track_caller]
    pub fn assert_queries<'a, W>(
        &'a self,
        expected: u64,
        work: W,
    ) -> impl Future<Output = W::Output> + 'a
    where
        W: std::future::IntoFuture + 'a,
        W::IntoFuture: 'a,
    {
        let caller = std::panic::Location::caller();
        async move {
            let before = self.query_count().await;
            let out = work.await;
            let ran = self.query_count().await.saturating_sub(before);
            if ran != expected {
                let recent = self
                    .state
                    .db
                    .shared()
                    .map(|s| s.recent_statements())
                    .unwrap_or_default();
                let shown: Vec<String> = recent
                    .iter()
                    .rev()
                    .take(ran.min(recent.len() as u64) as usize)
                    .rev()
                    .map(|s| format!("  {}", s.sql))
                    .collect();
                panic!(
                    "db-test: expected {expected} statement(s), but {ran} ran (at {caller}):\n{}",
                    shown.join("\n")
                );
            }
            out
        }
    }
}

impl<DB: Dialect> Deref for TestDb<DB> {
    type Target = Db<DB>;
    fn deref(&self) -> &Db<DB> {
        &self.state.db
    }
}

/// The backend state of a test, for a parameter of type `what`.
pub(crate) fn test_state<DB: Dialect>(
    ctx: &TestContext,
    what: &str,
) -> Result<Arc<TestState<DB>>, BoxError> {
    ctx.backend_state::<TestState<DB>>(what, DB::BACKEND)
}

impl<DB: Dialect> FromTestContext for TestDb<DB> {
    const BACKEND: crate::Backend = DB::BACKEND;
    async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
        Ok(TestDb {
            state: test_state::<DB>(ctx, std::any::type_name::<Self>())?,
        })
    }
}

impl<DB: Dialect> FromTestContext for Db<DB> {
    const BACKEND: crate::Backend = DB::BACKEND;
    async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
        Ok(test_state::<DB>(ctx, std::any::type_name::<Self>())?
            .db
            .clone())
    }
}

impl<'c, DB: Dialect> Executor<'c> for &'c TestDb<DB> {
    type Database = DB;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, sqlx::Result<Step<DB>>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        (&self.state.db).fetch_many(query)
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, sqlx::Result<Option<DB::Row>>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        (&self.state.db).fetch_optional(query)
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [DB::TypeInfo],
    ) -> BoxFuture<'e, sqlx::Result<DB::Statement>>
    where
        'c: 'e,
    {
        (&self.state.db).prepare_with(sql, parameters)
    }

    #[doc(hidden)]
    fn describe<'e>(self, sql: sqlx::SqlStr) -> BoxFuture<'e, sqlx::Result<sqlx::Describe<DB>>>
    where
        'c: 'e,
    {
        (&self.state.db).describe(sql)
    }
}

/// `&TestDb` is an [`sqlx::Acquire`], as [`Db`] is (see its impl).
impl<'c, DB: Dialect> sqlx::Acquire<'c> for &'c TestDb<DB> {
    type Database = DB;
    type Connection = super::db::DbAcquired<DB>;

    fn acquire(self) -> BoxFuture<'c, sqlx::Result<Self::Connection>> {
        sqlx::Acquire::acquire(&self.state.db)
    }

    fn begin(self) -> BoxFuture<'c, sqlx::Result<sqlx::Transaction<'c, DB>>> {
        sqlx::Acquire::begin(&self.state.db)
    }
}
