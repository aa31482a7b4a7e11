//! What a `#[db_test]` expands into calls. Not public API.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::FutureExt;

use crate::context::{ContextInner, FromTestContext, TestContext};
pub use crate::postgres::engine::Migrations;
use crate::postgres::engine::Template;
use crate::postgres::signal::{Backends, Signal, signal_backends};
use crate::shared::{LoggedStatement, SharedConn, TEARDOWN_GRACE};
use crate::{Db, config};

pub use sqlx;

/// What `migrator = "PATH"` may name: a `static Migrator` (from
/// `sqlx::migrate!`), or a `LazyLock<Migrator>` built at run time.
pub trait AsMigrator: Sync + 'static {
    /// The migrator.
    fn as_migrator(&'static self) -> &'static sqlx::migrate::Migrator;
}

impl AsMigrator for sqlx::migrate::Migrator {
    fn as_migrator(&'static self) -> &'static sqlx::migrate::Migrator {
        self
    }
}

impl AsMigrator for std::sync::LazyLock<sqlx::migrate::Migrator> {
    fn as_migrator(&'static self) -> &'static sqlx::migrate::Migrator {
        self
    }
}

/// One SQL fixture, embedded with `include_str!`.
#[derive(Debug, Clone, Copy)]
pub struct Fixture {
    /// The path as written in the attribute.
    pub path: &'static str,
    /// The file's contents.
    pub sql: &'static str,
}

/// How a test is isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// A transaction on the shared working database, rolled back at the end.
    Transaction,
    /// A fresh database cloned from the template, dropped at the end.
    Database,
}

/// Which tokio runtime a test's body runs on (`flavor = ".."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// A current-thread runtime of the test's own, on the test's thread, as
    /// `#[tokio::test]` and `#[sqlx::test]` give: what the body spawns runs
    /// on that thread and is dropped when the test ends.
    CurrentThread,
    /// db-test's shared multi-thread runtime; with `worker_threads`, a
    /// multi-thread runtime of the test's own.
    MultiThread,
}

/// Everything the macro knows about one test.
#[derive(Debug)]
pub struct TestSpec {
    /// `module_path!()::name`.
    pub name: &'static str,
    /// `env!("CARGO_MANIFEST_DIR")` of the test's crate.
    pub manifest_dir: &'static str,
    /// Where migrations come from.
    pub migrations: Migrations,
    /// Fixtures, in order.
    pub fixtures: &'static [Fixture],
    /// Explicit isolation, or `None` to choose from the parameters.
    pub isolation: Option<Isolation>,
    /// Whether any parameter needs a database of its own.
    pub wants_database: bool,
    /// Timeout in milliseconds; 0 means the default.
    pub timeout_ms: u64,
    /// Run `SET CONSTRAINTS ALL IMMEDIATE` before the rollback.
    pub check_constraints: bool,
    /// Whether every parameter is one of `#[sqlx::test]`'s types (or there
    /// is none): the test then defaults to `#[sqlx::test]`'s runtime.
    pub sqlx_style: bool,
    /// The database the test runs on, from its parameter types.
    pub backend: crate::Backend,
    /// Explicit `flavor`, or `None` for the default.
    pub flavor: Option<Flavor>,
    /// `worker_threads` (multi-thread only); 0 when not given.
    pub worker_threads: usize,
    /// `start_paused = true` (current-thread only).
    pub start_paused: bool,
}

/// The runtime a test's body runs on.
enum BodyRuntime {
    /// db-test's shared multi-thread runtime.
    Shared,
    /// A runtime of the test's own, dropped (with every task on it) when
    /// the body ends.
    Own(tokio::runtime::Runtime),
}

