//! The lock on the test's connection ([`SlotGuard`]), and what taking it
//! does first: fail once the test is over or its connection poisoned, read
//! the reply of a dropped statement, and bring `dbt_auto` up to date.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgTransactionManager};
use sqlx_core::transaction::TransactionManager;
use tokio::sync::OwnedMutexGuard;

use super::SharedConn;
use super::errors::{not_run_error, out_of_sync, poisoned_error};
use super::session::check_deferred;
use super::state::{ConnState, lock};
use super::statement::{refresh_savepoint, restore_local_settings};
use crate::error::{Error, ErrorKind};

/// What [`SharedConn::reclaim`] found.
pub(super) enum Reclaim {
    /// The connection is back in the slot.
    Back,
    /// Still out after the wait.
    Busy,
    /// It came back broken, or not at all: the test is poisoned.
    Broken,
}

pub(crate) struct Slot {
    pub(super) conn: Option<PoolConnection<Postgres>>,
    /// A guard was used since the last check: something sent on the raw
    /// connection may have left a reply behind, or an aborted block.
    pub(super) unverified: bool,
    /// `conn` is lent to a `Transaction` (`Acquire::begin` on `&Db`): it
    /// comes back through the test's pool of one.
    pub(super) lent: bool,
    pub(crate) ended: Option<&'static str>,
}

/// The lock on the test's connection. Derefs to the connection.
pub(crate) struct SlotGuard {
    guard: OwnedMutexGuard<Slot>,
    state: Arc<ConnState>,
    raw: bool,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        // Something sent on the raw connection may have been dropped in
        // flight: the next user reads the connection to its end first.
        self.guard.unverified = true;
        if self.raw {
            self.state.fresh.store(false, Ordering::Relaxed);
        }
    }
}

impl SlotGuard {
    pub(crate) fn conn(&self) -> &PgConnection {
        self.guard.conn.as_ref().expect("checked at lock time")
    }

    /// sqlx's transaction depth on the connection (1: the test's own).
    pub(crate) fn depth(&self) -> usize {
        PgTransactionManager::get_transaction_depth(self.conn())
    }

    pub(crate) fn conn_mut(&mut self) -> &mut PgConnection {
        self.guard.conn.as_mut().expect("checked at lock time")
    }

    /// `RELEASE SAVEPOINT`. An app transaction an error aborted is rolled
    /// back instead, and the commit succeeds: what `COMMIT` of an aborted
    /// transaction does in production (the server answers `ROLLBACK`, and
    /// sqlx's `commit()` returns `Ok`).
    ///
    /// Settings the outermost app transaction made for itself only (`SET
    /// LOCAL`, `set_config(.., true)`), which the `RELEASE` keeps, are then
    /// set back, as production's `COMMIT` drops them.
    ///
    /// The outermost one first checks deferred constraints, as production's
    /// `COMMIT` does: one that fails rolls the transaction back, and the
    /// commit fails with its error.
    pub(crate) async fn commit_savepoint(&mut self) -> sqlx::Result<()> {
        let outermost = self.depth() == 2;
        let local = self.take_local_settings();
        if outermost
            && self.state.check_deferred.load(Ordering::Relaxed)
            && let Err(e) = check_deferred(&self.state.clone(), self.conn_mut()).await
            && e.as_database_error().is_some()
            && crate::hint::sqlstate(&e).as_deref() != Some("25P02")
        {
            PgTransactionManager::rollback(self.conn_mut()).await?;
            return Err(e);
        }
        match PgTransactionManager::commit(self.conn_mut()).await {
            Err(e) if crate::hint::sqlstate(&e).as_deref() == Some("25P02") => {
                PgTransactionManager::rollback(self.conn_mut()).await
            }
            Ok(()) => {
                if !local.is_empty() {
                    restore_local_settings(self.conn_mut(), local).await;
                }
                Ok(())
            }
            ended => ended,
        }
    }

    pub(crate) async fn rollback_savepoint(&mut self) -> sqlx::Result<()> {
        self.take_local_settings();
        PgTransactionManager::rollback(self.conn_mut()).await
    }

    pub(crate) fn start_rollback_savepoint(&mut self) {
        self.take_local_settings();
        PgTransactionManager::start_rollback(self.conn_mut())
    }

