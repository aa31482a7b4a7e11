//! `TestDb`: the test's own handle on its database.

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use sqlx::postgres::{PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Either, Execute, Executor, Postgres};

use crate::Db;
use crate::context::{BoxError, FromTestContext, TestContext};
use crate::shared::SharedConn;

/// The test's handle on its database.
///
/// In transaction mode (the default) it is the test's one connection, inside
/// a transaction that is rolled back when the test ends. `&TestDb` is a
/// [`sqlx::Executor`], and [`TestDb::db`] gives the app a [`Db`] on the same
/// transaction, so the test sees the app's writes and the app sees the test's.
///
/// ```no_run
/// use db_test::{db_test, TestDb};
///
/// #[db_test]
/// async fn inserts_are_visible_inside_the_test(db: TestDb) {
///     sqlx::query("INSERT INTO users (email) VALUES ('a@example.com')")
///         .execute(&db).await.unwrap();
///     let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
///         .fetch_one(&db).await.unwrap();
///     assert_eq!(n, 1);
/// }
/// ```
#[derive(Clone)]
pub struct TestDb {
    db: Db,
    shared: Option<Arc<SharedConn>>,
    options: sqlx::postgres::PgConnectOptions,
}

/// Shows where the test's database is, never the password (the derived
/// `Debug` of `PgConnectOptions` prints it).
impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb")
            .field("db", &self.db)
            .field("shared", &self.shared)
            .field("options", &RedactedOptions(&self.options))
            .finish()
    }
}

/// `PgConnectOptions` without the password (nor TLS key material).
struct RedactedOptions<'a>(&'a sqlx::postgres::PgConnectOptions);

impl std::fmt::Debug for RedactedOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = self.0;
        f.debug_struct("PgConnectOptions")
            .field("host", &o.get_host())
            .field("port", &o.get_port())
            .field("socket", &o.get_socket())
            .field("username", &o.get_username())
            .field("database", &o.get_database())
            .field("application_name", &o.get_application_name())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SharedConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl TestDb {
    /// A [`Db`] for the app: every clone runs on the test's transaction.
    pub fn db(&self) -> Db {
        self.db.clone()
    }

    /// [`Db::begin`]: an app transaction, a savepoint under test. (An
    /// inherent method, so that `db.begin()` means this even where
    /// `sqlx::Acquire` is in scope.)
    pub async fn begin(&self) -> sqlx::Result<crate::DbTransaction> {
        self.db.begin().await
    }

    /// [`Db::acquire`]: the test's connection (under test), as a guard.
    pub async fn acquire(&self) -> sqlx::Result<crate::DbConnection> {
        self.db.acquire().await
    }

    /// Sets how long a task waits for the test's connection while another
    /// task holds it (default `DB_TEST_CHECKOUT_TIMEOUT`, 10 s). No effect in
    /// database mode.
    pub fn set_checkout_timeout(&self, timeout: std::time::Duration) {
        if let Some(shared) = &self.shared {
            shared.set_checkout_timeout(timeout);
        }
    }

    /// Options for opening more connections to the test's database. See
    /// [`TestContext::connect_options`].
    pub fn connect_options(&self) -> sqlx::postgres::PgConnectOptions {
        self.options.clone()
    }

    /// How many statements ran on the test's connection so far, by the test
    /// or by the app: through `Db`, inside an app transaction (`db.begin()`,
    /// then `.execute(&mut *tx)`), and on a connection from `db.acquire()`.
    /// Transaction control (`begin`, `commit`, `rollback`, which become
    /// savepoints under test) is not counted, nor are statements sent on a
    /// nested `sqlx::Transaction` started from the raw `PgConnection`.
    ///
    /// Always 0 in database mode, where statements go to a pool.
    pub async fn query_count(&self) -> u64 {
        match &self.shared {
            Some(shared) => shared.statement_count(),
            None => 0,
        }
    }

    /// Runs `work` (a future, such as an `async` block) and asserts that it
    /// ran exactly `expected` statements on the test's connection, like
    /// Django's `assertNumQueries` (see [`TestDb::query_count`] for what
    /// counts). On a mismatch the panic lists the statements that ran.
    ///
    /// ```no_run
    /// # use db_test::{db_test, TestDb};
    /// #[db_test]
    /// async fn listing_users_is_one_query(db: TestDb) {
    ///     let app = db.db();
    ///     db.assert_queries(1, async {
    ///         sqlx::query("SELECT * FROM users").fetch_all(&app).await.unwrap();
    ///     })
    ///     .await;
    /// }
    /// ```
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
            let after = self.query_count().await;
            let ran = after.saturating_sub(before);
            if ran != expected {
                let recent = match &self.shared {
                    Some(s) => s.recent_statements(),
                    None => Vec::new(),
                };
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

impl Deref for TestDb {
    type Target = Db;
    fn deref(&self) -> &Db {
        &self.db
    }
}

impl FromTestContext for TestDb {
    const BACKEND: crate::Backend = crate::Backend::Postgres;
    async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
        Ok(TestDb {
            db: ctx.db(),
            shared: ctx.inner.shared.clone(),
            options: ctx.connect_options(),
        })
    }
}

type Step = Either<PgQueryResult, PgRow>;

impl<'c> Executor<'c> for &'c TestDb {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, sqlx::Result<Step>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        (&self.db).fetch_many(query)
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, sqlx::Result<Option<PgRow>>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        (&self.db).fetch_optional(query)
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, sqlx::Result<PgStatement>>
    where
        'c: 'e,
    {
        (&self.db).prepare_with(sql, parameters)
    }

    #[doc(hidden)]
    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> BoxFuture<'e, sqlx::Result<sqlx::Describe<Postgres>>>
    where
        'c: 'e,
    {
        (&self.db).describe(sql)
    }
}

/// `&TestDb` is an [`sqlx::Acquire`], as [`Db`] is (see its impl).
impl<'c> sqlx::Acquire<'c> for &'c TestDb {
    type Database = Postgres;
    type Connection = crate::db::DbAcquired;

    fn acquire(self) -> BoxFuture<'c, sqlx::Result<Self::Connection>> {
        sqlx::Acquire::acquire(&self.db)
    }

    fn begin(self) -> BoxFuture<'c, sqlx::Result<sqlx::Transaction<'c, Postgres>>> {
        sqlx::Acquire::begin(&self.db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let options = sqlx::postgres::PgConnectOptions::new()
            .host("db.example")
            .username("app")
            .password("s3cret-pw")
            .database("dbtest_x_w");
        assert!(
            format!("{options:?}").contains("s3cret-pw"),
            "sqlx's own Debug shows it, hence this test"
        );
        // A pool needs a runtime to exist (not to connect: it is lazy).
        let _guard = crate::runtime().enter();
        let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy_with(options.clone());
        let db = TestDb {
            db: Db::from_pool(pool),
            shared: None,
            options,
        };
        for shown in [format!("{db:?}"), format!("{db:#?}")] {
            assert!(!shown.contains("s3cret-pw"), "{shown}");
            assert!(shown.contains("db.example"), "{shown}");
            assert!(shown.contains("dbtest_x_w"), "{shown}");
        }
    }
}