impl TestSpec {
    fn body_runtime(&self) -> BodyRuntime {
        let flavor = self.flavor.unwrap_or(if self.sqlx_style {
            Flavor::CurrentThread
        } else {
            Flavor::MultiThread
        });
        let built = match flavor {
            Flavor::MultiThread if self.worker_threads == 0 => return BodyRuntime::Shared,
            Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.worker_threads)
                .enable_all()
                .build(),
            Flavor::CurrentThread => {
                let mut builder = tokio::runtime::Builder::new_current_thread();
                builder.enable_all();
                if self.start_paused {
                    builder.start_paused(true);
                }
                builder.build()
            }
        };
        BodyRuntime::Own(built.unwrap_or_else(|e| {
            panic!(
                "db-test: cannot build the runtime of test `{}`: {e}",
                self.name
            )
        }))
    }
}

/// What a test body may return: `()` or `Result<_, E>`.
pub trait TestResult {
    /// Whether it reports a failure.
    fn is_failure(&self) -> bool;
}

impl TestResult for () {
    fn is_failure(&self) -> bool {
        false
    }
}

impl<T, E> TestResult for Result<T, E> {
    fn is_failure(&self) -> bool {
        self.is_err()
    }
}

/// Builds one parameter, failing the test with its type name on error.
pub async fn extract<T: FromTestContext>(ctx: &TestContext, type_name: &'static str) -> T {
    match T::from_context(ctx).await {
        Ok(v) => v,
        Err(e) => panic!(
            "db-test: could not build the parameter `{type_name}` of test `{}`: {e}",
            ctx.test_name()
        ),
    }
}

/// The process-wide runtime. See [`crate::runtime`].
pub(crate) fn shared_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config::worker_threads())
            .thread_name("db-test-worker")
            .on_thread_start(crate::clock::mark_shared_thread)
            .enable_all()
            .build()
            .expect("db-test: cannot build the shared tokio runtime")
    })
}

fn print_statements(name: &str, log: &[LoggedStatement]) {
    if log.is_empty() {
        return;
    }
    let mut out = format!(
        "db-test: last {} statement(s) of test `{name}`:\n",
        log.len()
    );
    for s in log {
        out.push_str("  ");
        out.push_str(s.sql.trim());
        if let Some(e) = &s.error {
            out.push_str("\n    -> error: ");
            out.push_str(e);
        }
        out.push('\n');
    }
    eprint!("{out}");
}

/// What the test runs on, and what to undo afterwards.
enum Setup {
    Transaction(Arc<SharedConn>),
    Database {
        name: String,
        pool: sqlx::PgPool,
        template: Arc<Template>,
    },
    /// A test on MySQL or SQLite: that backend's module undoes it.
    #[allow(dead_code)]
    Other(Box<dyn Resource>),
}

/// How a test ended, for a backend's teardown.
#[allow(dead_code)]
pub(crate) struct Ending {
    pub(crate) spec: &'static TestSpec,
    /// "it passed", "it panicked", ...
    pub(crate) reason: &'static str,
    pub(crate) failed: bool,
    pub(crate) timed_out: bool,
    /// Whether the body ran on a runtime of its own (now dropped).
    pub(crate) on_own_runtime: bool,
}

/// A teardown's verdict: a failure the test must report, and the test's
/// last statements to print if it failed.
pub(crate) type Verdict = (Option<String>, Vec<LoggedStatement>);

/// What a MySQL or SQLite test runs on, set up by that backend's module
/// (which also ran the fixtures), and undone by it.
#[allow(dead_code)]
pub(crate) trait Resource: Send + 'static {
    /// Runs on the test's own runtime after the body, before that runtime
    /// is dropped: let connections the body released go back to their pool.
    fn settle(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Undoes the setup, on the shared runtime.
    fn teardown(
        self: Box<Self>,
        ending: Ending,
    ) -> futures_util::future::BoxFuture<'static, Verdict>;
}

/// A backend's setup: what to undo, and the test's context.
#[allow(dead_code)]
pub(crate) type Prepared = (Box<dyn Resource>, ContextInner);

/// The isolation a test gets: the explicit one, else from its parameters.
pub(crate) fn isolation_of(spec: &TestSpec) -> Isolation {
    spec.isolation.unwrap_or(if spec.wants_database {
        Isolation::Database
    } else {
        Isolation::Transaction
    })
}