    /// The settings noted for the app transaction about to end, if it is
    /// the outermost one (ending an inner one keeps them, as in production).
    fn take_local_settings(&mut self) -> Vec<(String, Option<String>)> {
        if self.depth() == 2 {
            std::mem::take(&mut *lock(&self.state.local_settings))
        } else {
            Vec::new()
        }
    }
}

impl SharedConn {
    fn over_error(&self, when: &str) -> sqlx::Error {
        Error::new(
            ErrorKind::TestOver,
            format!(
                "db-test: test `{}` is over ({when}); its `Db` can no longer be used. \
             A task spawned by the test outlived it.",
                self.label
            ),
        )
        .into()
    }

    pub(super) async fn lock_slot(&self) -> sqlx::Result<OwnedMutexGuard<Slot>> {
        if self.over.load(Ordering::Acquire) {
            return Err(self.over_error("it ended"));
        }
        // The uncontended case needs no timer at all.
        let mut slot = match self.slot.clone().try_lock_owned() {
            Ok(slot) => slot,
            Err(_) => {
                match crate::clock::timeout(self.checkout_timeout(), self.slot.clone().lock_owned())
                    .await
                {
                    Ok(slot) => slot,
                    Err(()) => {
                        return Err(Error::new(ErrorKind::CheckoutTimeout, format!(
                            "db-test: test `{}` waited {:?} for its database connection, which stayed busy. \
                         Likely cause: a guard from `db.acquire()` or `db.begin()` is held across another \
                         database call (the test has one connection, shared by every clone of its `Db`); \
                         drop the guard first, or raise DB_TEST_CHECKOUT_TIMEOUT.",
                            self.label,
                            self.checkout_timeout()
                        ))
                        .into());
                    }
                }
            }
        };
        if let Some(when) = slot.ended {
            return Err(self.over_error(when));
        }
        if slot.lent {
            match self.reclaim(&mut slot, self.checkout_timeout()).await {
                Reclaim::Back | Reclaim::Broken => {}
                Reclaim::Busy => {
                    return Err(Error::new(
                        ErrorKind::CheckoutTimeout,
                        format!(
                            "db-test: test `{}` waited {:?} for its database connection, which a \
                         transaction from `Acquire::begin` on its `Db` still holds. Commit or drop \
                         that transaction before the next database call (the test has one \
                         connection, shared by every clone of its `Db`), or raise \
                         DB_TEST_CHECKOUT_TIMEOUT.",
                            self.label,
                            self.checkout_timeout()
                        ),
                    )
                    .into());
                }
            }
        }
        if let Some(why) = self.state.poisoned() {
            return Err(not_run_error(&why));
        }
        if lock(&self.state.in_flight).is_some() {
            self.recover_dropped(&mut slot).await;
            if let Some(why) = self.state.poisoned() {
                return Err(poisoned_error(&why));
            }
        }
        Ok(slot)
    }

    /// Gets the connection back from the `Transaction` it was lent to
    /// ([`SharedConn::lend`]), waiting up to `wait` for that transaction to
    /// end (committed, rolled back or dropped) and the connection to return
    /// to the test's pool of one. A connection that comes back outside the
    /// test's transaction (the lent one broke, and the pool opened another)
    /// poisons the test.
    pub(super) async fn reclaim(&self, slot: &mut Slot, wait: std::time::Duration) -> Reclaim {
        let Some(pool) = self.home.pool() else {
            self.state
                .poison(out_of_sync(&self.label, &sqlx::Error::PoolClosed));
            slot.lent = false;
            return Reclaim::Broken;
        };
        let mut conn = match crate::clock::timeout(wait, pool.acquire()).await {
            Err(()) => return Reclaim::Busy,
            Ok(Err(e)) => {
                self.state.poison(out_of_sync(&self.label, &e));
                slot.lent = false;
                return Reclaim::Broken;
            }
            Ok(Ok(conn)) => conn,
        };
        slot.lent = false;
        if PgTransactionManager::get_transaction_depth(&conn) != 1 {
            // Not the test's session (sqlx replaced a connection that failed
            // its release check): close it, and fail the test, unless the
            // task that held it was dropped with the test's own runtime.
            conn.close_on_drop();
            if self.state.runtime_dropped.load(Ordering::Relaxed) {
                return Reclaim::Broken;
            }
            self.state.poison(format!(
                "db-test: the connection that a transaction from `Acquire::begin` on the `Db` of \
                 test `{}` used (or a `db.begin()` dropped while it began) did not come back \
                 inside the test's transaction: a COMMIT or ROLLBACK sent through it ended that \
                 transaction, sqlx's own `begin()` nested in it was dropped before it finished \
                 (sqlx then rolls back the transaction around it), or the connection broke. \
                 Nothing the test wrote was committed (db-test's guard makes a COMMIT of the \
                 test's transaction fail); the test cannot go on. End such a transaction with \
                 `tx.commit()` or `tx.rollback()`, which release or roll back its savepoint.",
                self.label
            ));
            return Reclaim::Broken;
        }
        slot.conn = Some(conn);
        // What the transaction sent is unknown: read the connection to its
        // end and renew `dbt_auto` before the next statement.
        slot.unverified = true;
        Reclaim::Back
    }

