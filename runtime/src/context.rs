//! The test context and the `FromTestContext` extractor trait.

use std::future::Future;
use std::sync::Arc;

use crate::Db;

/// The database a test runs on, chosen from its parameter types (see
/// [`FromTestContext::BACKEND`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Not tied to a database: the parameter works on every backend.
    Any,
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    MySql,
    /// SQLite.
    Sqlite,
}

impl Backend {
    /// The backend of a test from those of its parameters: the one they
    /// name, PostgreSQL when none names one, `Any` when there are none (the
    /// test needs no database). Two different ones stop the build (it is
    /// evaluated at compile time).
    #[doc(hidden)]
    pub const fn of(params: &[Backend]) -> Backend {
        let mut chosen = Backend::Any;
        let mut i = 0;
        while i < params.len() {
            let b = params[i];
            if !matches!(b, Backend::Any) {
                if !matches!(chosen, Backend::Any) && !b.same(chosen) {
                    panic!(
                        "the parameters of this #[db_test] belong to two different databases \
                         (PostgreSQL, MySQL or SQLite); a test runs on one"
                    );
                }
                chosen = b;
            }
            i += 1;
        }
        match chosen {
            // No parameter at all: no database (see `TestSpec::needs_no_database`).
            Backend::Any if params.is_empty() => Backend::Any,
            Backend::Any => Backend::Postgres,
            b => b,
        }
    }

    /// Whether any of a test's parameters names its database (rather than
    /// leaving it to PostgreSQL, the default).
    #[doc(hidden)]
    pub const fn named(params: &[Backend]) -> bool {
        let mut i = 0;
        while i < params.len() {
            if !matches!(params[i], Backend::Any) {
                return true;
            }
            i += 1;
        }
        false
    }

    const fn same(self, other: Backend) -> bool {
        self as u8 == other as u8
    }

    /// The database's name, for messages.
    pub const fn name(self) -> &'static str {
        match self {
            Backend::Any => "any database",
            Backend::Postgres => "PostgreSQL",
            Backend::MySql => "MySQL/MariaDB",
            Backend::Sqlite => "SQLite",
        }
    }

    /// The URL schemes of the backend.
    pub const fn schemes(self) -> &'static [&'static str] {
        match self {
            Backend::Any => &[],
            Backend::Postgres => &["postgres", "postgresql"],
            Backend::MySql => &["mysql", "mariadb"],
            Backend::Sqlite => &["sqlite"],
        }
    }

    /// The environment variable that names this backend's server, ahead of
    /// `DATABASE_URL`.
    pub const fn url_var(self) -> &'static str {
        match self {
            Backend::Any => "DATABASE_URL",
            Backend::Postgres => "DB_TEST_POSTGRES_URL",
            Backend::MySql => "DB_TEST_MYSQL_URL",
            Backend::Sqlite => "DB_TEST_SQLITE_URL",
        }
    }

    const fn handle_name(self) -> &'static str {
        match self {
            Backend::Any | Backend::Postgres => "db_test::Db",
            Backend::MySql => "db_test::mysql::Db",
            Backend::Sqlite => "db_test::sqlite::Db",
        }
    }
}

/// An error while building a test parameter.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything a `#[db_test]` knows about the running test. Parameters of the
/// test function are built from it by [`FromTestContext`].
#[derive(Clone)]
pub struct TestContext {
    pub(crate) inner: Arc<ContextInner>,
}

