//! The lock on the test's connection ([`SlotGuard`]): taken with the
//! checkout timeout, refused once the test is over or its connection
//! poisoned, and handed to the test or the app for `acquire()`/`begin()`.

use std::sync::atomic::Ordering;

use sqlx::pool::PoolConnection;
use sqlx_core::transaction::TransactionManager;
use tokio::sync::OwnedMutexGuard;

use super::errors::session_gone;
use super::recover::recover_dropped;
use super::{Dialect, Manager, Shared, check_open, depth};
use crate::error::{Error, ErrorKind};

pub(crate) struct Slot<DB: Dialect> {
    pub(super) conn: Option<PoolConnection<DB>>,
    /// `conn` is lent to a `Transaction` (`Acquire::begin` on `&Db`): it
    /// comes back through the test's pool of one.
    pub(super) lent: bool,
    pub(super) ended: Option<&'static str>,
}

/// What [`Shared::reclaim`] found.
pub(super) enum Reclaim {
    /// The connection is back in the slot.
    Back,
    /// Still out after the wait.
    Busy,
    /// It came back broken, or not at all: the test is poisoned.
    Broken,
}

/// The lock on the test's connection. Derefs (through `DbConn`) to it.
pub(crate) struct SlotGuard<DB: Dialect> {
    pub(super) guard: OwnedMutexGuard<Slot<DB>>,
    /// The test's first use of its connection (see [`Shared::replace`]).
    pub(super) first: bool,
}

impl<DB: Dialect> SlotGuard<DB> {
    pub(crate) fn conn(&self) -> &DB::Connection {
        self.guard.conn.as_ref().expect("checked at lock time")
    }

    pub(crate) fn conn_mut(&mut self) -> &mut DB::Connection {
        self.guard.conn.as_mut().expect("checked at lock time")
    }

    /// Ends the app transaction this guard began: `RELEASE SAVEPOINT` on
    /// commit, `ROLLBACK TO SAVEPOINT` otherwise.
    /// Run to its end in a task of its own (see `crate::shared::detached`):
    /// if this future is dropped, the connection comes back through the
    /// test's pool of one, the savepoint ended.
    ///
    /// The outermost one's commit first asks whether deferred constraints
    /// fail, as production's `COMMIT` would (see
    /// `Dialect::deferred_violation`): if so it is rolled back instead, and
    /// the commit fails with their error.
    ///
    /// The outermost one's end also resets what production resets at the end
    /// of a transaction (see `Dialect::RESET_AT_TRANSACTION_END`).
    pub(crate) async fn end_savepoint(&mut self, mut commit: bool) -> sqlx::Result<()> {
        let outermost = depth::<DB>(self.conn()) == 2;
        let state = super::state_of::<DB>(self.conn()).filter(|_| outermost);
        let mut violation = None;
        if commit
            && state
                .as_ref()
                .is_some_and(|s| s.check_deferred.load(Ordering::Relaxed))
            && let Some(ask) = DB::deferred_violation(self.conn_mut())
        {
            violation = ask.await?;
            commit = violation.is_none();
        }
        let conn = self.guard.conn.take().expect("checked at lock time");
        self.guard.lent = true;
        let Some((conn, ended)) = crate::shared::detached::end(conn, commit).await else {
            return Err(sqlx::Error::WorkerCrashed);
        };
        self.guard.conn = Some(conn);
        self.guard.lent = false;
        ended?;
        if state.is_some_and(|s| s.reset_at_end.load(Ordering::Relaxed))
            && let Some((_, reset)) = DB::RESET_AT_TRANSACTION_END
        {
            super::exec::<DB>(self.conn_mut(), reset).await?;
        }
        violation.map_or(Ok(()), Err)
    }

    pub(crate) fn start_rollback_savepoint(&mut self) {
        Manager::<DB>::start_rollback(self.conn_mut())
    }
}

impl<DB: Dialect> Shared<DB> {
    fn over_error(&self, when: &str) -> sqlx::Error {
        Error::new(
            ErrorKind::TestOver,
            format!(
                "db-test: test `{}` is over ({when}); its `Db` can no longer be used. \
                 A task spawned by the test outlived it.",
                self.state.label
            ),
        )
        .into()
    }