    /// Lends the test's connection to a `Transaction` for
    /// `Acquire::begin` on `&Db`: the connection leaves the slot (the next
    /// user waits for it, as for a guard), and sqlx's `begin()` on it is a
    /// savepoint of the test's transaction. When the transaction ends, the
    /// connection returns to the test's pool of one, where
    /// [`SharedConn::reclaim`] finds it.
    pub(crate) async fn lend(&self) -> sqlx::Result<PoolConnection<Postgres>> {
        let mut slot = self.lock_slot().await?;
        self.make_fresh(&mut slot, true).await?;
        self.state.fresh.store(false, Ordering::Relaxed);
        let conn = slot.conn.take().expect("checked at lock time");
        slot.lent = true;
        Ok(conn)
    }

    /// Brings `dbt_auto` up to date so that it marks the current state,
    /// repairing what a guard left behind: the reply of something it
    /// dropped mid-flight (read first, and cancelled if still running), or
    /// an aborted transaction block.
    pub(super) async fn make_fresh(&self, slot: &mut Slot, for_guard: bool) -> sqlx::Result<()> {
        let conn = slot.conn.as_mut().expect("checked at lock time");
        if for_guard {
            self.state.touched_session.store(true, Ordering::Relaxed);
        }
        let mut undo = false;
        if slot.unverified {
            match self.drain(conn).await {
                Ok(errors) => undo = !errors.is_empty(),
                Err(e) => {
                    let msg = out_of_sync(&self.label, &e);
                    self.state.poison(msg.clone());
                    return Err(poisoned_error(&msg));
                }
            }
            slot.unverified = false;
        }
        let arm = for_guard && !self.state.armed.load(Ordering::Relaxed);
        if !undo && !arm && self.state.fresh.load(Ordering::Relaxed) {
            return Ok(());
        }
        if PgTransactionManager::get_transaction_depth(conn) > 1 {
            // Inside an app transaction left open on a guard: nothing to guard.
            return Ok(());
        }
        refresh_savepoint(&self.state, conn, undo, arm).await
    }

    /// Locks the connection for statements outside any app transaction.
    pub(crate) async fn lock_autocommit(&self) -> sqlx::Result<SlotGuard> {
        let mut slot = self.lock_slot().await?;
        self.make_fresh(&mut slot, true).await?;
        Ok(SlotGuard {
            guard: slot,
            state: self.state.clone(),
            raw: true,
        })
    }

    /// Starts an app transaction: a savepoint that sqlx tracks.
    pub(crate) async fn begin(&self) -> sqlx::Result<SlotGuard> {
        let mut slot = self.lock_slot().await?;
        self.make_fresh(&mut slot, true).await?;
        self.state.fresh.store(false, Ordering::Relaxed);
        // Lent to a task of its own while it begins (see `detached`): if
        // this future is dropped, the connection comes back through the
        // test's pool of one, its savepoint undone.
        let conn = slot.conn.take().expect("checked at lock time");
        slot.lent = true;
        let Some((conn, begun)) = super::detached::begin(conn).await else {
            return Err(sqlx::Error::WorkerCrashed);
        };
        slot.conn = Some(conn);
        slot.lent = false;
        begun?;
        Ok(SlotGuard {
            guard: slot,
            state: self.state.clone(),
            raw: false,
        })
    }
}
