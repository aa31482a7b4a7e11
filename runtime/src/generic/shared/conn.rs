//! [`Shared`]: the test's one connection, shared by every clone of the
//! test's `Db`; how it opens the test's transaction, and what it reports.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx_core::transaction::TransactionManager;

use super::slot::Slot;
use super::state::{Canceller, State, register, unregister};
use super::{Dialect, Manager, depth, lock};
use crate::shared::LoggedStatement;
use crate::slots::{Home, HomeCell};

/// How long a connection readied for the next test (its transaction opened
/// after the last test, see `RESTART_TEST`) is used as it is, with no
/// round trip; parked longer, its transaction is opened again first, which
/// also finds out whether the server still has the session (ended by a
/// `KILL`, a restart, `wait_timeout`): the setup then opens another
/// connection, where the test's first statement would fail. Tests that
/// follow one another take a slot within a millisecond or so of its
/// readying; a session ended in those few milliseconds fails the next
/// test, as one ended during a test fails that test.
const BEGUN_FRESH: Duration = Duration::from_millis(20);

/// The test's connection in its transaction, shared by every clone of the
/// test's `Db`.
pub(crate) struct Shared<DB: Dialect> {
    pub(super) slot: Arc<tokio::sync::Mutex<Slot<DB>>>,
    /// The pool of one the connection came from, and goes back to (also
    /// from a `Transaction` it was lent to); `None` once given back.
    pub(super) home: HomeCell<DB>,
    pub(super) state: Arc<State>,
    pub(super) conn_addr: usize,
    /// Set when the test ends, even if a task still holds the connection.
    pub(super) over: AtomicBool,
    checkout_timeout_ms: AtomicU64,
    /// Nothing of the test has been sent on the connection yet: if the
    /// server ended its session meanwhile, the test loses nothing when
    /// another connection takes its place (see [`Shared::replace`]).
    pub(super) unsent: AtomicBool,
    /// The connection was handed to the test with no round trip (readied
    /// for it just before, see [`BEGUN_FRESH`]): whether the server still
    /// has its session is not known.
    pub(super) unverified: bool,
}