#[allow(dead_code)]
fn backend_not_built(spec: &TestSpec, feature: &str) -> String {
    format!(
        "db-test: test `{}` runs on {}, but db-test was built without its `{feature}` feature: \
         add `features = [\"{feature}\"]` to the db-test dependency",
        spec.name,
        spec.backend.name()
    )
}

async fn setup_other(spec: &'static TestSpec) -> Result<Prepared, String> {
    match spec.backend {
        #[cfg(feature = "mysql")]
        crate::Backend::MySql => crate::mysql::setup(spec).await,
        #[cfg(not(feature = "mysql"))]
        crate::Backend::MySql => Err(backend_not_built(spec, "mysql")),
        #[cfg(feature = "sqlite")]
        crate::Backend::Sqlite => crate::sqlite::setup(spec).await,
        #[cfg(not(feature = "sqlite"))]
        crate::Backend::Sqlite => Err(backend_not_built(spec, "sqlite")),
        crate::Backend::Postgres | crate::Backend::Any => {
            unreachable!("PostgreSQL tests are set up by `setup`")
        }
    }
}

fn pool_exhausted(spec: &TestSpec, what: &str) -> String {
    format!(
        "db-test: test `{}` waited {:?} for a connection to {what} and none came free: the pool \
         ({} connections) is exhausted. Raise DB_TEST_POOL_SIZE or DB_TEST_ACQUIRE_TIMEOUT, \
         or run fewer tests at once (RUST_TEST_THREADS).",
        spec.name,
        config::acquire_timeout(),
        config::pool_size()
    )
}

async fn open_transaction(
    spec: &'static TestSpec,
    template: &Template,
    display_url: &str,
) -> Result<Arc<SharedConn>, String> {
    let mut last_err = None;
    for _ in 0..=config::pool_size() {
        let asked = std::time::Instant::now();
        let acquired = template.pool.acquire().await;
        if asked.elapsed() > Duration::from_secs(1) {
            tracing::warn!(
                test = spec.name,
                waited_ms = asked.elapsed().as_millis() as u64,
                pool_size = config::pool_size(),
                "db-test: slow connection acquire; the pool may be too small (DB_TEST_POOL_SIZE)"
            );
        }
        let conn = match acquired {
            Ok(conn) => conn,
            Err(sqlx::Error::PoolTimedOut) => return Err(pool_exhausted(spec, &template.working)),
            Err(e) => {
                return Err(format!(
                    "db-test: cannot get a connection to {} on {display_url}: {e}",
                    template.working
                ));
            }
        };
        match SharedConn::open(conn, spec.name.to_string(), config::checkout_timeout()).await {
            Ok(shared) => return Ok(shared),
            // A connection broken by a server restart or a terminated backend:
            // close it, and the pool opens a new one.
            Err((e, mut conn)) => {
                conn.close_on_drop();
                last_err = Some(e);
            }
        }
    }
    Err(format!(
        "db-test: cannot begin the transaction of test `{}` on {display_url}: {}",
        spec.name,
        last_err.map(|e| e.to_string()).unwrap_or_default()
    ))
}

