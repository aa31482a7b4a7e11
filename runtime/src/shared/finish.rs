//! The end of a test in transaction mode: deferred constraints checked,
//! everything rolled back, the session left as a new one would be, and the
//! connection handed back (or closed).

use std::sync::atomic::Ordering;

use futures_util::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgTransactionManager;
use sqlx::{Connection, Executor, Postgres};
use sqlx_core::transaction::TransactionManager;
use tokio::sync::OwnedMutexGuard;

use super::errors::{commit_message, constraint_failure};
use super::session::{GUARD_TABLE, can_force_flush, session_state, session_state_sql};
use super::slot::{Reclaim, Slot};
use super::state::{LoggedStatement, lock, unregister};
use super::{SharedConn, TEARDOWN_GRACE};
use crate::hint::sqlstate;
use crate::postgres::signal::{Backends, Signal, signal_backends};

impl SharedConn {
    /// Ends the test: checks deferred constraints, rolls everything back,
    /// leaves the session as a new one would be (no advisory lock, no SQL
    /// `PREPARE`d statement, no stale statement cache) and hands the
    /// connection back. Later use of any clone of the `Db` errors.
    ///
    /// A test that timed out has its running statement cancelled on the
    /// server first. A task that still holds the connection after
    /// [`TEARDOWN_GRACE`] has the backend terminated under it.
    ///
    /// A healthy connection stays in its slot for the next test (see
    /// `Home::park`). Returns a failure message if the test's transaction
    /// was misused or a deferred constraint fails.
    pub(crate) async fn finish(
        &self,
        reason: &'static str,
        check_constraints: bool,
        timed_out: bool,
    ) -> (Option<String>, Vec<LoggedStatement>) {
        let (conn, failure, log, reusable) = self
            .finish_inner(reason, check_constraints, timed_out)
            .await;
        match conn {
            Some(conn) if reusable => self.home.park(conn),
            // Back to the slot's pool when dropped.
            _ => self.home.release(reusable),
        }
        (failure, log)
    }