impl<DB: Dialect> Shared<DB> {
    /// Whether this test checks deferred constraints where production's
    /// `COMMIT` would (`check_constraints`), and whether its database has
    /// deferred ones already (see `Dialect::deferred_violation`).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn check_deferred_constraints(&self, checks: bool, defers: bool) {
        self.state
            .checks_constraints
            .store(checks, Ordering::Relaxed);
        self.state
            .check_deferred
            .store(checks && defers, Ordering::Relaxed);
    }

    /// Opens the test's transaction on `conn` and wraps it. On failure the
    /// connection is handed back, for the caller to close.
    #[allow(clippy::type_complexity)]
    pub(crate) async fn open(
        mut conn: PoolConnection<DB>,
        home: Home<DB>,
        label: String,
    ) -> Result<Arc<Self>, (sqlx::Error, PoolConnection<DB>, Home<DB>)> {
        let expected = usize::from(home.begun_since().is_some());
        if depth::<DB>(&conn) != expected {
            return Err((
                sqlx::Error::Protocol(
                    "the connection came back in an unexpected transaction state".into(),
                ),
                conn,
                home,
            ));
        }
        let mut unverified = false;
        match (home.begun_since(), DB::restart_test()) {
            // Readied after the last test (see `RESTART_TEST`), just now.
            (Some(since), _) if since.elapsed() < BEGUN_FRESH => unverified = true,
            // Readied a while ago: begun again, which also finds out
            // whether the server still has the session.
            (Some(_), Some(restart)) => {
                if let Err(e) = super::exec::<DB>(&mut conn, restart).await {
                    return Err((e, conn, home));
                }
            }
            _ => {
                // One round trip: the transaction and db-test's savepoint
                // in it (MySQL's text protocol and SQLite's `exec` run
                // several statements).
                let begin = sqlx_core::sql_str::SqlStr::from_static(DB::begin_test());
                if let Err(e) = Manager::<DB>::begin(&mut conn, Some(begin)).await {
                    return Err((e, conn, home));
                }
            }
        }
        let state = Arc::new(State {
            label,
            refuse: DB::refuse,
            touches_session: DB::touches_session,
            check_deferred: AtomicBool::new(false),
            checks_constraints: AtomicBool::new(false),
            reset_at_end: AtomicBool::new(false),
            own_savepoints: Mutex::new(Vec::new()),
            touched: AtomicBool::new(false),
            advised_once: AtomicBool::new(false),
            schema_changed: AtomicBool::new(false),
            clear_once: AtomicBool::new(false),
            out_of_sight: AtomicBool::new(false),
            probe_once: AtomicBool::new(false),
            abandon: AtomicBool::new(false),
            ended_out_of_sight: AtomicBool::new(false),
            ended_by_database: AtomicBool::new(false),
            held_at_end: AtomicBool::new(false),
            runtime_dropped: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            canceller: Mutex::new(None),
            statements: AtomicU64::new(0),
            log: Mutex::new(VecDeque::new()),
            in_flight: Mutex::new(None),
            poisoned: Mutex::new(None),
        });
        let slot = Arc::new(tokio::sync::Mutex::new(Slot {
            conn: Some(conn),
            lent: false,
            ended: None,
        }));
        // The connection sits in the slot's heap allocation until `finish`
        // takes it out (and unregisters it first).
        let conn_addr = {
            let slot = slot.try_lock().expect("nobody else has it yet");
            let conn: &DB::Connection = slot.conn.as_deref().expect("just put there");
            conn as *const DB::Connection as usize
        };
        register(conn_addr, state.clone());
        Ok(Arc::new(Shared {
            slot,
            home: HomeCell::new(home),
            state,
            conn_addr,
            over: AtomicBool::new(false),
            checkout_timeout_ms: AtomicU64::new(
                crate::config::checkout_timeout().as_millis() as u64
            ),
            unsent: AtomicBool::new(true),
            unverified,
        }))
    }

    /// The server ended the session of the test's connection before the
    /// test sent anything on it (a `KILL`, a restart, while the connection
    /// waited for this test; see [`BEGUN_FRESH`]): another connection from
    /// the slot's pool takes its place, with the test's transaction open on
    /// it. The test had nothing on the old one. On failure the test is
    /// poisoned (its slot holds no connection any more).
    pub(super) async fn replace(
        &self,
        slot: &mut Slot<DB>,
        gone: &sqlx::Error,
    ) -> sqlx::Result<()> {
        if self.over.load(Ordering::Acquire) {
            // The teardown ended the session of a first statement still
            // running after the test (see `MySqlTx`): not sent again.
            let why = super::errors::out_of_sync(&self.state.label, gone);
            self.state.poison(why.clone());
            return Err(super::errors::poisoned_error(&why));
        }
        if let Some(old) = slot.conn.take() {
            // Leaves the pool of one at once, so that it opens another; a
            // connection whose session is gone has nothing to close.
            drop(old.detach());
        }
        let opened = match self.home.pool() {
            // On the shared runtime: a body's paused clock would time the
            // checkout out at once while the connect waits on the network.
            Some(pool) => crate::run::shared_runtime()
                .spawn(async move {
                    let mut conn = pool.acquire().await?;
                    let begin = sqlx_core::sql_str::SqlStr::from_static(DB::begin_test());
                    match Manager::<DB>::begin(&mut conn, Some(begin)).await {
                        Ok(()) => Ok(conn),
                        Err(e) => {
                            conn.close_on_drop();
                            Err(e)
                        }
                    }
                })
                .await
                .unwrap_or_else(|e| Err(sqlx::Error::Protocol(format!("{e}")))),
            None => Err(sqlx::Error::PoolClosed),
        };
        match opened {
            Ok(conn) => {
                slot.conn = Some(conn);
                // In place: the registry's address still finds the test.
                debug_assert_eq!(
                    slot.conn
                        .as_deref()
                        .map(|c| c as *const DB::Connection as usize),
                    Some(self.conn_addr)
                );
                Ok(())
            }
            Err(e) => {
                let why = format!(
                    "db-test: the server had ended the session of the connection of test `{}` \
                     before its first statement ({gone}), and another connection could not \
                     take its place: {e}",
                    self.state.label
                );
                self.state.poison(why.clone());
                Err(super::errors::poisoned_error(&why))
            }
        }
    }

    /// On the body's own runtime, before it is dropped: a connection lent
    /// to `Acquire::begin` whose transaction ended finishes returning to its
    /// pool (see [`HomeCell::settle`]).
    pub(crate) async fn settle_lent(&self) {
        if self.slot.try_lock().map(|slot| slot.lent).unwrap_or(false) {
            self.home.settle().await;
        }
    }

    pub(crate) fn label(&self) -> &str {
        &self.state.label
    }

    /// How a dropped statement that goes on is stopped (see [`Canceller`]).
    pub(crate) fn set_canceller(&self, canceller: Arc<dyn Canceller>) {
        *lock(&self.state.canceller) = Some(canceller);
    }

    pub(crate) fn checkout_timeout(&self) -> Duration {
        Duration::from_millis(self.checkout_timeout_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn set_checkout_timeout(&self, timeout: Duration) {
        self.checkout_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    pub(crate) fn statement_count(&self) -> u64 {
        self.state.statements.load(Ordering::Relaxed)
    }

    /// The test's last statements, for its failure report; with the one
    /// still running on the connection, if any (a test that timed out in
    /// it, or a statement the test dropped that had not ended).
    pub(crate) fn recent_statements(&self) -> Vec<LoggedStatement> {
        let mut log: Vec<LoggedStatement> = lock(&self.state.log).iter().cloned().collect();
        if let Some(sql) = lock(&self.state.in_flight).clone() {
            log.push(LoggedStatement {
                sql,
                error: Some(crate::shared::STILL_RUNNING.into()),
            });
        }
        log
    }

    /// Whether a statement of the test had not ended when the test did (a
    /// statement the test dropped, still running or not yet read back).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn statement_in_flight(&self) -> bool {
        lock(&self.state.in_flight).is_some()
    }

    /// At the test's end, the connection is closed without a rollback or
    /// a look at what it was doing: its statement was interrupted, and its
    /// database goes with it (SQLite's in-memory copy).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn abandon_at_end(&self) {
        self.state.abandon.store(true, Ordering::Relaxed);
    }
}

impl<DB: Dialect> Drop for Shared<DB> {
    fn drop(&mut self) {
        // Teardown never ran (setup failed): leave the registry.
        unregister(self.conn_addr, &self.state);
    }
}
