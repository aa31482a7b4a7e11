//! The runtimes a test runs on: db-test's shared multi-thread runtime
//! (setup, teardown, and by default the body), or one of the test's own
//! (`flavor`, `worker_threads`), and keeping a per-test pool usable across
//! the two.

use std::sync::OnceLock;
use std::time::Duration;

use super::{Flavor, TestSpec};
use crate::config;

/// The process-wide runtime. See [`crate::runtime`].
pub(crate) fn shared_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        outside_output_capture(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config::worker_threads())
                .thread_name("db-test-worker")
                .on_thread_start(crate::clock::mark_shared_thread)
                // Idle blocking threads stay (see `start_blocking_threads`).
                .thread_keep_alive(Duration::from_secs(24 * 60 * 60))
                .enable_all()
                .build()
                .expect("db-test: cannot build the shared tokio runtime");
            start_blocking_threads(&rt);
            rt
        })
    })
}

/// Starts blocking threads of the shared runtime here, outside any test's
/// output capture, to wait idle for `spawn_blocking` (which tokio runs on
/// an idle one when there is one). A blocking thread tokio starts itself is
/// started from the thread that called `spawn_blocking`: from a test's
/// thread (sqlx reads the migrations that way, and so does `tokio::fs`) it
/// would inherit that test's capture, and what a later test's blocking
/// closure printed on it would go to a buffer already read.
fn start_blocking_threads(rt: &tokio::runtime::Runtime) {
    let n = (config::test_threads().max(2) * 2).min(64);
    // Each waits for all of them, and so does this thread: `n` threads, not
    // one reused `n` times, and all of them started before the first test
    // can call `spawn_blocking`. Never more than a second: where the system
    // lets tokio start fewer threads, the rest queue behind the waiting ones.
    let started = std::sync::Arc::new((std::sync::Mutex::new(0usize), std::sync::Condvar::new()));
    let until = std::time::Instant::now() + Duration::from_secs(1);
    let wait_for_all = move |started: &(std::sync::Mutex<usize>, std::sync::Condvar)| {
        let (count, all) = started;
        let mut count = count.lock().unwrap_or_else(|e| e.into_inner());
        while *count < n {
            let Some(left) = until.checked_duration_since(std::time::Instant::now()) else {
                return;
            };
            count = all
                .wait_timeout(count, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    };
    for _ in 0..n {
        let started = started.clone();
        drop(rt.spawn_blocking(move || {
            *started.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            started.1.notify_all();
            wait_for_all(&started);
        }));
    }
    wait_for_all(&started);
}

/// `tokio::task::spawn_blocking` on the shared runtime, called from one of
/// its workers: a blocking thread tokio has to start for it then starts
/// outside any test's capture (see [`start_blocking_threads`]). For
/// db-test's own blocking work, which a test's thread would otherwise ask
/// for while the runtime's idle blocking threads are still starting.
pub(crate) async fn spawn_blocking_uncaptured<F, R>(f: F) -> Result<R, tokio::task::JoinError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    on_worker(tokio::task::spawn_blocking(f))
        .await
        .and_then(|inner| inner)
}

/// Runs `future` as a task of the shared runtime (on a worker): for
/// db-test's own futures that call `spawn_blocking` inside a library (sqlx
/// reads a migrations directory that way). See
/// [`spawn_blocking_uncaptured`].
pub(crate) async fn on_worker<F>(future: F) -> Result<F::Output, tokio::task::JoinError>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    shared_runtime().spawn(future).await
}

/// Runs `f` (which builds the shared runtime) on a thread that no test's
/// output capture reaches, and returns what it gives.
///
/// A thread started with `std::thread` inherits the output capture of the
/// thread that starts it, and libtest captures each test's output on the
/// test's thread. Built on the first test's thread, the runtime's workers
/// would write everything the tasks of every later test print (a spawned
/// task's `println!`, the message of its panic) into that first test's
/// buffer, read once when it ended: lost. Built here, on a thread that
/// `std::thread` did not start, they write to the process's stdout and
/// stderr, as under `--nocapture` (nextest captures them per test).
#[cfg(unix)]
fn outside_output_capture<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    type Job = Box<dyn FnOnce() + Send>;
    extern "C" fn start(arg: *mut libc::c_void) -> *mut libc::c_void {
        // SAFETY: `arg` is the `Box<Job>` leaked below, taken back once.
        let job = unsafe { Box::from_raw(arg.cast::<Job>()) };
        job();
        std::ptr::null_mut()
    }
    let (tx, rx) = std::sync::mpsc::channel();
    // A panic must not unwind out of `start`: it is caught, and resumed on
    // the caller's thread.
    let job: Job = Box::new(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    let arg = Box::into_raw(Box::new(job));
    let mut thread: libc::pthread_t = 0;
    // SAFETY: `start` takes ownership of `arg`; `thread` is joined below.
    let rc = unsafe { libc::pthread_create(&mut thread, std::ptr::null(), start, arg.cast()) };
    if rc == 0 {
        // SAFETY: a thread created above, joined once.
        unsafe { libc::pthread_join(thread, std::ptr::null_mut()) };
    } else {
        // No thread: here, captured or not.
        // SAFETY: `start` did not run, so `arg` is still ours.
        let job = unsafe { Box::from_raw(arg) };
        job();
    }
    match rx
        .recv()
        .expect("db-test: the runtime's builder sends its result")
    {
        Ok(out) => out,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[cfg(not(unix))]
fn outside_output_capture<T>(f: impl FnOnce() -> T) -> T {
    f()
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
        // Without `flavor`: what the other keys need, as for
        // `#[tokio::test]` (a paused clock is a current-thread runtime's,
        // worker threads a multi-thread one's), else the default of the
        // test's parameters.
        let flavor = self.flavor.unwrap_or(if self.start_paused {
            Flavor::CurrentThread
        } else if self.worker_threads > 0 || !self.params.sqlx_style {
            Flavor::MultiThread
        } else {
            Flavor::CurrentThread
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

/// Opens every connection a per-test pool may hold, on the shared runtime,
/// for a body that starts with a paused clock (`start_paused = true`) on a
/// runtime of its own. Such a runtime's clock jumps ahead whenever it waits
/// on IO, so the pool's acquire timeout fired at once while the body's
/// `acquire` opened a connection (`PoolTimedOut`); an idle connection is
/// handed out without a wait. (A body that calls `time::pause()` itself
/// gets what it gets under `#[sqlx::test]`.)
pub(crate) async fn fill_pool<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) {
    fill_pool_to(pool, pool.options().get_max_connections() as usize).await;
}

/// Opens `n` connections of a per-test pool on the shared runtime, before a
/// body on a runtime of its own runs: a connection opened there would die
/// with that runtime (and could not reset the database afterwards).
pub(crate) async fn fill_pool_to<DB: sqlx::Database>(pool: &sqlx::Pool<DB>, n: usize) {
    let held = futures_util::future::join_all((0..n).map(|_| pool.acquire())).await;
    drop(held);
    settle_pool(pool).await;
}

/// Waits (briefly, in real time) until every connection of the pool is idle
/// again: connections return to their pool through a task on the runtime
/// that dropped them.
pub(crate) async fn settle_pool<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) {
    let deadline = std::time::Instant::now() + Duration::from_millis(200);
    while (pool.num_idle() as u32) < pool.size() && std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_micros(100));
    }
}