    /// [`SharedConn::finish`], and whether the connection's slot can serve
    /// the next test (not while a task of this test may still hold it).
    async fn finish_inner(
        &self,
        reason: &'static str,
        check_constraints: bool,
        timed_out: bool,
    ) -> (
        Option<PoolConnection<Postgres>>,
        Option<String>,
        Vec<LoggedStatement>,
        bool,
    ) {
        self.over.store(true, Ordering::Release);
        // From now on no statement counts for this test, whatever holds the
        // connection; and its address may serve another test's connection.
        unregister(self.conn_addr, &self.state);
        let log =
            || -> Vec<LoggedStatement> { lock(&self.state.counters).log.iter().cloned().collect() };
        if timed_out {
            self.signal(Signal::Cancel).await;
        }
        let mut slot = match self.slot.clone().try_lock_owned() {
            Ok(slot) => slot,
            Err(_) => match self.wait_for_slot().await {
                Ok(slot) => slot,
                Err(()) => {
                    // A task still holds the connection: end the session under
                    // it, so that nothing of the test stays running or locked.
                    self.signal(Signal::Terminate).await;
                    return (
                        None,
                        Some(format!(
                            "db-test: test `{}` ended ({reason}) while a task it spawned still held its \
                             connection {TEARDOWN_GRACE:?} later; the connection's backend was terminated \
                             and everything the test wrote was rolled back. Stop such tasks before the \
                             test returns, or start them with `TestContext::spawn`, which aborts them.",
                            self.label
                        )),
                        log(),
                        false,
                    );
                }
            },
        };
        slot.ended = Some(reason);
        if slot.lent && matches!(self.reclaim_at_end(&mut slot).await, Reclaim::Busy) {
            // A transaction from `Acquire::begin` is still open: end the
            // session under it, as for a task that holds a guard.
            self.signal(Signal::Terminate).await;
            return (
                None,
                Some(format!(
                    "db-test: test `{}` ended ({reason}) while a transaction from `Acquire::begin` on \
                     its `Db` was still open {TEARDOWN_GRACE:?} later; the connection's backend was \
                     terminated and everything the test wrote was rolled back. Commit or drop the \
                     transaction before the test returns.",
                    self.label
                )),
                log(),
                false,
            );
        }
        self.recover_dropped(&mut slot).await;
        let mut failure = self.state.poisoned();
        let Some(mut conn) = slot.conn.take() else {
            return (None, failure, log(), true);
        };
        if failure.is_none() && slot.unverified {
            // A guard dropped mid-statement leaves its reply behind.
            match self.drain_or_close(conn).await {
                Some(drained) => conn = drained,
                None => return (None, failure, log(), true),
            }
        }
        let log = log();
        let mut healthy = true;
        // Unknown until the state query answers: assume the worst.
        let mut stale_cache = true;
        let mut state_known = false;
        let mut prepared: Vec<String> = Vec::new();
        let touched = self.state.touched_session.load(Ordering::Relaxed);
        let mut rolled_back = false;
        if failure.is_none() {
            // The guard's row would fail the check of deferred constraints.
            let disarm = if self.state.may_be_armed.load(Ordering::Relaxed) {
                format!("DELETE FROM pg_temp.{GUARD_TABLE}; ")
            } else {
                String::new()
            };
            let constraints = if check_constraints {
                format!("; {disarm}SET CONSTRAINTS ALL IMMEDIATE")
            } else {
                String::new()
            };
            // Only a test that may have left session state behind pays for
            // looking. DISCARD SEQUENCES for every test: its `currval` and
            // `lastval` must not answer in the next test on this connection,
            // and an INSERT into a serial or identity column calls nextval()
            // without the test's SQL saying so.
            let state_sql = if touched {
                format!(
                    "; DISCARD SEQUENCES; {}",
                    session_state_sql(!can_force_flush(&conn))
                )
            } else {
                String::from("; DISCARD SEQUENCES")
            };
            // With no app transaction left open, the rollback rides in the
            // same round trip; the server skips it if anything before it
            // fails, and the rollback below runs instead.
            let rollback = PgTransactionManager::get_transaction_depth(&conn) == 1;
            let end = if rollback { "; ROLLBACK" } else { "" };
            let check = format!("RELEASE SAVEPOINT dbt_auto{state_sql}{constraints}{end}");
            let (state, error) = session_state(&mut conn, check).await;
            // sqlx still counts the transaction (depth 1), with none open on
            // the server: the connection is parked that way, and the next
            // test's BEGIN knows it (see `SharedConn::open`).
            rolled_back = rollback && error.is_none();
            match (state, error) {
                (Some((ddl, names)), error) => {
                    // The same row released the session advisory locks.
                    state_known = true;
                    stale_cache = ddl != 0;
                    prepared = names;
                    if let Some(e) = error {
                        failure = constraint_failure(&e, &self.label);
                        healthy = failure.is_some();
                    }
                }
                (None, None) if !touched => {
                    // Nothing the test sent could have left session state.
                    state_known = true;
                    stale_cache = false;
                }
                (None, Some(e)) if !touched && constraint_failure(&e, &self.label).is_some() => {
                    state_known = true;
                    stale_cache = false;
                    failure = constraint_failure(&e, &self.label);
                }
                (None, Some(e)) => match sqlstate(&e).as_deref() {
                    Some("25P02") => {} // test left an aborted transaction; fine, it is rolled back
                    Some("25P01") | Some("3B001") => failure = Some(commit_message(&self.label)),
                    _ => healthy = false,
                },
                (None, None) => healthy = false,
            }
        }
        let rest = Rest {
            healthy,
            rolled_back,
            state_known,
            stale_cache,
            prepared,
            sequences: lock(&self.state.sequences).take(),
            failure,
        };
        if rest.nothing_left() {
            // The usual end: rolled back in the state query's round trip.
            return (Some(conn), None, log, true);
        }
        let (conn, failure) = self.finish_rest(conn, rest).await;
        (conn, failure, log, true)
    }

