//! The runtimes a test runs on: db-test's shared multi-thread runtime
//! (setup, teardown, and by default the body), or one of the test's own
//! (`flavor`, `worker_threads`), and keeping a per-test pool usable across
//! the two.

use std::sync::OnceLock;
use std::time::Duration;

use super::{Flavor, TestSpec};
use crate::config;
use crate::context::TestContext;

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

/// The runtime a test's body runs on.
pub(super) enum BodyRuntime {
    /// db-test's shared multi-thread runtime.
    Shared,
    /// A runtime of the test's own, dropped (with every task on it) when
    /// the body ends.
    Own(tokio::runtime::Runtime),
}

impl TestSpec {
    pub(super) fn body_runtime(&self) -> BodyRuntime {
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

/// Opens the first connection of a per-test pool on the shared runtime,
/// before a body on its own runtime would open it there (where it would die
/// with that runtime, and could not reset the database afterwards).
pub(super) async fn prewarm(ctx: &TestContext) {
    if let Some(pool) = &ctx.inner.pool
        && let Ok(conn) = pool.acquire().await
    {
        drop(conn);
        settle_pool(pool).await;
    }
}

/// Waits (briefly, in real time) until every connection of the pool is idle again.
pub(super) async fn settle_pool(pool: &sqlx::PgPool) {
    let deadline = std::time::Instant::now() + Duration::from_millis(200);
    while (pool.num_idle() as u32) < pool.size() && std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_micros(100));
    }
}