async fn setup(spec: &'static TestSpec) -> Result<(Setup, TestContext), String> {
    if !matches!(spec.backend, crate::Backend::Postgres | crate::Backend::Any) {
        let (resource, inner) = setup_other(spec).await?;
        return Ok((
            Setup::Other(resource),
            TestContext {
                inner: Arc::new(inner),
            },
        ));
    }
    let engine = crate::postgres::engine::engine().await?;
    let template = engine.template(spec.migrations, spec.manifest_dir).await?;
    let (setup, inner) = match isolation_of(spec) {
        Isolation::Transaction => {
            let shared = open_transaction(spec, &template, &engine.display_url).await?;
            let inner = ContextInner {
                name: spec.name,
                backend: crate::Backend::Postgres,
                database_mode: false,
                db: Some(Db::from_shared(shared.clone())),
                shared: Some(shared.clone()),
                pool: None,
                options: Some((*template.pool.connect_options()).clone()),
                backend_state: None,
                database: template.working.clone(),
                tasks: Default::default(),
            };
            (Setup::Transaction(shared), inner)
        }
        Isolation::Database => {
            let database = engine.create_test_database(&template).await?;
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(config::database_pool_size())
                .acquire_timeout(config::acquire_timeout())
                // An idle connection is handed out without a round trip: its
                // database is the test's alone. (This also lets a test with a
                // paused clock take one without waiting on a timer.)
                .test_before_acquire(false)
                .connect_lazy_with(database.options.clone());
            let inner = ContextInner {
                name: spec.name,
                backend: crate::Backend::Postgres,
                database_mode: true,
                db: Some(Db::from_pool(pool.clone())),
                shared: None,
                pool: Some(pool.clone()),
                options: Some(database.options),
                backend_state: None,
                database: database.name.clone(),
                tasks: Default::default(),
            };
            (
                Setup::Database {
                    name: database.name,
                    pool,
                    template,
                },
                inner,
            )
        }
    };
    Ok((
        setup,
        TestContext {
            inner: Arc::new(inner),
        },
    ))
}

async fn apply_fixtures(spec: &'static TestSpec, db: &Db) -> Result<(), String> {
    for fixture in spec.fixtures {
        sqlx::raw_sql(sqlx::AssertSqlSafe(fixture.sql))
            .execute(db)
            .await
            .map_err(|e| {
                format!(
                    "db-test: fixture `{}` failed in test `{}`: {e}",
                    fixture.path, spec.name
                )
            })?;
    }
    Ok(())
}

