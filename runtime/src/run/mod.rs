//! What a `#[db_test]` expands into calls. Not public API.
//!
//! Where each part lives:
//!
//! - this module: the entry points the expansion calls ([`run`],
//!   [`run_unit`], [`extract`]), and the failed test's statement report;
//! - `spec`: what the macro says about a test ([`TestSpec`] and its parts);
//! - `runtime`: db-test's shared runtime, and a runtime of the test's own;
//! - `setup`: what a test runs on (PostgreSQL's transaction or database, or
//!   what another backend's module set up, a `Resource`), and its fixtures;
//! - `teardown`: undoing that after the body.

mod runtime;
mod setup;
mod spec;
mod teardown;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;

use futures_util::FutureExt;

use crate::config;
use crate::context::{FromTestContext, TestContext};
use crate::shared::LoggedStatement;
use runtime::BodyRuntime;
pub(crate) use runtime::{fill_pool, fill_pool_to, settle_pool};
use setup::{Setup, apply_fixtures, apply_fixtures_alone, setup};
use teardown::teardown;

pub use crate::postgres::engine::Migrations;
pub(crate) use runtime::{on_worker, shared_runtime, spawn_blocking_uncaptured};
pub(crate) use spec::isolation_of;
pub use spec::{AsMigrator, Fixture, Flavor, Isolation, Param, ParamSpec, TestSpec};
// What the MySQL and SQLite modules set a test up with and tear it down by.
#[cfg(feature = "sqlite")]
pub(crate) use setup::fixtures_connect_failed;
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) use setup::{Prepared, Resource, fixture_failed, fixtures_on};
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) use teardown::{Ending, Verdict};

pub use sqlx;

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
        out.push_str(&crate::sqltext::excerpt(&s.sql, 500));
        if let Some(e) = &s.error {
            out.push_str("\n    -> error: ");
            out.push_str(e);
        }
        out.push('\n');
    }
    eprint!("{out}");
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

/// Sets the test up and runs its fixtures, on the shared runtime, so that a
/// connection they open (database mode) outlives a per-test runtime.
///
/// The steps only some tests take return their futures boxed, built in
/// their own functions: a debug build gives a function's frame room for
/// every future built in it (several times its size), and libtest runs each
/// test on a new thread, whose stack pages are faulted in afresh. The same
/// holds in `setup`, `teardown` and the backends' per-test paths.
async fn prepare(spec: &'static TestSpec, on_own_runtime: bool) -> (Setup, TestContext) {
    let (setup, ctx) = match setup(spec).await {
        Ok(v) => v,
        Err(msg) => panic!("{msg}{}", default_backend_note(spec)),
    };
    let fixtures = match &setup {
        // That backend's setup ran them.
        Setup::Other(_) => Ok(()),
        _ if spec.fixtures.is_empty() => Ok(()),
        _ => postgres_fixtures(spec, &setup, &ctx).await,
    };
    if let Err(msg) = fixtures {
        fixtures_failed(spec, setup, msg).await;
        unreachable!("the test failed");
    }
    if on_own_runtime {
        prewarm_for_own_runtime(spec, &setup, &ctx).await;
    }
    (setup, ctx)
}

/// A PostgreSQL test's fixtures (boxed: see [`prepare`]).
fn postgres_fixtures<'a>(
    spec: &'static TestSpec,
    setup: &'a Setup,
    ctx: &'a TestContext,
) -> Pin<Box<dyn Future<Output = Result<(), String>> + 'a>> {
    Box::pin(async move {
        match setup {
            // On a connection of their own, closed after them, as
            // `#[sqlx::test]` runs them: the session settings of a
            // `pg_dump` file's header (`search_path` = '') do not reach
            // the test's pool.
            Setup::Database { pool, .. } => apply_fixtures_alone(spec, pool).await,
            // In the test's transaction, with the session settings
            // they change set back after them.
            Setup::Transaction(shared) => match shared.settings().await {
                Ok(before) => match apply_fixtures(spec, &ctx.db()).await {
                    Ok(()) => shared.restore_settings(before).await.map_err(|e| {
                        format!(
                            "db-test: cannot set back the session settings the fixtures \
                             of test `{}` changed: {e}",
                            spec.name
                        )
                    }),
                    Err(msg) => Err(msg),
                },
                Err(e) => Err(format!(
                    "db-test: cannot read the session settings before the fixtures of \
                     test `{}`: {e}",
                    spec.name
                )),
            },
            Setup::Other(_) => Ok(()),
        }
    })
}

/// For the failed setup of a test that runs on PostgreSQL only because no
/// parameter named a database: how to name one.
fn default_backend_note(spec: &TestSpec) -> &'static str {
    if spec.params.backend_named || spec.needs_no_database() {
        return "";
    }
    "\ndb-test: this test runs on PostgreSQL because none of its parameters names a \
     database (each type's `FromTestContext::BACKEND` is `Backend::Any`). For MySQL/MariaDB or \
     SQLite, take a `db_test::mysql::Db` / `db_test::sqlite::Db` (or `MySqlPool`, \
     `SqlitePool`, ...) parameter, or set `const BACKEND: db_test::Backend = \
     db_test::Backend::MySql;` (or `Sqlite`) in your `impl FromTestContext`."
}

