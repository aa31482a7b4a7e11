//! What a test runs on, set up before its body: its transaction on the
//! shared working database, or a database of its own (PostgreSQL), or what
//! another backend's module set up ([`Resource`]); then its fixtures.

use std::sync::Arc;
use std::time::Duration;

use super::teardown::{Ending, Verdict};
use super::{Isolation, TestSpec, isolation_of};
use crate::context::{ContextInner, TestContext};
use crate::postgres::engine::Template;
use crate::shared::SharedConn;
use crate::{Db, config};

/// What the test runs on, and what to undo afterwards.
pub(super) enum Setup {
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

/// What a MySQL or SQLite test runs on, set up by that backend's module
/// (which also ran the fixtures), and undone by it.
#[allow(dead_code)]
pub(crate) trait Resource: Send + 'static {
    /// Runs on the shared runtime before a body that starts with a paused
    /// clock on a runtime of its own: opens every connection of the test's
    /// own pool there (see [`fill_pool`](crate::run::fill_pool)).
    fn prewarm(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async {})
    }

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

#[allow(dead_code)]
fn backend_not_built(spec: &TestSpec, feature: &str) -> String {
    format!(
        "db-test: test `{}` runs on {}, but db-test was built without its `{feature}` feature: \
         add `features = [\"{feature}\"]` to the db-test dependency",
        spec.name,
        spec.params.backend.name()
    )
}

