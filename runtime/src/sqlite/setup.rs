//! Setting up and tearing down one SQLite test, and the `FromTestContext`
//! impls of sqlx's SQLite types.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::Sqlite;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqlitePool, SqlitePoolOptions};

use super::engine::{self, FileCopy};
use crate::context::{BoxError, ContextInner, FromTestContext, TestContext};
use crate::generic::shared::{Canceller, Shared, TestState, TxResource, apply_fixtures};
use crate::generic::sticky::Sticky;
use crate::generic::{Db, test_state};
use crate::run::{
    Ending, Isolation, Prepared, Resource, TestSpec, Verdict, fill_pool_to, isolation_of,
    settle_pool,
};
use crate::shared::TEARDOWN_GRACE;
use crate::slots::Slots;

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

/// Stops the statements of a test that timed out. SQLite has no cancel
/// request, and sqlx runs a connection's statements on a thread of its own:
/// a progress handler, called every [`Interrupt::EVERY_OPS`] virtual-machine
/// steps of a statement, interrupts it (`SQLITE_INTERRUPT`) once the flag is
/// set. Without it a timed-out test's statement ran to its end (minutes, for
/// a runaway recursive query), holding a core and the test's file.
#[derive(Clone, Default)]
struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// About 10 µs of SQLite's work between two looks at the flag.
    const EVERY_OPS: i32 = 1000;

    /// Puts this test's handler on `conn` (replacing an earlier test's),
    /// and makes `last_insert_rowid()` answer 0 until the test inserts, as
    /// on the new connection `#[sqlx::test]` gives each test (an `INSERT OR
    /// IGNORE` that inserts nothing would otherwise report the last test's
    /// row).
    async fn install(&self, conn: &mut SqliteConnection) -> sqlx::Result<()> {
        let flag = self.0.clone();
        let mut handle = conn.lock_handle().await?;
        handle.set_progress_handler(Self::EVERY_OPS, move || !flag.load(Ordering::Relaxed));
        let raw = handle.as_raw_handle().as_ptr().cast::<std::ffi::c_void>();
        // SAFETY: `raw` is the connection's open handle, locked away from
        // sqlx's worker thread while `handle` lives.
        unsafe { super::sqlite3_set_last_insert_rowid(raw, 0) };
        Ok(())
    }

    /// Interrupts the running statement, and every later one that runs
    /// longer than [`Interrupt::EVERY_OPS`] steps.
    fn fire(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A dropped statement still running: interrupted, then the flag is
/// cleared for the test's next statements. Reads only (see
/// [`super::refuse::is_read`]: every statement of the string a `SELECT`,
/// `VALUES`, `EXPLAIN`, or a `WITH` whose statement is a `SELECT`), which
/// production stops too once their caller is gone. Never anything else:
/// SQLite rolls back the whole transaction of an interrupted write
/// (`INSERT`, `CREATE TABLE .. AS SELECT`, `REINDEX`, ...: the test's
/// earlier writes with it), so a dropped write runs to its end, and stays,
/// as in production.
impl Canceller for Interrupt {
    fn can_cancel(&self, sql: &str) -> bool {
        super::refuse::is_read(sql)
    }

    fn cancel(&self) -> futures_util::future::BoxFuture<'static, ()> {
        self.fire();
        Box::pin(std::future::ready(()))
    }

    fn done(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Opens a test's transaction on an in-memory copy from `pool`, with the
/// test's [`Interrupt`] on it, closing (and replacing) copies that cannot
/// begin one.
async fn open_transaction(
    spec: &'static TestSpec,
    slots: &Slots<Sqlite>,
    what: &str,
    interrupt: &Interrupt,
) -> Result<Arc<Shared<Sqlite>>, String> {
    let mut last_err = None;
    for _ in 0..3 {
        let (mut conn, home) = slots.checkout_connection().await.map_err(|e| {
            format!(
                "db-test: cannot get a connection to {what} for test `{}`: {e}",
                spec.name
            )
        })?;
        if let Err(e) = interrupt.install(&mut conn).await {
            home.discard(conn);
            last_err = Some(e);
            continue;
        }
        match Shared::open(conn, home, spec.name.to_string()).await {
            Ok(shared) => {
                shared.set_canceller(Arc::new(interrupt.clone()));
                return Ok(shared);
            }
            Err((e, conn, home)) => {
                home.discard(conn);
                last_err = Some(e);
            }
        }
    }
    Err(format!(
        "db-test: cannot begin the transaction of test `{}` on {what}: {}",
        spec.name,
        last_err.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// A transaction-mode test: the generic core's resource, and the interrupt
/// of its statements.
struct SqliteTx {
    inner: TxResource<Sqlite>,
    interrupt: Interrupt,
}

impl Resource for SqliteTx {
    fn settle(&self) -> futures_util::future::BoxFuture<'_, ()> {
        self.inner.settle()
    }

    fn teardown(
        self: Box<Self>,
        ending: Ending,
    ) -> futures_util::future::BoxFuture<'static, Verdict> {
        if ending.timed_out {
            // The rollback waits for the running statement: stop it. The
            // connection then is not reused (the teardown closes a
            // connection whose statement it had to wait for).
            self.interrupt.fire();
        } else if self.inner.shared.statement_in_flight() {
            // A statement the test dropped has not ended (a write, which is
            // not interrupted while the test runs: SQLite would roll back
            // the test's transaction with it). Everything is rolled back
            // now anyway: stop it, and close the connection with its
            // in-memory copy, rather than wait for it (SQLite's worker
            // thread would run it to its end, after the test, on a core).
            self.interrupt.fire();
            self.inner.shared.abandon_at_end();
        }
        Box::new(self.inner).teardown(ending)
    }
}

/// Sets up a SQLite test: its transaction on an in-memory copy of the
/// template, or a file copy of its own; then its fixtures.
pub(crate) async fn setup(spec: &'static TestSpec) -> Result<Prepared, String> {
    let template = engine::template(spec.migrations, spec.manifest_dir).await?;
    let interrupt = Interrupt::default();
    match isolation_of(spec) {
        Isolation::Transaction => {
            let what = format!("an in-memory copy of {}", template.path.display());
            let shared = open_transaction(spec, &template.slots, &what, &interrupt).await?;
            shared.check_deferred_constraints(spec.check_constraints, template.defers);
            let db = Db::from_shared(shared.clone());
            let resource = Box::new(SqliteTx {
                inner: TxResource { shared },
                interrupt,
            });
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
                options: template.options.clone(),
            };
            Ok((resource, inner(spec, false, what, state)))
        }
        Isolation::Database => {
            let copy = FileCopy::new(&template)?;
            let options = copy.options();
            let on_connect = interrupt.clone();
            // No statement cache on the test's own pool: sqlx-sqlite keeps a
            // cached statement's columns as prepared, and a `SELECT *`
            // cached before an `ALTER TABLE` then panics its worker (it does
            // under `#[sqlx::test]`). Preparing again costs microseconds.
            let pool = SqlitePoolOptions::new()
                .max_connections(test_pool_size())
                .acquire_timeout(crate::config::acquire_timeout())
                .test_before_acquire(false)
                .after_connect(move |conn, _| {
                    let interrupt = on_connect.clone();
                    Box::pin(async move { interrupt.install(conn).await })
                })
                .connect_lazy_with(options.clone().statement_cache_capacity(0));
            let sticky = Sticky::new(pool.clone());
            let resource = Box::new(FileResource {
                pool: pool.clone(),
                sticky: sticky.clone(),
                copy,
                interrupt,
            });
            // The fixtures run on a connection of their own, closed before
            // the test's pool opens, as under `#[sqlx::test]`: what they
            // set on their connection (a dump's `PRAGMA foreign_keys=OFF`)
            // never reaches the test's. Then the pool's first connection
            // opens here, on the shared runtime, so that the pool works
            // before the body's runtime exists.
            let prepared = async {
                apply_fixtures_alone(spec, &options).await?;
                drop(pool.acquire().await.map_err(|e| {
                    format!(
                        "db-test: cannot open the SQLite copy {} for test `{}`: {e}",
                        resource.copy.path.display(),
                        spec.name
                    )
                })?);
                Ok::<(), String>(())
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
                db: Db::from_sticky(sticky),
                pool: Some(pool),
                options,
            };
            Ok((resource, inner(spec, true, database, state)))
        }
    }
}

/// A database-mode test's file copy, its pool, and the interrupt of the
/// statements of the pool's connections.
struct FileResource {
    pool: SqlitePool,
    /// The test's `Db` on the pool: its connection kept aside goes back
    /// before the pool closes.
    sticky: Arc<Sticky<Sqlite>>,
    copy: FileCopy,
    interrupt: Interrupt,
}

impl Resource for FileResource {
    /// `DB_TEST_DATABASE_POOL_SIZE` (5) connections, not the pool's 1000
    /// (a thread each): what a paused test could use when that was the
    /// pool's size. (One the body opens under its paused clock times out:
    /// the clock jumps to the acquire timeout while SQLite's thread opens
    /// the file.)
    fn prewarm(&self) -> futures_util::future::BoxFuture<'_, ()> {
        let n = self
            .pool
            .options()
            .get_max_connections()
            .min(crate::config::database_pool_size());
        Box::pin(fill_pool_to(&self.pool, n as usize))
    }

    fn settle(&self) -> futures_util::future::BoxFuture<'_, ()> {
        // The connection the test's `Db` kept goes back too: the pool
        // settles only when every connection is idle.
        Box::pin(async move {
            drop(self.sticky.close());
            settle_pool(&self.pool).await
        })
    }

    fn teardown(
        self: Box<Self>,
        ending: Ending,
    ) -> futures_util::future::BoxFuture<'static, Verdict> {
        Box::pin(async move {
            // Closing the pool waits for its connections' statements: stop
            // any still running. A timed-out test's, and also a statement
            // the test dropped partway (a `timeout` around a long read),
            // which SQLite's worker thread runs on to its end otherwise:
            // the pool's close then waited for it, and failed the test
            // after the grace period. The copy goes away with the test.
            self.interrupt.fire();
            drop(self.sticky.close());
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
                match self.copy.keep() {
                    Ok(kept) => eprintln!(
                        "db-test: kept the database of failed test `{}` (DB_TEST_KEEP_FAILED=1): {}",
                        ending.spec.name,
                        kept.display()
                    ),
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
                return (failure, Vec::new());
            }
            if let Err(e) = self.copy.remove() {
                failure.get_or_insert(e);
            }
            (failure, Vec::new())
        })
    }
}