pub(crate) struct ContextInner {
    pub(crate) name: &'static str,
    /// The database the test runs on.
    pub(crate) backend: Backend,
    /// Whether the test has a database of its own.
    pub(crate) database_mode: bool,
    /// PostgreSQL: the test's handle; `None` on another backend.
    pub(crate) db: Option<Db>,
    /// The test's connection (PostgreSQL, transaction mode).
    pub(crate) shared: Option<std::sync::Arc<crate::shared::SharedConn>>,
    /// The test's own pool (PostgreSQL, database mode).
    pub(crate) pool: Option<sqlx::PgPool>,
    /// Options to open more connections to the test's database (PostgreSQL).
    pub(crate) options: Option<sqlx::postgres::PgConnectOptions>,
    /// What another backend's setup hands its own parameter types
    /// (`db_test::mysql::Db`, ...), which downcast it.
    pub(crate) backend_state: Option<Arc<dyn std::any::Any + Send + Sync>>,
    /// The name of the test's database.
    pub(crate) database: String,
    /// Tasks started with [`TestContext::spawn`], aborted when the test ends.
    pub(crate) tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl TestContext {
    /// The test's database handle: bound to the test's transaction in
    /// transaction mode, or a pool on the test's own database in database mode.
    ///
    /// # Panics
    ///
    /// If the test runs on another database than PostgreSQL: take that
    /// backend's own handle then (`db_test::mysql::Db`, `db_test::sqlite::Db`).
    pub fn db(&self) -> Db {
        match &self.inner.db {
            Some(db) => db.clone(),
            None => panic!("{}", self.wrong_backend("db_test::Db", Backend::Postgres)),
        }
    }

    /// The database the test runs on.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// The message for a parameter of one backend in a test of another.
    pub(crate) fn wrong_backend(&self, what: &str, wants: Backend) -> String {
        let runs_on = self.inner.backend;
        // The usual case: PostgreSQL's accessor of the context, asked in a
        // test of another database, whose own are on its `TestDb`.
        let own = match runs_on {
            Backend::MySql => {
                "; for this test's own, take a parameter `db: \
                 db_test::mysql::TestDb` and use `db.connect_options()` or `db.db()` (and \
                 `db_test::mysql::server_url()` for its server)"
            }
            Backend::Sqlite => {
                "; for this test's own, take a parameter `db: \
                 db_test::sqlite::TestDb` and use `db.connect_options()` or `db.db()`"
            }
            _ => "",
        };
        format!(
            "`{what}` is a {} handle, but test `{}` runs on {}: its parameter types chose that \
             backend (to run it on {} instead, add a parameter of that backend's own type, such \
             as `{}`, or set the `BACKEND` of your `TestApp`){own}",
            wants.name(),
            self.inner.name,
            runs_on.name(),
            wants.name(),
            wants.handle_name(),
        )
    }

    /// The state another backend's setup left for its parameter types.
    #[allow(dead_code)]
    pub(crate) fn backend_state<T: std::any::Any + Send + Sync>(
        &self,
        what: &str,
        wants: Backend,
    ) -> Result<Arc<T>, BoxError> {
        self.inner
            .backend_state
            .clone()
            .and_then(|s| s.downcast::<T>().ok())
            .ok_or_else(|| self.wrong_backend(what, wants).into())
    }

    /// The test's path, such as `my_crate::tests::inserts_a_user`.
    pub fn test_name(&self) -> &'static str {
        self.inner.name
    }

    /// Options for opening more connections to the test's database, for
    /// example a `PgListener`. In transaction mode such a connection does
    /// not see the test's uncommitted writes; it must not write either,
    /// because it would commit. Prefer `isolation = "database"` for that.
    ///
    /// # Panics
    ///
    /// If the test runs on another database than PostgreSQL.
    pub fn connect_options(&self) -> sqlx::postgres::PgConnectOptions {
        match &self.inner.options {
            Some(options) => options.clone(),
            None => panic!(
                "{}",
                self.wrong_backend("PgConnectOptions", Backend::Postgres)
            ),
        }
    }

    /// The name of the database the test runs in (generated by db-test).
    pub fn database_name(&self) -> &str {
        &self.inner.database
    }

    /// Whether the test has a database of its own (`isolation = "database"`).
    pub fn is_database_mode(&self) -> bool {
        self.inner.database_mode
    }

    /// Spawns a task that belongs to the test: it is aborted when the test
    /// ends, pass or fail, before the test's transaction is rolled back or its
    /// database recycled. Use it for a server, a listener or a worker that the
    /// test starts and never stops itself.
    ///
    /// The task runs on the test's runtime, like `tokio::spawn`. (A plain
    /// `tokio::spawn` from a `current_thread` test is dropped with the test's
    /// runtime anyway; from a test on the shared multi-thread runtime it
    /// keeps running, and any use of the test's `Db` then fails with
    /// "test `..` is over".)
    ///
    /// ```no_run
    /// use db_test::{db_test, TestContext};
    ///
    /// #[db_test]
    /// async fn background_worker(ctx: TestContext) {
    ///     let db = ctx.db();
    ///     ctx.spawn(async move {
    ///         loop {
    ///             let _ = sqlx::query("SELECT 1").execute(&db).await;
    ///             tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    ///         }
    ///     });
    ///     // ... the worker is stopped when the test ends.
    /// }
    /// ```
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handle = tokio::spawn(future);
        let mut tasks = self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle.abort_handle());
        handle
    }

    /// Aborts the tasks of [`TestContext::spawn`]. Called when the test ends.
    /// The context of a test that has no database (no parameters).
    pub(crate) fn without_database(name: &'static str) -> TestContext {
        TestContext {
            inner: Arc::new(ContextInner {
                name,
                backend: Backend::Any,
                database_mode: false,
                db: None,
                shared: None,
                pool: None,
                options: None,
                backend_state: None,
                database: String::new(),
                tasks: Default::default(),
            }),
        }
    }

    pub(crate) fn abort_tasks(&self) {
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            task.abort();
        }
    }

    fn own_pool(&self, what: &str) -> Result<sqlx::PgPool, BoxError> {
        self.inner.pool.clone().ok_or_else(|| {
            format!(
                "`{what}` needs a database of its own, but test `{}` runs in transaction mode; \
                 use `#[db_test(isolation = \"database\")]`",
                self.inner.name
            )
            .into()
        })
    }
}