    /// The end of [`SharedConn::finish_inner`] when more than the state
    /// query's round trip is needed, boxed by a function of its own (see
    /// [`SharedConn::recover_dropped`]).
    fn finish_rest(
        &self,
        conn: PoolConnection<Postgres>,
        rest: Rest,
    ) -> BoxFuture<'_, (Option<PoolConnection<Postgres>>, Option<String>)> {
        Box::pin(self.finish_rest_inner(conn, rest))
    }

    async fn finish_rest_inner(
        &self,
        mut conn: PoolConnection<Postgres>,
        rest: Rest,
    ) -> (Option<PoolConnection<Postgres>>, Option<String>) {
        let Rest {
            mut healthy,
            rolled_back,
            state_known,
            stale_cache,
            mut prepared,
            sequences,
            failure,
        } = rest;
        // Awaited, not queued for sqlx's release ping: the connection is
        // then back in the pool before the next test asks for one (a test
        // that found none idle would open a new connection, which costs far
        // more than this round trip).
        while healthy && !rolled_back && PgTransactionManager::get_transaction_depth(&conn) > 0 {
            if PgTransactionManager::rollback(&mut conn).await.is_err() {
                healthy = false;
            }
        }
        if healthy && let Some(values) = sequences {
            healthy = super::statement::restore_sequences(&values, &mut conn).await;
        }
        if healthy && failure.is_none() && !state_known {
            // The state query did not run (an aborted transaction): ask now.
            match sqlx::query_scalar::<_, String>(
                "SELECT name::text FROM pg_prepared_statements WHERE from_sql",
            )
            .fetch_all(&mut *conn)
            .await
            {
                Ok(names) => prepared = names,
                Err(_) => healthy = false,
            }
        }
        if healthy && failure.is_none() && (!state_known || !prepared.is_empty()) {
            // Session state that survives ROLLBACK. (Usually nothing to do:
            // the state query already released the advisory locks.)
            let mut cleanup = String::from("SELECT pg_advisory_unlock_all(); DISCARD SEQUENCES");
            for name in &prepared {
                cleanup.push_str(&format!("; DEALLOCATE \"{}\"", name.replace('"', "\"\"")));
            }
            healthy = sqlx::raw_sql(sqlx::AssertSqlSafe(cleanup))
                .execute(&mut *conn)
                .await
                .is_ok();
        }
        if healthy && failure.is_none() && stale_cache {
            healthy = conn.clear_cached_statements().await.is_ok();
            if healthy && can_force_flush(&conn) {
                // So that the next test's count starts from zero.
                healthy = conn
                    .execute("SELECT pg_stat_force_next_flush()")
                    .await
                    .is_ok();
            }
        }
        if healthy && failure.is_none() {
            (Some(conn), None)
        } else {
            // Never hand a connection in an unknown state to the next test.
            let _ = conn.close().await;
            (None, failure)
        }
    }

    // What only some tests' ends await comes boxed from functions of its
    // own (see `SharedConn::recover_dropped`).

    /// Cancels or terminates the test's backends.
    fn signal(&self, signal: Signal) -> BoxFuture<'static, u64> {
        Box::pin(signal_backends(Backends::Tagged(self.tag.clone()), signal))
    }

    /// Waits [`TEARDOWN_GRACE`] for a task of the test to let go of its
    /// connection.
    fn wait_for_slot(&self) -> BoxFuture<'static, Result<OwnedMutexGuard<Slot>, ()>> {
        Box::pin(crate::clock::timeout(
            TEARDOWN_GRACE,
            self.slot.clone().lock_owned(),
        ))
    }

    /// Takes back a connection lent to `Acquire::begin`.
    fn reclaim_at_end<'a>(&'a self, slot: &'a mut Slot) -> BoxFuture<'a, Reclaim> {
        Box::pin(self.reclaim(slot, TEARDOWN_GRACE))
    }

    /// Reads what a guard dropped mid-statement left behind; closes the
    /// connection if that fails.
    fn drain_or_close(
        &self,
        mut conn: PoolConnection<Postgres>,
    ) -> BoxFuture<'_, Option<PoolConnection<Postgres>>> {
        Box::pin(async move {
            if self.drain(&mut conn).await.is_err() {
                let _ = conn.detach().close_hard().await;
                return None;
            }
            Some(conn)
        })
    }
}

impl Rest {
    /// Whether [`SharedConn::finish_rest`] would skip every step and hand
    /// the connection back: each clause is one of its steps not needed.
    fn nothing_left(&self) -> bool {
        self.healthy
            && self.failure.is_none()
            && self.rolled_back
            && self.sequences.is_none()
            && self.state_known
            && self.prepared.is_empty()
            && !self.stale_cache
    }
}

/// What [`SharedConn::finish_rest`] goes on from.
struct Rest {
    healthy: bool,
    rolled_back: bool,
    state_known: bool,
    stale_cache: bool,
    prepared: Vec<String>,
    sequences: Option<String>,
    failure: Option<String>,
}