/// One of the test pool's connections, once idle. A connection the test
/// just dropped takes a round trip (sqlx pings it) to come back to the pool;
/// waiting for it is cheaper than connecting again. None if the pool holds
/// no connection, or none comes back within 200 ms (the test kept one).
async fn idle_connection(
    pool: &sqlx::PgPool,
) -> Option<sqlx::pool::PoolConnection<sqlx::Postgres>> {
    let deadline = std::time::Instant::now() + Duration::from_millis(200);
    loop {
        if let Some(conn) = pool.try_acquire() {
            return Some(conn);
        }
        if pool.size() == 0 || std::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Undoes the test's setup. Returns a failure the test must report.
async fn teardown(
    spec: &'static TestSpec,
    setup: Setup,
    reason: &'static str,
    failed: bool,
    timed_out: bool,
    on_own_runtime: bool,
) -> (Option<String>, Vec<LoggedStatement>) {
    match setup {
        Setup::Other(resource) => {
            resource
                .teardown(Ending {
                    spec,
                    reason,
                    failed,
                    timed_out,
                    on_own_runtime,
                })
                .await
        }
        Setup::Transaction(shared) => {
            let (conn, failure, log) = shared
                .finish(reason, spec.check_constraints, timed_out)
                .await;
            drop(conn); // back to the pool, rolled back and healthy
            (failure, log)
        }
        Setup::Database {
            name,
            pool,
            template,
        } => {
            let engine = match crate::postgres::engine::engine().await {
                Ok(e) => e,
                Err(e) => return (Some(e), Vec::new()),
            };
            let backends = Backends::Database(name.clone());
            if timed_out {
                // Whatever the test still runs on the server stops now.
                signal_backends(backends.clone(), Signal::Terminate).await;
            }
            // A connection the test already opened (idle in its pool) resets
            // the database: cheaper than connecting again.
            let mut reuse = idle_connection(&pool).await;
            if on_own_runtime {
                // It may have been opened on the test's runtime, now gone.
                if let Some(conn) = reuse.as_mut()
                    && sqlx::Connection::ping(&mut **conn).await.is_err()
                {
                    reuse = None;
                }
            }
            let reuse = reuse.map(|conn| {
                // The pool's other connections are closed below; their
                // backends take a moment to leave.
                let others_closing = pool.size() > 1;
                (conn.detach(), others_closing)
            });
            let mut forced = timed_out;
            if tokio::time::timeout(TEARDOWN_GRACE, pool.close())
                .await
                .is_err()
            {
                // A task the test spawned still holds a connection (a
                // listener, a worker): end those sessions and drop the
                // database rather than wait for it.
                tracing::warn!(
                    test = spec.name,
                    database = %name,
                    "db-test: a task still held a connection to the test's database {TEARDOWN_GRACE:?} \
                     after the test ended; its connections were terminated"
                );
                signal_backends(backends, Signal::Terminate).await;
                forced = true;
            }
            if failed && config::keep_failed() {
                if let Some((conn, _)) = reuse {
                    let _ = sqlx::Connection::close(conn).await;
                }
                return match engine.keep_test_database(&name).await {
                    Ok(kept) => {
                        eprintln!(
                            "db-test: kept the database of failed test `{}` (DB_TEST_KEEP_FAILED=1): {kept} on {}",
                            spec.name, engine.display_url
                        );
                        (None, Vec::new())
                    }
                    Err(e) => (Some(e), Vec::new()),
                };
            }
            if forced {
                if let Some((conn, _)) = reuse {
                    let _ = sqlx::Connection::close_hard(conn).await;
                }
                return (engine.drop_test_database(&name).await.err(), Vec::new());
            }
            (
                engine
                    .recycle_test_database(&template, &name, reuse)
                    .await
                    .err(),
                Vec::new(),
            )
        }
    }
}

/// A test body, boxed: it runs the test and says whether its result is a failure.
pub type BoxedBody<'a> =
    Box<dyn FnOnce(TestContext) -> Pin<Box<dyn Future<Output = bool> + 'a>> + 'a>;

/// Runs one test on the shared runtime, in its transaction or its own database.
///
/// This generic part only boxes the body, so that each test instantiates a
/// few lines and the real work ([`run_boxed`]) is compiled once.
pub fn run<F, Fut, T>(spec: &'static TestSpec, body: F) -> T
where
    F: FnOnce(TestContext) -> Fut,
    Fut: Future<Output = T>,
    T: TestResult,
{
    let mut value: Option<T> = None;
    let slot = &mut value;
    run_boxed(
        spec,
        Box::new(move |ctx| {
            Box::pin(async move {
                let v = body(ctx).await;
                let failed = v.is_failure();
                *slot = Some(v);
                failed
            })
        }),
    );
    value.expect("db-test: the test body returned")
}

/// A test body returning `()`, as a plain function pointer.
pub type UnitBody = fn(TestContext) -> Pin<Box<dyn Future<Output = ()>>>;

/// Runs a test whose body returns `()`. Not generic: nothing is instantiated
/// per test but the body itself.
pub fn run_unit(spec: &'static TestSpec, body: UnitBody) {
    run_boxed(
        spec,
        Box::new(move |ctx| {
            Box::pin(async move {
                body(ctx).await;
                false
            })
        }),
    )
}

/// The body of [`run`], compiled once for all tests.
///
/// Setup and teardown always run on the shared runtime, so that everything
/// db-test owns (the engine, its pools, the test's connection) belongs to a
/// runtime that outlives the test. The body runs on the shared runtime too,
/// or on a runtime of the test's own (`flavor`), which is dropped with every
/// task still on it before teardown begins.
pub fn run_boxed(spec: &'static TestSpec, body: BoxedBody<'_>) {
    let shared = shared_runtime();
    let body_runtime = spec.body_runtime();
    let on_own_runtime = matches!(body_runtime, BodyRuntime::Own(_));
    let (setup, ctx) = crate::clock::as_shared_thread(|| {
        shared.block_on(async {
            let (setup, ctx) = match setup(spec).await {
                Ok(v) => v,
                Err(msg) => panic!("{msg}"),
            };
            // Fixtures run here, on the shared runtime, so that a connection
            // they open (database mode) outlives a per-test runtime.
            let fixtures = if matches!(setup, Setup::Other(_)) {
                // That backend's setup ran them.
                Ok(())
            } else if spec.fixtures.is_empty() && on_own_runtime {
                prewarm(&ctx).await;
                Ok(())
            } else {
                apply_fixtures(spec, &ctx.db()).await
            };
            match fixtures {
                Ok(()) => (setup, ctx),
                Err(msg) => {
                    let (failure, log) =
                        teardown(spec, setup, "a fixture failed", true, false, false).await;
                    print_statements(spec.name, &log);
                    panic!(
                        "{msg}{}",
                        failure.map(|f| format!("\n{f}")).unwrap_or_default()
                    )
                }
            }
        })
    });
    let timeout = if spec.timeout_ms == 0 {
        config::default_test_timeout()
    } else {
        Duration::from_millis(spec.timeout_ms)
    };
    let task_owner = ctx.clone();
    let pool = ctx.inner.pool.clone();
    // The test's timeout runs on the shared runtime's clock: a test that
    // pauses its own clock cannot make it fire early.
    let guarded = async move {
        crate::clock::timeout(timeout, AssertUnwindSafe(body(ctx)).catch_unwind()).await
    };
    let outcome = match &body_runtime {
        BodyRuntime::Shared => crate::clock::as_shared_thread(|| shared.block_on(guarded)),
        BodyRuntime::Own(rt) => rt.block_on(guarded),
    };
    task_owner.abort_tasks();
    if let BodyRuntime::Own(rt) = &body_runtime {
        // Connections the body released go back to the pool by a task on
        // its runtime: let those finish before the runtime goes.
        if let Some(pool) = &pool {
            rt.block_on(settle_pool(pool));
        }
        if let Setup::Other(resource) = &setup {
            rt.block_on(resource.settle());
        }
    }
    // Dropping the test's own runtime drops every task still on it, as at
    // the end of a `#[tokio::test]`.
    drop(body_runtime);
    drop(task_owner);
    let (reason, failed, timed_out) = match &outcome {
        Ok(Ok(failed)) => ("it passed", *failed, false),
        Ok(Err(_)) => ("it panicked", true, false),
        Err(()) => ("it timed out", true, true),
    };
    let (failure, log) = crate::clock::as_shared_thread(|| {
        shared.block_on(teardown(
            spec,
            setup,
            reason,
            failed,
            timed_out,
            on_own_runtime,
        ))
    });
    if failed || failure.is_some() {
        print_statements(spec.name, &log);
    }
    match outcome {
        Ok(Ok(_)) => {
            if let Some(msg) = failure {
                panic!("{msg}");
            }
        }
        Ok(Err(payload)) => {
            let text = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !on_own_runtime && text.contains("current_thread") {
                // tokio's "`time::pause()` requires the `current_thread`
                // Tokio runtime", and the like: say how to get one.
                eprintln!(
                    "db-test: test `{}` runs on db-test's shared multi-thread runtime; add \
                     `flavor = \"current_thread\"` (and `start_paused = true` to start with a \
                     paused clock) to give it a current-thread runtime of its own.",
                    spec.name
                );
            }
            std::panic::resume_unwind(payload)
        }
        Err(()) => panic!(
            "db-test: test `{}` timed out after {timeout:?} (set `#[db_test(timeout = \"..\")]` \
             or DB_TEST_TIMEOUT to change it); its statements were cancelled on the server and \
             everything it wrote was rolled back or dropped.{}",
            spec.name,
            failure.map(|f| format!("\n{f}")).unwrap_or_default()
        ),
    }
}

/// Opens the first connection of a per-test pool on the shared runtime,
/// before a body on its own runtime would open it there (where it would die
/// with that runtime, and could not reset the database afterwards).
async fn prewarm(ctx: &TestContext) {
    if let Some(pool) = &ctx.inner.pool
        && let Ok(conn) = pool.acquire().await
    {
        drop(conn);
        settle_pool(pool).await;
    }
}

/// Waits (briefly, in real time) until every connection of the pool is idle again.
async fn settle_pool(pool: &sqlx::PgPool) {
    let deadline = std::time::Instant::now() + Duration::from_millis(200);
    while (pool.num_idle() as u32) < pool.size() && std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_micros(100));
    }
}
