//! The pool of a database-mode test behind its [`Db`](super::Db), with the
//! connection of the last statement kept aside for the next one.
//!
//! Through a plain pool, every statement takes a connection and gives it
//! back, and sqlx pings a connection given back (a round trip) before
//! another statement may take it: the test's next statement, sent at once,
//! finds none idle and opens a second connection. A database-mode test
//! usually runs its statements one after another, so its `Db` keeps the
//! connection a statement ended on, unpinged, for the next one: one
//! connection and no pings, as a test holding a connection of its own
//! gets. Statements at the same time take others from the pool, as before.
//!
//! Only a statement that ran to its end leaves its connection aside; one
//! that failed or was dropped partway gives it back to the pool, whose
//! ping (sqlx's way to bring such a connection back into step) then runs
//! as before. A connection left aside for a second or more is pinged
//! before its next statement, as the pool's own `before_acquire` does for
//! its idle ones (a session the server ended meanwhile is replaced).
//!
//! `Pool::close` waits for every connection taken from the pool: the one
//! kept aside goes back as soon as the pool is closing (a test or its app
//! may close the pool itself), and at the end of the test.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::Pool;
use sqlx::pool::PoolConnection;

use super::Dialect;

/// How long a connection left aside is used again without a ping.
const FRESH: Duration = Duration::from_secs(1);

pub(crate) struct Sticky<DB: Dialect> {
    pub(crate) pool: Pool<DB>,
    state: Mutex<State<DB>>,
}

struct State<DB: Dialect> {
    /// The connection the last statement ended on, and when.
    held: Option<(PoolConnection<DB>, Instant)>,
    /// The test is over: connections go back to the pool.
    closed: bool,
}

impl<DB: Dialect> Sticky<DB> {
    pub(crate) fn new(pool: Pool<DB>) -> Arc<Self> {
        let closing = pool.close_event();
        let sticky = Arc::new(Sticky {
            pool,
            state: Mutex::new(State {
                held: None,
                closed: false,
            }),
        });
        let weak = Arc::downgrade(&sticky);
        crate::run::shared_runtime().spawn(async move {
            closing.await;
            if let Some(sticky) = weak.upgrade() {
                drop(sticky.close());
            }
        });
        sticky
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<DB>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection for one statement: the one left aside, else one from
    /// the pool.
    pub(crate) async fn take(&self) -> sqlx::Result<PoolConnection<DB>> {
        let held = self.state().held.take();
        if let Some((mut conn, at)) = held {
            if at.elapsed() < FRESH || sqlx::Connection::ping(&mut *conn).await.is_ok() {
                return Ok(conn);
            }
            // Its session is gone: closed, not given back.
            conn.close_on_drop();
        }
        self.pool.acquire().await
    }

    /// A statement on `conn` ran to its end: kept aside for the next one,
    /// unless another is already (or the test is over), when it goes back
    /// to the pool.
    pub(crate) fn keep(&self, conn: PoolConnection<DB>) {
        let mut state = self.state();
        if !state.closed && state.held.is_none() {
            state.held = Some((conn, Instant::now()));
            return;
        }
        drop(state);
        drop(conn);
    }

    /// The test is over: later statements take connections from the pool
    /// (closed by then), and the connection left aside is handed to the
    /// caller, to end its session's state before it goes back.
    pub(crate) fn close(&self) -> Option<PoolConnection<DB>> {
        let mut state = self.state();
        state.closed = true;
        state.held.take().map(|(conn, _)| conn)
    }
}