    /// Takes the test's connection, waiting at most the checkout timeout.
    pub(crate) async fn lock(&self) -> sqlx::Result<SlotGuard<DB>> {
        if self.over.load(Ordering::Acquire) {
            return Err(self.over_error("it ended"));
        }
        let mut slot = match self.slot.clone().try_lock_owned() {
            Ok(slot) => slot,
            Err(_) => match self.wait_for_slot().await {
                Ok(slot) => slot,
                Err(()) => {
                    return Err(Error::new(
                        ErrorKind::CheckoutTimeout,
                        format!(
                            "db-test: test `{}` waited {:?} for its database connection, which \
                                 stayed busy. Likely cause: a guard from `db.acquire()` or \
                                 `db.begin()` is held across another database call (the test has \
                                 one connection, shared by every clone of its `Db`); drop the \
                                 guard first, or raise DB_TEST_CHECKOUT_TIMEOUT.",
                            self.state.label,
                            self.checkout_timeout()
                        ),
                    )
                    .into());
                }
            },
        };
        if let Some(when) = slot.ended {
            return Err(self.over_error(when));
        }
        if slot.lent && matches!(self.boxed_reclaim(&mut slot).await, Reclaim::Busy) {
            return Err(Error::new(
                ErrorKind::CheckoutTimeout,
                format!(
                    "db-test: test `{}` waited {:?} for its database connection, which a \
                     transaction from `Acquire::begin` on its `Db` still holds. Commit or drop \
                     that transaction before the next database call (the test has one \
                     connection, shared by every clone of its `Db`), or raise \
                     DB_TEST_CHECKOUT_TIMEOUT.",
                    self.state.label,
                    self.checkout_timeout()
                ),
            )
            .into());
        }
        if let Some(e) = self.state.poisoned_error() {
            return Err(e);
        }
        let conn = slot.conn.as_mut().expect("present until the test ends");
        recover_dropped::<DB>(&self.state, conn).await?;
        // Another connection of the slot's pool sees the same database only
        // where tests share a working database (not SQLite's copies).
        let first = DB::SHARED_WORKING_DATABASE && self.unsent.swap(false, Ordering::Relaxed);
        Ok(SlotGuard { guard: slot, first })
    }

    // Built and boxed in functions of their own: built in `lock`, which
    // every statement of a test awaits, their futures would take room in its
    // frame (in a debug build), on the test's thread.

