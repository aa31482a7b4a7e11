//! db-test's own waits run on real time, on the shared runtime.
//!
//! A test on a runtime of its own (`flavor = "current_thread"`) may pause its
//! clock, and a paused clock auto-advances whenever that runtime is idle,
//! which includes waiting on IO driven by the shared runtime. So a timeout of
//! db-test's (checkout, teardown, the test's own timeout) must never be a
//! timer of the test's runtime: it is a timer of the shared runtime instead.

use std::future::Future;
use std::time::Duration;

use std::cell::Cell;

use crate::run::shared_runtime;

thread_local! {
    /// Set on the shared runtime's worker threads, and on a test's thread
    /// while it blocks on the shared runtime.
    static ON_SHARED: Cell<bool> = const { Cell::new(false) };
}

/// Marks the current thread as running the shared runtime's tasks.
pub(crate) fn mark_shared_thread() {
    ON_SHARED.with(|c| c.set(true));
}

/// Runs `f` with the current thread marked as running the shared runtime
/// (while it blocks on it), restoring the mark afterwards.
pub(crate) fn as_shared_thread<T>(f: impl FnOnce() -> T) -> T {
    let before = ON_SHARED.with(|c| c.replace(true));
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ON_SHARED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(before);
    f()
}

/// Whether the current task runs somewhere other than the shared runtime:
/// on a test's own runtime, whose clock the test may pause and which is
/// dropped when the test ends.
fn on_test_clock() -> bool {
    !ON_SHARED.with(Cell::get)
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sleeps for `duration` of real time.
pub(crate) async fn sleep(duration: Duration) {
    if on_test_clock() {
        // The timer is created inside the task: a `Sleep` belongs to the
        // runtime it is created on.
        let mut task =
            AbortOnDrop(shared_runtime().spawn(async move { tokio::time::sleep(duration).await }));
        let _ = (&mut task.0).await;
    } else {
        tokio::time::sleep(duration).await
    }
}

/// Runs `future` for at most `duration` of real time.
pub(crate) async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, ()> {
    if !on_test_clock() {
        return tokio::time::timeout(duration, future).await.map_err(|_| ());
    }
    tokio::select! {
        biased;
        out = future => Ok(out),
        () = sleep(duration) => Err(()),
    }
}

/// Runs `future` as a task of the shared runtime, so that the connections it
/// opens and the timers it sets belong there, not to a test's runtime that
/// is dropped when the test ends. Cancelled if the caller drops the result.
pub(crate) async fn on_shared<F>(future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if !on_test_clock() {
        return future.await;
    }
    let mut task = AbortOnDrop(shared_runtime().spawn(future));
    match (&mut task.0).await {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("db-test: an internal task was cancelled: {e}"),
    }
}