/// The setup of a MySQL or SQLite test (boxed: see `run::prepare`).
fn setup_other(
    spec: &'static TestSpec,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Prepared, String>>>> {
    match spec.params.backend {
        #[cfg(feature = "mysql")]
        crate::Backend::MySql => Box::pin(crate::mysql::setup(spec)),
        #[cfg(not(feature = "mysql"))]
        crate::Backend::MySql => {
            Box::pin(std::future::ready(Err(backend_not_built(spec, "mysql"))))
        }
        #[cfg(feature = "sqlite")]
        crate::Backend::Sqlite => Box::pin(crate::sqlite::setup(spec)),
        #[cfg(not(feature = "sqlite"))]
        crate::Backend::Sqlite => {
            Box::pin(std::future::ready(Err(backend_not_built(spec, "sqlite"))))
        }
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
        let acquired = template.slots.checkout_connection().await;
        if asked.elapsed() > Duration::from_secs(1) {
            tracing::warn!(
                test = spec.name,
                waited_ms = asked.elapsed().as_millis() as u64,
                pool_size = config::pool_size(),
                "db-test: slow connection acquire; the pool may be too small (DB_TEST_POOL_SIZE)"
            );
        }
        let (conn, home) = match acquired {
            Ok(acquired) => acquired,
            Err(sqlx::Error::PoolTimedOut) => return Err(pool_exhausted(spec, &template.working)),
            Err(e) => {
                return Err(format!(
                    "db-test: cannot get a connection to {} on {display_url}: {e}",
                    template.working
                ));
            }
        };
        match SharedConn::open(
            conn,
            home,
            spec.name.to_string(),
            config::checkout_timeout(),
        )
        .await
        {
            Ok(shared) => return Ok(shared),
            // A connection broken by a server restart or a terminated backend:
            // close it, and its slot opens a new one.
            Err((e, conn, home)) => {
                home.discard(conn);
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

pub(super) async fn setup(spec: &'static TestSpec) -> Result<(Setup, TestContext), String> {
    crate::config::check_settings()?;
    if !matches!(
        spec.params.backend,
        crate::Backend::Postgres | crate::Backend::Any
    ) {
        let (resource, inner) = setup_other(spec).await?;
        return Ok((
            Setup::Other(resource),
            TestContext {
                inner: Arc::new(inner),
            },
        ));
    }
    setup_postgres(spec).await
}

/// A boxed future of a setup step.
type Step<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + 'a>>;

/// [`setup`] of a PostgreSQL test (boxed: see `run::prepare`). Each step
/// that only some tests take (the engine's start, the template's build,
/// the schema's facts, a database of the test's own) is a future of its own
/// function: in a debug build this function's frame would otherwise hold
/// room for all of them (50 KB), which each test's new thread faults in.
/// With the rare steps of a test's end boxed the same way (`SharedConn::
/// finish_inner`, `recover_dropped`), a PostgreSQL test faults in 28 pages
/// of stack and heap instead of 40.
fn setup_postgres(spec: &'static TestSpec) -> Step<'static, (Setup, TestContext)> {
    Box::pin(async move {
        let engine = match crate::postgres::engine::started() {
            Some(engine) => engine?,
            None => start_engine().await?,
        };
        let template = match engine.built_template(spec.migrations, spec.manifest_dir) {
            Some(template) => template,
            None => build_template(spec, engine).await?,
        };
        let (setup, inner) = match isolation_of(spec) {
            Isolation::Transaction => setup_transaction(spec, engine, template).await?,
            Isolation::Database => setup_database(spec, engine, template).await?,
        };
        Ok((
            setup,
            TestContext {
                inner: Arc::new(inner),
            },
        ))
    })
}

/// The first test's wait for the engine.
fn start_engine() -> Step<'static, &'static crate::postgres::engine::Engine> {
    Box::pin(crate::postgres::engine::engine())
}

/// The first tests' wait for their migrations' template.
fn build_template(
    spec: &'static TestSpec,
    engine: &'static crate::postgres::engine::Engine,
) -> Step<'static, Arc<Template>> {
    Box::pin(engine.template(spec.migrations, spec.manifest_dir))
}

/// A transaction-mode test's transaction on the working database.
fn setup_transaction(
    spec: &'static TestSpec,
    engine: &'static crate::postgres::engine::Engine,
    template: Arc<Template>,
) -> Step<'static, (Setup, ContextInner)> {
    Box::pin(async move {
        let shared = open_transaction(spec, &template, &engine.display_url).await?;
        let facts = match template.facts.get() {
            Some(facts) => facts.clone(),
            None => read_facts(&template, &shared).await,
        };
        shared.use_schema_facts(spec.check_constraints, facts);
        let inner = ContextInner {
            name: spec.name,
            backend: crate::Backend::Postgres,
            database_mode: false,
            db: Some(Db::from_shared(shared.clone())),
            shared: Some(shared.clone()),
            pool: None,
            options: Some(template.options.clone()),
            backend_state: None,
            database: template.working.clone(),
            tasks: Default::default(),
        };
        Ok((Setup::Transaction(shared), inner))
    })
}

/// The schema's facts, read by the first test of a process on a template.
fn read_facts<'a>(
    template: &'a Template,
    shared: &'a Arc<SharedConn>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = crate::shared::SchemaFacts> + 'a>> {
    Box::pin(async move {
        template
            .facts
            .get_or_init(|| shared.schema_facts())
            .await
            .clone()
    })
}

/// A database-mode test's database of its own, and its pool.
fn setup_database(
    spec: &'static TestSpec,
    engine: &'static crate::postgres::engine::Engine,
    template: Arc<Template>,
) -> Step<'static, (Setup, ContextInner)> {
    Box::pin(async move {
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
        Ok((
            Setup::Database {
                name: database.name,
                pool,
                template,
            },
            inner,
        ))
    })
}

pub(super) async fn apply_fixtures(spec: &'static TestSpec, db: &Db) -> Result<(), String> {
    for fixture in spec.fixtures {
        sqlx::raw_sql(sqlx::AssertSqlSafe(fixture.sql))
            .execute(db)
            .await
            .map_err(|e| fixture_failed(spec, fixture.path, e))?;
    }
    Ok(())
}

/// The error of a fixture that failed.
pub(crate) fn fixture_failed(spec: &'static TestSpec, path: &str, e: sqlx::Error) -> String {
    format!(
        "db-test: fixture `{path}` failed in test `{}`: {e}",
        spec.name
    )
}

/// A database-mode test's fixtures, on a connection of their own to its
/// database, closed after them.
pub(super) async fn apply_fixtures_alone(
    spec: &'static TestSpec,
    pool: &sqlx::PgPool,
) -> Result<(), String> {
    use sqlx::Connection;
    let conn = sqlx::PgConnection::connect_with(&pool.connect_options())
        .await
        .map_err(|e| fixtures_connect_failed(spec, e))?;
    fixtures_on(spec, conn).await
}

/// The error of a connection for a test's fixtures that could not open.
pub(crate) fn fixtures_connect_failed(spec: &'static TestSpec, e: sqlx::Error) -> String {
    format!(
        "db-test: cannot connect to run the fixtures of test `{}`: {e}",
        spec.name
    )
}

/// Runs a test's fixtures on `conn`, then closes it, as `#[sqlx::test]`
/// does: the session settings a fixture changes (a dump's header) end with
/// it, on every backend.
pub(crate) async fn fixtures_on<C>(spec: &'static TestSpec, mut conn: C) -> Result<(), String>
where
    C: sqlx::Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
{
    for fixture in spec.fixtures {
        sqlx::raw_sql(sqlx::AssertSqlSafe(fixture.sql))
            .execute(&mut conn)
            .await
            .map_err(|e| fixture_failed(spec, fixture.path, e))?;
    }
    let _ = conn.close().await;
    Ok(())
}