/// Undoes the setup of a test whose fixtures failed, and fails the test
/// (boxed: see [`prepare`]).
fn fixtures_failed(
    spec: &'static TestSpec,
    setup: Setup,
    msg: String,
) -> Pin<Box<dyn Future<Output = ()>>> {
    Box::pin(async move {
        let (failure, log) = teardown(spec, setup, "a fixture failed", true, false, false).await;
        print_statements(spec.name, &log);
        panic!(
            "{msg}{}",
            failure.map(|f| format!("\n{f}")).unwrap_or_default()
        )
    })
}

/// Before a body on a runtime of its own: the test's pool gets its first
/// connection here, on the shared runtime (the other backends' setup opened
/// theirs); all of them when the body starts with a paused clock (boxed:
/// see [`prepare`]).
fn prewarm_for_own_runtime<'a>(
    spec: &'static TestSpec,
    setup: &'a Setup,
    ctx: &'a TestContext,
) -> Pin<Box<dyn Future<Output = ()> + 'a>> {
    Box::pin(async move {
        if let Some(pool) = &ctx.inner.pool {
            if spec.start_paused {
                fill_pool(pool).await;
            } else if pool.size() == 0 {
                fill_pool_to(pool, 1).await;
            }
        }
        if let Setup::Other(resource) = setup
            && spec.start_paused
        {
            resource.prewarm().await;
        }
    })
}

/// The body of [`run`], compiled once for all tests.
///
/// Setup and teardown always run on the shared runtime, so that everything
/// db-test owns (the engine, its pools, the test's connection) belongs to a
/// runtime that outlives the test. The body runs on the shared runtime too,
/// or on a runtime of the test's own (`flavor`), which is dropped with every
/// task still on it before teardown begins.
pub fn run_boxed(spec: &'static TestSpec, body: BoxedBody<'_>) {
    if spec.needs_no_database() {
        return run_without_database(spec, body);
    }
    let shared = shared_runtime();
    let body_runtime = spec.body_runtime();
    let on_own_runtime = matches!(body_runtime, BodyRuntime::Own(_));
    let (setup, ctx) =
        crate::clock::as_shared_thread(|| shared.block_on(prepare(spec, on_own_runtime)));
    let timeout = spec.timeout();
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
        match &setup {
            Setup::Other(resource) => rt.block_on(resource.settle()),
            // Also a connection lent to `Acquire::begin` that came back.
            Setup::Transaction(shared) => rt.block_on(shared.settle_lent()),
            Setup::Database { .. } => {}
        }
    }
    // Dropping the test's own runtime drops every task still on it, as at
    // the end of a `#[tokio::test]`.
    drop(body_runtime);
    if on_own_runtime && let Setup::Transaction(shared) = &setup {
        shared.body_runtime_dropped();
    }
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
    report(spec, outcome, failure, on_own_runtime, timeout);
}

/// A test with no parameters (and nothing in its attribute that needs a
/// database): its body alone, on its runtime and with its timeout, as
/// `#[sqlx::test]` runs such a test, with no database at all.
fn run_without_database(spec: &'static TestSpec, body: BoxedBody<'_>) {
    if let Err(msg) = config::check_settings() {
        panic!("{msg}");
    }
    let ctx = TestContext::without_database(spec.name);
    let task_owner = ctx.clone();
    let timeout = spec.timeout();
    let guarded = async move {
        crate::clock::timeout(timeout, AssertUnwindSafe(body(ctx)).catch_unwind()).await
    };
    let body_runtime = spec.body_runtime();
    let on_own_runtime = matches!(body_runtime, BodyRuntime::Own(_));
    let outcome = match &body_runtime {
        BodyRuntime::Shared => {
            crate::clock::as_shared_thread(|| shared_runtime().block_on(guarded))
        }
        BodyRuntime::Own(rt) => rt.block_on(guarded),
    };
    task_owner.abort_tasks();
    drop(body_runtime);
    report(spec, outcome, None, on_own_runtime, timeout);
}

/// Ends a test after its teardown: passes, or fails with the body's panic,
/// its timeout or the teardown's `failure`.
fn report(
    spec: &'static TestSpec,
    outcome: Result<Result<bool, Box<dyn std::any::Any + Send>>, ()>,
    failure: Option<String>,
    on_own_runtime: bool,
    timeout: Duration,
) {
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
             or DB_TEST_TIMEOUT to change it){}{}",
            spec.name,
            if spec.needs_no_database() {
                "."
            } else {
                "; its statements were cancelled on the server and everything it wrote was \
                 rolled back or dropped."
            },
            failure.map(|f| format!("\n{f}")).unwrap_or_default()
        ),
    }
}
