//! MySQL and MariaDB: `Db`, `TestDb` and the engine behind `#[db_test]` on `MySqlPool`.
//!
//! A test runs on MySQL/MariaDB when one of its parameters says so:
//! `sqlx::MySqlPool`, `PoolConnection<MySql>`, `(MySqlPoolOptions,
//! MySqlConnectOptions)` (each gives the test a database of its own, as
//! `#[sqlx::test]` does), or `db_test::mysql::Db`/`TestDb`.
//!
//! The server is `DB_TEST_MYSQL_URL`, else a `mysql://`/`mariadb://`
//! `DATABASE_URL`, else an embedded MariaDB/MySQL started from the
//! system's `mariadbd`/`mysqld` (see the README). db-test only creates
//! databases of its own there (`dbtest_...`); the database a URL names is
//! never used.
//!
//! Differences from PostgreSQL:
//!
//! - `check_constraints` is a no-op: MySQL has no deferred constraints, so
//!   every constraint is already checked when its statement runs.
//! - A per-test database (`isolation = "database"`) is a copy of the
//!   template's schema and rows (MySQL has no `CREATE DATABASE ... TEMPLATE`),
//!   which costs a few milliseconds per table.

#[cfg(feature = "harness")]
mod embedded;
#[cfg(feature = "harness")]
pub(crate) mod engine;
#[cfg(feature = "harness")]
#[allow(dead_code)] // Used by the dialect.
mod lexer;

#[cfg(feature = "harness")]
pub(crate) use harness::setup;

#[cfg(feature = "harness")]
mod harness {
    use std::sync::Arc;

    use futures_util::future::BoxFuture;
    use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};

    use super::engine::{self, Engine, settle_pool};
    use crate::config;
    use crate::context::{Backend, BoxError, ContextInner, FromTestContext, TestContext};
    use crate::run::{Ending, Isolation, Prepared, Resource, TestSpec, Verdict, isolation_of};
    use crate::shared::TEARDOWN_GRACE;

    /// What a MySQL test's parameters are built from.
    pub(crate) struct MySqlState {
        /// The test's own pool (database mode).
        pub(crate) pool: Option<MySqlPool>,
        /// Options to the test's database.
        pub(crate) options: MySqlConnectOptions,
    }

    /// Sets up a MySQL test: its database (and fixtures).
    pub(crate) async fn setup(spec: &'static TestSpec) -> Result<Prepared, String> {
        let engine = engine::engine().await?;
        let template = engine.template(spec.migrations, spec.manifest_dir).await?;
        match isolation_of(spec) {
            Isolation::Database => setup_database(spec, engine, &template).await,
            Isolation::Transaction => Err(format!(
                "db-test: test `{}`: transaction mode on MySQL/MariaDB is not available yet; \
                 use `isolation = \"database\"`",
                spec.name
            )),
        }
    }

    async fn setup_database(
        spec: &'static TestSpec,
        engine: &'static Engine,
        template: &engine::Template,
    ) -> Result<Prepared, String> {
        let name = engine.create_test_database(template).await?;
        let options = engine.options_for(&name);
        let pool = MySqlPoolOptions::new()
            .max_connections(config::database_pool_size())
            .acquire_timeout(config::acquire_timeout())
            .test_before_acquire(false)
            .connect_lazy_with(options.clone());
        let resource = Box::new(DatabaseResource {
            engine,
            name: name.clone(),
            pool: pool.clone(),
        });
        // The first connection opens here, on the shared runtime, so it
        // outlives a body on a runtime of its own; fixtures run on it.
        let prepared = async {
            let mut conn = pool.acquire().await.map_err(|e| {
                format!(
                    "db-test: cannot connect to {name} on {}: {e}",
                    engine.display_url
                )
            })?;
            for fixture in spec.fixtures {
                sqlx::raw_sql(sqlx::AssertSqlSafe(fixture.sql))
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| {
                        format!(
                            "db-test: fixture `{}` failed in test `{}`: {e}",
                            fixture.path, spec.name
                        )
                    })?;
            }
            drop(conn);
            settle_pool(&pool).await;
            Ok::<(), String>(())
        }
        .await;
        if let Err(msg) = prepared {
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
            database_mode: true,
            db: None,
            shared: None,
            pool: None,
            options: None,
            backend_state: Some(Arc::new(MySqlState {
                pool: Some(pool),
                options,
            })),
            database: name,
            tasks: Default::default(),
        };
        Ok((resource, inner))
    }

    /// A per-test database, dropped at the end.
    struct DatabaseResource {
        engine: &'static Engine,
        name: String,
        pool: MySqlPool,
    }

    impl Resource for DatabaseResource {
        fn settle(&self) -> BoxFuture<'_, ()> {
            Box::pin(settle_pool(&self.pool))
        }

        fn teardown(self: Box<Self>, ending: Ending) -> BoxFuture<'static, Verdict> {
            Box::pin(async move {
                let DatabaseResource { engine, name, pool } = *self;
                if ending.timed_out {
                    // Whatever the test still runs on the server stops now.
                    engine.kill_sessions(&name, true).await;
                }
                if tokio::time::timeout(TEARDOWN_GRACE, pool.close())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        test = ending.spec.name,
                        database = %name,
                        "db-test: a task still held a connection to the test's database \
                         {TEARDOWN_GRACE:?} after the test ended; its connections were killed"
                    );
                    engine.kill_sessions(&name, true).await;
                }
                if ending.failed && config::keep_failed() {
                    return match engine.keep_test_database(&name).await {
                        Ok(()) => {
                            eprintln!(
                                "db-test: kept the database of failed test `{}` \
                                 (DB_TEST_KEEP_FAILED=1): {name} on {}",
                                ending.spec.name, engine.display_url
                            );
                            (None, Vec::new())
                        }
                        Err(e) => (Some(e), Vec::new()),
                    };
                }
                (engine.drop_test_database(&name).await.err(), Vec::new())
            })
        }
    }

    fn state(ctx: &TestContext, what: &str) -> Result<Arc<MySqlState>, BoxError> {
        ctx.backend_state::<MySqlState>(what, Backend::MySql)
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

    impl FromTestContext for MySqlPool {
        const BACKEND: Backend = Backend::MySql;
        const NEEDS_OWN_DATABASE: bool = true;
        const SQLX_TEST_TYPE: bool = true;
        async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
            own_pool(ctx, "MySqlPool")
        }
    }

    impl FromTestContext for sqlx::pool::PoolConnection<sqlx::MySql> {
        const BACKEND: Backend = Backend::MySql;
        const NEEDS_OWN_DATABASE: bool = true;
        const SQLX_TEST_TYPE: bool = true;
        async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
            Ok(own_pool(ctx, "PoolConnection<MySql>")?.acquire().await?)
        }
    }

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
