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
use super::errors::{out_of_sync, poisoned_error};
use super::state::{ConnState, lock};
use super::statement::refresh_savepoint;
use crate::error::{Error, ErrorKind};

pub(crate) struct Slot {
    pub(super) conn: Option<PoolConnection<Postgres>>,
    /// A guard was used since the last check: something sent on the raw
    /// connection may have left a reply behind, or an aborted block.
    pub(super) unverified: bool,
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

    pub(crate) fn conn_mut(&mut self) -> &mut PgConnection {
        self.guard.conn.as_mut().expect("checked at lock time")
    }

    pub(crate) async fn commit_savepoint(&mut self) -> sqlx::Result<()> {
        PgTransactionManager::commit(self.conn_mut()).await
    }

    pub(crate) async fn rollback_savepoint(&mut self) -> sqlx::Result<()> {
        PgTransactionManager::rollback(self.conn_mut()).await
    }

    pub(crate) fn start_rollback_savepoint(&mut self) {
        PgTransactionManager::start_rollback(self.conn_mut())
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
        if let Some(why) = self.state.poisoned() {
            return Err(poisoned_error(&why));
        }
        if lock(&self.state.in_flight).is_some() {
            self.recover_dropped(&mut slot).await;
            if let Some(why) = self.state.poisoned() {
                return Err(poisoned_error(&why));
            }
        }
        Ok(slot)
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
        let conn = slot.conn.as_mut().expect("checked at lock time");
        PgTransactionManager::begin(conn, None).await?;
        Ok(SlotGuard {
            guard: slot,
            state: self.state.clone(),
            raw: false,
        })
    }
}