impl FromTestContext for sqlx::PgPool {
    const BACKEND: Backend = Backend::Postgres;
    const NEEDS_OWN_DATABASE: bool = true;
    const SQLX_TEST_TYPE: bool = true;
    async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
        ctx.own_pool("PgPool")
    }
}

impl FromTestContext for sqlx::pool::PoolConnection<sqlx::Postgres> {
    const BACKEND: Backend = Backend::Postgres;
    const NEEDS_OWN_DATABASE: bool = true;
    const SQLX_TEST_TYPE: bool = true;
    async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
        Ok(ctx.own_pool("PoolConnection<Postgres>")?.acquire().await?)
    }
}

impl FromTestContext
    for (
        sqlx::postgres::PgPoolOptions,
        sqlx::postgres::PgConnectOptions,
    )
{
    const BACKEND: Backend = Backend::Postgres;
    const NEEDS_OWN_DATABASE: bool = true;
    const SQLX_TEST_TYPE: bool = true;
    async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
        ctx.own_pool("(PgPoolOptions, PgConnectOptions)")?;
        Ok((
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(crate::config::database_pool_size()),
            ctx.connect_options(),
        ))
    }
}

impl FromTestContext for TestContext {
    async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
        Ok(ctx.clone())
    }
}

/// Builds a test parameter from the [`TestContext`], the way axum extractors
/// build handler parameters from a request.
///
/// Implement it for your own fixture types:
///
/// ```
/// use db_test::{BoxError, FromTestContext, TestContext};
///
/// struct Admin { id: i64 }
///
/// impl FromTestContext for Admin {
///     async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
///         let db = ctx.db();
///         let id: i64 = sqlx::query_scalar("SELECT 1::int8").fetch_one(&db).await?;
///         Ok(Admin { id })
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a `#[db_test]` parameter: it does not implement `FromTestContext`",
    label = "not a test parameter",
    note = "parameters are built by `db_test::FromTestContext`: use `TestDb`, `Db`, `TestClient<App>`, \
            `TestContext`, `PgPool` (database mode), their MySQL and SQLite versions (`db_test::mysql::TestDb`, \
            `MySqlPool`, ...), or implement `FromTestContext` for your type"
)]
pub trait FromTestContext: Sized + Send {
    /// The database this parameter belongs to. The test runs on the one its
    /// parameters name ([`Backend::Any`] for those that work on every one,
    /// such as `TestContext`); PostgreSQL when none names one. Two
    /// parameters naming different databases are a compile error.
    const BACKEND: Backend = Backend::Any;

    /// Whether this parameter needs a database of its own, as a pool does.
    /// A test with such a parameter runs in `isolation = "database"` unless it
    /// says otherwise, and `isolation = "transaction"` is a compile error.
    ///
    /// The macro asks this constant, never the type's name, so a
    /// `type DbPool = PgPool;` alias behaves as `PgPool`, and an unrelated
    /// type that happens to be called `Pool` does not switch the test's mode.
    const NEEDS_OWN_DATABASE: bool = false;

    /// Whether this parameter needs the test's shared, rolled-back
    /// transaction (`isolation = "transaction"`), for example a fixture that
    /// relies on its writes being undone. A test mixing it with a parameter
    /// that needs a database of its own, or asking for `isolation =
    /// "database"`, is a compile error.
    const NEEDS_SHARED_TRANSACTION: bool = false;

    /// Whether this is one of the types `#[sqlx::test]` injects (`PgPool`,
    /// `PoolConnection<Postgres>`, `(PgPoolOptions, PgConnectOptions)`).
    ///
    /// A test whose parameters all are (or that has none) was most likely
    /// written for `#[sqlx::test]`, and gets its runtime semantics by default:
    /// a current-thread runtime of its own, on which everything it spawns runs
    /// and which is dropped, with those tasks, when the test ends. Leave it
    /// `false` for your own types.
    const SQLX_TEST_TYPE: bool = false;

    /// Builds the value. An error fails the test with the parameter's type name.
    fn from_context(ctx: &TestContext) -> impl Future<Output = Result<Self, BoxError>> + Send;
}

impl FromTestContext for Db {
    const BACKEND: Backend = Backend::Postgres;
    async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
        Ok(ctx.db())
    }
}
