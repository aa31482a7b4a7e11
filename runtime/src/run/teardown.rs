//! Undoing a test's setup after its body: the transaction rolled back, or
//! the test's database recycled for the next test (dropped if it was
//! forced), or kept when a failed test asks for it; another backend's
//! through its [`Resource`](super::setup::Resource).

use std::time::Duration;

use super::TestSpec;
use super::setup::Setup;
use crate::config;
use crate::postgres::signal::{Backends, Signal, signal_backends};
use crate::shared::{LoggedStatement, TEARDOWN_GRACE};

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
pub(super) async fn teardown(
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
        Setup::Transaction(shared) => finish(spec, shared, reason, timed_out).await,
        Setup::Database {
            name,
            pool,
            template,
        } => {
            teardown_database(
                spec,
                name,
                pool,
                template,
                failed,
                timed_out,
                on_own_runtime,
            )
            .await
        }
    }
}

// The PostgreSQL steps return their futures boxed: see `run::prepare`.

fn finish(
    spec: &'static TestSpec,
    shared: std::sync::Arc<crate::shared::SharedConn>,
    reason: &'static str,
    timed_out: bool,
) -> futures_util::future::BoxFuture<'static, Verdict> {
    Box::pin(async move {
        shared
            .finish(reason, spec.check_constraints, timed_out)
            .await
    })
}

/// [`teardown`] of a PostgreSQL test's own database.
fn teardown_database(
    spec: &'static TestSpec,
    name: String,
    pool: sqlx::PgPool,
    template: std::sync::Arc<crate::postgres::engine::Template>,
    failed: bool,
    timed_out: bool,
    on_own_runtime: bool,
) -> futures_util::future::BoxFuture<'static, Verdict> {
    Box::pin(async move {
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
    })
}
