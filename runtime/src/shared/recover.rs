//! A statement whose future was dropped before its reply was read: reading
//! that reply (cancelling the statement on the server if it keeps running),
//! and undoing it if it failed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::postgres::{PgConnection, PgTransactionManager};
use sqlx::{Connection, Executor};
use sqlx_core::transaction::TransactionManager;

use super::errors::out_of_sync;
use super::session::check_deferred;
use super::slot::Slot;
use super::state::lock;
use super::{SharedConn, TEARDOWN_GRACE};
use crate::hint::sqlstate;
use crate::postgres::signal::{Backends, Signal, signal_backends};

/// How long a statement whose future was dropped may keep running before
/// it is cancelled on the server. One that completes by then keeps its
/// effects, as it would in production; one still running is cancelled (the
/// test's one connection cannot wait out, say, an hour-long statement that
/// its caller gave up on), so it fails and is undone.
const CANCEL_AFTER: Duration = Duration::from_millis(250);

impl SharedConn {
    /// Reads what is left on the connection until it is ready for the next
    /// statement. A statement still running after [`CANCEL_AFTER`] (its
    /// caller gave up on it) is cancelled on the server. Returns the errors
    /// the server reported meanwhile.
    pub(super) async fn drain(&self, conn: &mut PgConnection) -> sqlx::Result<Vec<String>> {
        let mut errors = Vec::new();
        let mut cancelled = false;
        for _ in 0..64 {
            let result = {
                let ping = conn.ping();
                tokio::pin!(ping);
                if cancelled {
                    ping.await
                } else {
                    tokio::select! {
                        biased;
                        r = &mut ping => r,
                        () = crate::clock::sleep(CANCEL_AFTER) => {
                            cancelled = true;
                            signal_backends(Backends::Tagged(self.tag.clone()), Signal::Cancel).await;
                            match crate::clock::timeout(TEARDOWN_GRACE, &mut ping).await {
                                Ok(r) => r,
                                Err(()) => Err(sqlx::Error::Protocol(
                                    "the cancelled statement did not stop".into(),
                                )),
                            }
                        }
                    }
                }
            };
            match result {
                Ok(()) => return Ok(errors),
                Err(e) if is_abandoned_copy(&e) => {
                    // sqlx does not count the reply of a COPY it abandoned:
                    // from here on it would read every reply one late.
                    return Err(sqlx::Error::Protocol(format!(
                        "a `COPY ... FROM STDIN` was abandoned (its `PgCopyIn` dropped without \
                         `finish()` or `fail()`): {e}"
                    )));
                }
                Err(e) if e.as_database_error().is_some() => errors.push(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        Err(sqlx::Error::Protocol(
            "too many pending errors on the test's connection".into(),
        ))
    }

    /// A statement of `Db` was dropped mid-flight: read its outcome, undo it
    /// if it failed (so the next statement sees only what completed), and
    /// put it in the statement log.
    pub(super) async fn recover_dropped(&self, slot: &mut Slot) {
        let Some(sql) = lock(&self.state.in_flight).take() else {
            return;
        };
        self.recover_statement(slot, sql).await
    }

    /// [`SharedConn::recover_dropped`] once a statement was found dropped,
    /// boxed by a function of its own: its future's room in a debug build's
    /// frame is then only taken (and the stack's pages faulted in) when a
    /// statement was dropped, not before every statement.
    fn recover_statement<'a>(
        &'a self,
        slot: &'a mut Slot,
        sql: String,
    ) -> futures_util::future::BoxFuture<'a, ()> {
        Box::pin(self.recover_statement_inner(slot, sql))
    }

    async fn recover_statement_inner(&self, slot: &mut Slot, sql: String) {
        let conn = slot.conn.as_mut().expect("checked at lock time");
        let outcome = match self.drain(conn).await {
            Ok(errors)
                if errors.is_empty()
                    && PgTransactionManager::get_transaction_depth(conn) == 1
                    && self.state.check_deferred.load(Ordering::Relaxed)
                    && let Err(e) = check_deferred(&self.state, conn).await =>
            {
                // Dropped before its deferred constraints were checked: its
                // COMMIT in production would fail, and undo it.
                self.state.fresh.store(false, Ordering::Relaxed);
                if let Err(e2) = conn.execute("ROLLBACK TO SAVEPOINT dbt_auto").await {
                    self.state.poison(format!(
                        "db-test: could not undo a dropped statement in test `{}`: {e2}",
                        self.label
                    ));
                }
                format!(
                    "its caller dropped it; its deferred constraint failed and it was undone: {e}"
                )
            }
            Ok(errors) if errors.is_empty() => {
                self.state.fresh.store(false, Ordering::Relaxed);
                "its caller dropped it; it completed on the server".to_string()
            }
            Ok(errors) => {
                let undo = if PgTransactionManager::get_transaction_depth(conn) == 1 {
                    conn.execute("ROLLBACK TO SAVEPOINT dbt_auto").await.err()
                } else {
                    None
                };
                if let Some(e) = undo {
                    self.state.poison(format!(
                        "db-test: could not undo a dropped statement in test `{}`: {e}",
                        self.label
                    ));
                }
                format!(
                    "its caller dropped it; it failed and was undone: {}",
                    errors.join("; ")
                )
            }
            Err(e) => {
                self.state.poison(out_of_sync(&self.label, &e));
                format!("its caller dropped it; the connection broke: {e}")
            }
        };
        self.state.record(sql, Some(outcome));
    }
}

/// The error of a COPY whose `PgCopyIn` was dropped: sqlx sent `CopyFail`.
fn is_abandoned_copy(e: &sqlx::Error) -> bool {
    sqlstate(e).as_deref() == Some("57014")
        && e.as_database_error()
            .is_some_and(|d| d.message().starts_with("COPY from stdin failed"))
}