    /// Waits for the connection another user of the test's `Db` holds.
    fn wait_for_slot(
        &self,
    ) -> futures_util::future::BoxFuture<'static, Result<OwnedMutexGuard<Slot<DB>>, ()>> {
        Box::pin(crate::clock::timeout(
            self.checkout_timeout(),
            self.slot.clone().lock_owned(),
        ))
    }

    /// [`Shared::reclaim`], waiting the checkout timeout.
    fn boxed_reclaim<'a>(
        &'a self,
        slot: &'a mut Slot<DB>,
    ) -> futures_util::future::BoxFuture<'a, Reclaim> {
        Box::pin(self.reclaim(slot, self.checkout_timeout()))
    }

    /// [`Shared::lock`] for a use that cannot be sent again on another
    /// connection (a guard, a prepared statement): on the test's first use
    /// of a connection handed over with no round trip, whether the server
    /// still has its session is checked first (one round trip), and the
    /// connection replaced if not.
    pub(crate) async fn lock_checked(&self) -> sqlx::Result<SlotGuard<DB>> {
        let mut guard = self.lock().await?;
        if guard.first
            && self.unverified
            && let Err(e) = check_open::<DB>(guard.conn_mut()).await
        {
            if !session_gone::<DB>(&e) {
                return Err(e);
            }
            self.replace(&mut guard.guard, &e).await?;
        }
        Ok(guard)
    }

    /// Gets the connection back from the `Transaction` it was lent to
    /// ([`Shared::lend`]), waiting up to `wait` for that transaction to end
    /// (committed, rolled back or dropped) and the connection to return to
    /// the test's pool of one. A connection that comes back outside the
    /// test's transaction (ended through it, or replaced by sqlx after it
    /// broke) poisons the test.
    pub(super) async fn reclaim(&self, slot: &mut Slot<DB>, wait: std::time::Duration) -> Reclaim {
        let Some(pool) = self.home.pool() else {
            slot.lent = false;
            self.state.poison(self.not_back_message());
            return Reclaim::Broken;
        };
        let mut conn = match crate::clock::timeout(wait, pool.acquire()).await {
            Err(()) => return Reclaim::Busy,
            Ok(Err(_)) => {
                slot.lent = false;
                self.state.poison(self.not_back_message());
                return Reclaim::Broken;
            }
            Ok(Ok(conn)) => conn,
        };
        // sqlx's depth says whether the app ended its savepoint; the check,
        // whether the database still has the test's transaction (a
        // deadlock in the app's transaction ended it, and sqlx's depth
        // does not know). Still lent meanwhile: a caller dropped during the
        // check lets the connection go back to the pool, where the next
        // user reclaims it.
        let open = depth::<DB>(&conn) == 1 && check_open::<DB>(&mut conn).await.is_ok();
        slot.lent = false;
        if !open {
            conn.close_on_drop();
            // Not a failure when the task that held it was dropped with the
            // test's own runtime.
            if !self.state.runtime_dropped.load(Ordering::Relaxed) {
                self.state.poison(self.not_back_message());
            }
            return Reclaim::Broken;
        }
        slot.conn = Some(conn);
        Reclaim::Back
    }

    fn not_back_message(&self) -> String {
        format!(
            "db-test: the connection that a transaction from `Acquire::begin` on the `Db` of test \
             `{}` used (or a `db.begin()` dropped while it began) did not come back inside the \
             test's transaction: a COMMIT or ROLLBACK sent through it ended that transaction, \
             sqlx's own `begin()` nested in it was dropped before it finished (sqlx then rolls \
             back the transaction around it), the database ended it (a deadlock does on \
             MySQL; transaction-mode tests share one working database there, so a test that \
             deadlocks with parallel tests, or retries after a deadlock, needs `isolation = \
             \"database\"`), or the connection broke. The test cannot go on. End such a \
             transaction with `tx.commit()` or `tx.rollback()`, which release or roll back its \
             savepoint.",
            self.state.label
        )
    }

    /// Lends the test's connection to a `Transaction` for `Acquire::begin`
    /// on `&Db`: the connection leaves the slot (the next user waits for it,
    /// as for a guard), and sqlx's `begin()` on it is a savepoint of the
    /// test's transaction. When the transaction ends, the connection returns
    /// to the test's pool of one, where [`Shared::reclaim`] finds it.
    pub(crate) async fn lend(&self) -> sqlx::Result<PoolConnection<DB>> {
        let mut guard = self.lock_app().await?;
        let conn = guard.guard.conn.take().expect("checked at lock time");
        guard.guard.lent = true;
        Ok(conn)
    }

    /// The test's connection for the test or the app (`acquire()`). Its
    /// bare connection (`&mut **conn`, or any `&mut` connection parameter it
    /// is passed to) may be given session state db-test does not see (a
    /// setting, a pragma, a temporary table): the connection is closed at
    /// the end of the test rather than handed to the next one.
    ///
    /// It may also change the schema where db-test does not see it, and
    /// statements cached before (by this test or an earlier one on this
    /// connection) may no longer fit the schema: where the backend needs it
    /// (SQLite), sqlx's statement cache is cleared now, and once more
    /// before the next statement db-test runs (see
    /// [`Dialect::changes_schema`]).
    pub(crate) async fn lock_raw(&self) -> sqlx::Result<SlotGuard<DB>> {
        let mut guard = self.lock_app().await?;
        self.state.touched.store(true, Ordering::Relaxed);
        self.state.probe_once.store(true, Ordering::Relaxed);
        if let Some(clear) = DB::clear_statements(guard.conn_mut()) {
            self.state.clear_once.store(true, Ordering::Relaxed);
            clear.await?;
        }
        Ok(guard)
    }

    /// The test's connection, out of db-test's sight: the test's
    /// transaction is checked at the end ([`Dialect::PROBE_TRANSACTION`]).
    async fn lock_app(&self) -> sqlx::Result<SlotGuard<DB>> {
        let guard = self.lock_checked().await?;
        self.state.out_of_sight.store(true, Ordering::Relaxed);
        Ok(guard)
    }

    /// An app transaction: a savepoint inside the test's transaction. As
    /// the test's first statement, sent again on another connection if the
    /// server had ended the session of its own (see [`Shared::replace`]).
    pub(crate) async fn begin(&self) -> sqlx::Result<SlotGuard<DB>> {
        let mut guard = self.lock().await?;
        self.state.out_of_sight.store(true, Ordering::Relaxed);
        match self.begin_detached(&mut guard).await {
            Err(e) if guard.first && session_gone::<DB>(&e) => {
                self.replace(&mut guard.guard, &e).await?;
                self.begin_detached(&mut guard).await?;
            }
            begun => begun?,
        }
        Ok(guard)
    }

    /// sqlx's `begin()` on the guarded connection, lent to a task of its own
    /// while it runs (see `crate::shared::detached`): if this future is
    /// dropped, the connection comes back through the test's pool of one,
    /// its savepoint undone.
    async fn begin_detached(&self, guard: &mut SlotGuard<DB>) -> sqlx::Result<()> {
        let conn = guard.guard.conn.take().expect("checked at lock time");
        guard.guard.lent = true;
        let Some((conn, begun)) = crate::shared::detached::begin(conn).await else {
            return Err(sqlx::Error::WorkerCrashed);
        };
        guard.guard.conn = Some(conn);
        guard.guard.lent = false;
        begun
    }
}