/// The `max_connections` of a database-mode test's pool, and of the
/// `SqlitePoolOptions` it is given: `DB_TEST_DATABASE_POOL_SIZE` if set,
/// else 1000, as `#[sqlx::test]` gives a SQLite test (sqlx-sqlite
/// `testing::test_context`; a pool opens connections only as they are
/// asked for).
fn database_pool_size() -> u32 {
    pool_size_setting().unwrap_or(1000)
}

/// `DB_TEST_DATABASE_POOL_SIZE`, if set.
fn pool_size_setting() -> Option<u32> {
    match std::env::var("DB_TEST_DATABASE_POOL_SIZE") {
        Ok(v) if !v.trim().is_empty() => Some(crate::config::database_pool_size()),
        _ => None,
    }
}

/// The `max_connections` of a database-mode test's own pool: sqlx's 1000,
/// or one more than `DB_TEST_DATABASE_POOL_SIZE`, because the test's `Db`
/// may keep one aside (`generic::sticky`) while the test holds that many.
fn test_pool_size() -> u32 {
    pool_size_setting().map_or(1000, |n| n.saturating_add(1))
}

/// A database-mode test's fixtures, on a connection of their own to its
/// file, closed after them.
async fn apply_fixtures_alone(
    spec: &'static TestSpec,
    options: &SqliteConnectOptions,
) -> Result<(), String> {
    use sqlx::Connection;
    if spec.fixtures.is_empty() {
        return Ok(());
    }
    let conn = SqliteConnection::connect_with(options)
        .await
        .map_err(|e| crate::run::fixtures_connect_failed(spec, e))?;
    crate::run::fixtures_on(spec, conn).await
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
            SqlitePoolOptions::new().max_connections(database_pool_size()),
            options,
        ))
    }
}
