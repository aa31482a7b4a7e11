//! Setting up and tearing down one SQLite test, and the `FromTestContext`
//! impls of sqlx's SQLite types.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Sqlite;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use super::engine::{self, FileCopy};
use crate::context::{BoxError, ContextInner, FromTestContext, TestContext};
use crate::generic::shared::{TestState, TxResource, apply_fixtures, open_transaction};
use crate::generic::{Db, test_state};
use crate::run::{Ending, Isolation, Prepared, Resource, TestSpec, Verdict, isolation_of};
use crate::shared::TEARDOWN_GRACE;

fn inner(
    spec: &'static TestSpec,
    database_mode: bool,
    database: String,
    state: TestState<Sqlite>,
) -> ContextInner {
    ContextInner {
        name: spec.name,
        backend: crate::Backend::Sqlite,
        database_mode,
        db: None,
        shared: None,
        pool: None,
        options: None,
        backend_state: Some(Arc::new(state)),
        database,
        tasks: Default::default(),
    }
}

/// Sets up a SQLite test: its transaction on an in-memory copy of the
/// template, or a file copy of its own; then its fixtures.
pub(crate) async fn setup(spec: &'static TestSpec) -> Result<Prepared, String> {
    let template = engine::template(spec.migrations, spec.manifest_dir).await?;
    match isolation_of(spec) {
        Isolation::Transaction => {
            let what = format!("an in-memory copy of {}", template.path.display());
            let shared = open_transaction(spec, &template.pool, &what).await?;
            let db = Db::from_shared(shared.clone());
            let resource = Box::new(TxResource { shared });
            if let Err(msg) = apply_fixtures(spec, &db).await {
                let ending = Ending {
                    spec,
                    reason: "a fixture failed",
                    failed: true,
                    timed_out: false,
                    on_own_runtime: false,
                };
                let _ = resource.teardown(ending).await;
                return Err(msg);
            }
            let state = TestState {
                db,
                pool: None,
                options: (*template.pool.connect_options()).clone(),
            };
            Ok((resource, inner(spec, false, what, state)))
        }
        Isolation::Database => {
            let copy = FileCopy::new(&template)?;
            let options = copy.options();
            let pool = SqlitePoolOptions::new()
                .max_connections(crate::config::database_pool_size())
                .acquire_timeout(crate::config::acquire_timeout())
                .test_before_acquire(false)
                .connect_lazy_with(options.clone());
            let resource = Box::new(FileResource {
                pool: pool.clone(),
                copy,
            });
            // The first connection opens here, on the shared runtime, so
            // that the pool works before the body's runtime exists.
            let prepared = async {
                drop(pool.acquire().await.map_err(|e| {
                    format!(
                        "db-test: cannot open the SQLite copy {} for test `{}`: {e}",
                        resource.copy.path.display(),
                        spec.name
                    )
                })?);
                apply_fixtures(spec, &Db::from_pool(pool.clone())).await
            }
            .await;
            if let Err(msg) = prepared {
                let ending = Ending {
                    spec,
                    reason: "a fixture failed",
                    failed: false,
                    timed_out: false,
                    on_own_runtime: false,
                };
                let _ = resource.teardown(ending).await;
                return Err(msg);
            }
            let database = resource.copy.path.display().to_string();
            let state = TestState {
                db: Db::from_pool(pool.clone()),
                pool: Some(pool),
                options,
            };
            Ok((resource, inner(spec, true, database, state)))
        }
    }
}

/// A database-mode test's file copy and its pool.
struct FileResource {
    pool: SqlitePool,
    copy: FileCopy,
}

impl Resource for FileResource {
    fn settle(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            // Connections the body released return to the pool through a
            // task on the body's runtime: let those run.
            let deadline = std::time::Instant::now() + Duration::from_millis(200);
            while (self.pool.num_idle() as u32) < self.pool.size()
                && std::time::Instant::now() < deadline
            {
                tokio::task::yield_now().await;
                std::thread::sleep(Duration::from_micros(100));
            }
        })
    }

    fn teardown(
        self: Box<Self>,
        ending: Ending,
    ) -> futures_util::future::BoxFuture<'static, Verdict> {
        Box::pin(async move {
            let mut failure = None;
            if crate::clock::timeout(TEARDOWN_GRACE, self.pool.close())
                .await
                .is_err()
            {
                failure = Some(format!(
                    "db-test: a task still held a connection to {} {TEARDOWN_GRACE:?} after test \
                     `{}` ended",
                    self.copy.path.display(),
                    ending.spec.name
                ));
            }
            if ending.failed && crate::config::keep_failed() {
                eprintln!(
                    "db-test: kept the database of failed test `{}` (DB_TEST_KEEP_FAILED=1): {}",
                    ending.spec.name,
                    self.copy.path.display()
                );
                return (failure, Vec::new());
            }
            if let Err(e) = self.copy.remove() {
                failure.get_or_insert(e);
            }
            (failure, Vec::new())
        })
    }
}

fn own_pool(ctx: &TestContext, what: &str) -> Result<SqlitePool, BoxError> {
    test_state::<Sqlite>(ctx, what)?
        .pool
        .clone()
        .ok_or_else(|| {
            format!(
                "`{what}` needs a database of its own, but test `{}` runs in transaction mode; \
             use `#[db_test(isolation = \"database\")]`",
                ctx.test_name()
            )
            .into()
        })
}

impl FromTestContext for SqlitePool {
    const BACKEND: crate::Backend = crate::Backend::Sqlite;
    const NEEDS_OWN_DATABASE: bool = true;
    const SQLX_TEST_TYPE: bool = true;
    async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
        own_pool(ctx, "SqlitePool")
    }
}

impl FromTestContext for PoolConnection<Sqlite> {
    const BACKEND: crate::Backend = crate::Backend::Sqlite;
    const NEEDS_OWN_DATABASE: bool = true;
    const SQLX_TEST_TYPE: bool = true;
    async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
        Ok(own_pool(ctx, "PoolConnection<Sqlite>")?.acquire().await?)
    }
}

impl FromTestContext for (SqlitePoolOptions, SqliteConnectOptions) {
    const BACKEND: crate::Backend = crate::Backend::Sqlite;
    const NEEDS_OWN_DATABASE: bool = true;
    const SQLX_TEST_TYPE: bool = true;
    async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
        let what = "(SqlitePoolOptions, SqliteConnectOptions)";
        own_pool(ctx, what)?;
        let options = test_state::<Sqlite>(ctx, what)?.options.clone();
        Ok((
            SqlitePoolOptions::new().max_connections(crate::config::database_pool_size()),
            options,
        ))
    }
}
