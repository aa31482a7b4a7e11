//! The end of a test in transaction mode: constraints checked if asked,
//! everything rolled back, and the connection handed back (or closed).

use std::sync::atomic::Ordering;

use futures_util::TryStreamExt;
use sqlx::pool::PoolConnection;
use sqlx_core::transaction::TransactionManager;

use super::errors::is_broken;
use super::recover::recover_dropped;
use super::slot::Reclaim;
use super::state::unregister;
use super::{Dialect, Manager, OwnedQuery, Shared, depth, lock};
use crate::shared::{LoggedStatement, TEARDOWN_GRACE};

impl<DB: Dialect> Shared<DB> {
    /// Whether the test's transaction was found ended at its end (see
    /// [`Dialect::PROBE_TRANSACTION`]): what the test wrote before that was
    /// committed, into the shared working database on MySQL.
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub(crate) fn ended_out_of_sight(&self) -> bool {
        self.state.ended_out_of_sight.load(Ordering::Relaxed)
    }

    fn ended_out_of_sight_message(&self, e: &sqlx::Error) -> String {
        let label = &self.state.label;
        let what = "a COMMIT or ROLLBACK, or a statement that commits implicitly (DDL, `LOCK \
                    TABLES`, `SET autocommit`, `START TRANSACTION`, ...)";
        if DB::SHARED_WORKING_DATABASE {
            format!(
                "db-test: the transaction of test `{label}` was ended on the bare connection of \
                 a guard or transaction (`&mut **conn`, or a `&mut` connection parameter it was \
                 passed to), out of db-test's sight, by {what} ({e}). What the test wrote before \
                 it was COMMITTED into the shared working database: tests of this run that \
                 come later may see it, and db-test rebuilds that database from the template \
                 when the next test process starts (once no other process uses it). Send such \
                 statements through the test's `Db`/`TestDb` (db-test refuses them there), use \
                 `db.begin()` and `tx.commit()` (savepoints under test), or `isolation = \
                 \"database\"` for a test that must really commit."
            )
        } else {
            format!(
                "db-test: the transaction of test `{label}` was ended by a COMMIT or ROLLBACK \
                 sent on the bare connection of a guard (`&mut **conn`), out of db-test's sight ({e}). Its \
                 writes were not rolled back where they went; the connection is closed and no \
                 other test sees them. Use `db.begin()` and `tx.commit()` (savepoints under \
                 test), or `isolation = \"database\"` for a test that must really commit."
            )
        }
    }

    /// Ends the test: checks constraints if asked, rolls everything back,
    /// and leaves the connection in its slot for the next test (closed if
    /// it could not be made clean, see `Home::park`); returns a failure to
    /// report, and the last statements.
    pub(crate) async fn finish(
        &self,
        reason: &'static str,
        check_constraints: bool,
    ) -> (Option<String>, Vec<LoggedStatement>) {
        let (handback, failure, log) = self.finish_inner(reason, check_constraints).await;
        match handback {
            Handback::Park(conn) => self.home.park(conn),
            Handback::Begun(conn) => self.home.park_begun(conn),
            Handback::Restart(conn, restart) => {
                let state = self.state.clone();
                self.home.park_after(conn, move |mut conn| async move {
                    match crate::clock::timeout(
                        TEARDOWN_GRACE,
                        super::exec::<DB>(&mut conn, restart),
                    )
                    .await
                    {
                        Ok(Ok(())) if depth::<DB>(&conn) == 1 => Some(conn),
                        outcome => {
                            if let Ok(Err(e)) = &outcome {
                                found_committed::<DB>(&state, e).await;
                            }
                            conn.close_on_drop();
                            None
                        }
                    }
                })
            }
            // Back to the slot's pool when dropped.
            Handback::Release(reusable) => self.home.release(reusable),
        }
        (failure, log)
    }

    /// Notes that a task still holds the connection at the test's end. What
    /// it sent on the bare connection meanwhile cannot be checked: it may
    /// have committed, so the shared working database is treated as if it
    /// had (see [`Shared::ended_out_of_sight`]).
    fn note_held_at_end(&self) {
        self.state.held_at_end.store(true, Ordering::Relaxed);
        if self.state.out_of_sight.load(Ordering::Relaxed) {
            self.state.ended_out_of_sight.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a task (a guard from `db.acquire()` or `db.begin()`) or a
    /// transaction from `Acquire::begin` still held the test's connection
    /// when the test ended: its session is to be ended, so that nothing it
    /// sends later, a `COMMIT` on the bare connection included, commits.
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub(crate) fn was_held_at_end(&self) -> bool {
        self.state.held_at_end.load(Ordering::Relaxed)
    }

    /// [`Shared::finish`], and what becomes of the connection and its slot.
    async fn finish_inner(
        &self,
        reason: &'static str,
        check_constraints: bool,
    ) -> (Handback<DB>, Option<String>, Vec<LoggedStatement>) {
        self.over.store(true, Ordering::Release);
        let log = self.recent_statements();
        let mut slot =
            match crate::clock::timeout(TEARDOWN_GRACE, self.slot.clone().lock_owned()).await {
                Ok(slot) => slot,
                Err(()) => {
                    self.note_held_at_end();
                    let after = if DB::SHARED_WORKING_DATABASE {
                        "its session was ended under the task, and everything the test wrote \
                         was rolled back"
                    } else {
                        "its transaction is rolled back when the task lets go, and its \
                         database is used by no other test"
                    };
                    return (
                        Handback::Release(false),
                        Some(format!(
                            "db-test: a task still held the connection of test `{}` (a guard from \
                             `db.acquire()` or `db.begin()`) {TEARDOWN_GRACE:?} after the test \
                             ended; {after}. Stop such tasks before the test returns, or start \
                             them with `TestContext::spawn`, which aborts them.",
                            self.state.label
                        )),
                        log,
                    );
                }
            };
        slot.ended = Some(reason);
        if slot.lent && matches!(self.reclaim(&mut slot, TEARDOWN_GRACE).await, Reclaim::Busy) {
            // Still lent: `held_at_end` tells the backend to end the session.
            self.note_held_at_end();
            return (
                Handback::Release(false),
                Some(format!(
                    "db-test: test `{}` ended ({reason}) while a transaction from `Acquire::begin` \
                     on its `Db` was still open {TEARDOWN_GRACE:?} later; its session is ended and \
                     everything the test wrote is rolled back. Commit or drop the transaction \
                     before the test returns.",
                    self.state.label
                )),
                log,
            );
        }
        // A refused statement (a COMMIT, implicit-commit DDL, ...) or a
        // connection that broke fails the test, even if the test swallowed
        // the error: as on PostgreSQL.
        let poisoned = lock(&self.state.poisoned).clone();
        let Some(mut conn) = slot.conn.take() else {
            return (Handback::Release(true), poisoned, log);
        };
        unregister(self.conn_addr, &self.state);
        if self.state.abandon.load(Ordering::Relaxed) {
            // Interrupted, its database going with it: closed as it is.
            conn.close_on_drop();
            drop(conn);
            return (Handback::Release(true), poisoned, log);
        }
        let mut failure = poisoned;
        // A statement still running (the test timed out in it) gets a
        // grace period; then the connection is dropped instead of reused.
        let mut healthy = !self.state.broken.load(Ordering::Relaxed)
            && matches!(
                crate::clock::timeout(
                    TEARDOWN_GRACE,
                    recover_dropped::<DB>(&self.state, &mut conn)
                )
                .await,
                Ok(Ok(()))
            );
        if healthy
            && check_constraints
            && lock(&self.state.poisoned).is_none()
            && let Some(check) = DB::CHECK_CONSTRAINTS
        {
            match DB::conn_fetch_many(&mut conn, OwnedQuery::<DB>::raw(check))
                .try_collect::<Vec<_>>()
                .await
            {
                Ok(steps) => {
                    let rows = steps.iter().filter(|s| s.is_right()).count();
                    if rows > 0 {
                        failure = Some(format!(
                            "db-test: {rows} constraint violation(s) at the end of test `{}` \
                             (`{check}` found them): this would fail at COMMIT in production",
                            self.state.label
                        ));
                    }
                }
                Err(e) => {
                    failure = Some(format!(
                        "db-test: cannot check the constraints of test `{}`: {e}",
                        self.state.label
                    ))
                }
            }
        }
        // The test already fails because the database ended its transaction
        // (a deadlock): that is the reason to report. Something sent on a
        // bare connection after it may have committed, though, so the
        // working database is still rebuilt (see `ended_out_of_sight`).
        let by_database = self.state.ended_by_database.load(Ordering::Relaxed);
        let out_of_sight = self.state.out_of_sight.load(Ordering::Relaxed);
        if by_database && out_of_sight {
            self.state.ended_out_of_sight.store(true, Ordering::Relaxed);
        }
        let touched = self.state.touched.load(Ordering::Relaxed);
        if let Some(restart) = DB::restart_test()
            && healthy
            && !touched
            && !by_database
            && depth::<DB>(&conn) == 1
        {
            // The usual end: nothing to check before the rollback, and a
            // connection the next test can have. Rolled back, with the next
            // test's transaction opened, after the test (see `RESTART_TEST`).
            if !out_of_sight {
                return (Handback::Restart(conn, restart), failure, log);
            }
            // The connection went out of sight (a guard, an app
            // transaction): the probe that the test's transaction is still
            // open, then the same, in one round trip that the verdict waits
            // for. A failed probe runs nothing after it.
            if let Some(probe) = DB::PROBE_TRANSACTION {
                let probed = super::exec::<DB>(&mut conn, &format!("{probe}; {restart}")).await;
                match probed {
                    Ok(()) if depth::<DB>(&conn) == 1 => {
                        return (Handback::Begun(conn), failure, log);
                    }
                    Ok(()) => {}
                    Err(e) => {
                        if !is_broken(&e) && DB::transaction_gone(&e) {
                            // Nothing to roll back: something sent on the
                            // bare connection of a guard ended the test's
                            // transaction.
                            self.state.ended_out_of_sight.store(true, Ordering::Relaxed);
                            let why = self.ended_out_of_sight_message(&e);
                            failure = Some(match failure {
                                Some(other) => format!("{why}\n(also: {other})"),
                                None => why,
                            });
                        }
                    }
                }
                conn.close_on_drop();
                drop(conn);
                return (Handback::Release(true), failure, log);
            }
        }
        while healthy && depth::<DB>(&conn) > 0 {
            let outer = depth::<DB>(&conn) == 1;
            // Where the final ROLLBACK would succeed outside a transaction
            // (MySQL), check first that the test's is still open.
            let ended = if outer && out_of_sight && !by_database {
                // (SQLite has no probe: its ROLLBACK fails by itself.)
                match DB::PROBE_TRANSACTION {
                    Some(probe) => super::exec::<DB>(&mut conn, probe).await.err(),
                    None => None,
                }
            } else {
                None
            };
            let ended = match ended {
                Some(e) => Some(e),
                None => Manager::<DB>::rollback(&mut conn).await.err(),
            };
            if let Some(e) = ended {
                healthy = false;
                // An app savepoint that cannot be rolled back: is the test's
                // transaction itself gone (a deadlock on the bare connection
                // of a guard, say)?
                let gone = if by_database {
                    None
                } else if outer {
                    Some(e)
                } else if is_broken(&e) {
                    None
                } else {
                    super::check_open::<DB>(&mut conn).await.err()
                };
                if let Some(e) = gone
                    && !is_broken(&e)
                    && DB::transaction_gone(&e)
                {
                    // Nothing to roll back: something sent on the bare
                    // connection of a guard ended the test's transaction.
                    self.state.ended_out_of_sight.store(true, Ordering::Relaxed);
                    let why = self.ended_out_of_sight_message(&e);
                    failure = Some(match failure {
                        Some(other) => format!("{why}\n(also: {other})"),
                        None => why,
                    });
                }
            }
        }
        if healthy && !touched {
            (Handback::Park(conn), failure, log)
        } else {
            if healthy
                && touched
                && let Some(release) = DB::RELEASE_SESSION_LOCKS
            {
                let _ = crate::clock::timeout(
                    TEARDOWN_GRACE,
                    DB::conn_fetch_many(&mut conn, OwnedQuery::<DB>::raw(release))
                        .try_collect::<Vec<_>>(),
                )
                .await;
            }
            // Never hand a connection in an unknown state (or with session
            // state the test set) to the next test.
            conn.close_on_drop();
            drop(conn);
            (Handback::Release(true), failure, log)
        }
    }
}

/// The rollback after a test that seemed to end as usual failed: if it
/// failed because the test's transaction was no longer open (the probe at
/// the head of the backend's `restart_test`), a statement db-test let
/// through committed it. The test has passed already: said loudly, and
/// the backend told (MySQL rebuilds the working database). Boxed: rare.
fn found_committed<'a, DB: Dialect>(
    state: &'a super::state::State,
    e: &'a sqlx::Error,
) -> futures_util::future::BoxFuture<'a, ()> {
    Box::pin(async move {
        if is_broken(e) || !DB::transaction_gone(e) || DB::PROBE_TRANSACTION.is_none() {
            return;
        }
        let statements = lock(&state.log)
            .iter()
            .map(|s| format!("\n  {}", crate::sqltext::excerpt(&s.sql, 300)))
            .collect::<String>();
        eprintln!(
            "db-test: after test `{}` ended, its transaction was found no longer open ({e}): a \
             statement it ran committed it without db-test recognising it, so what the test \
             wrote was COMMITTED{}. This is a gap in db-test's reading of statements: please \
             report it with the test's last statements:{statements}",
            state.label,
            if DB::SHARED_WORKING_DATABASE {
                " into the shared working database (db-test rebuilds it from the template when \
                 the next test process starts; tests of this run that come later may see it)"
            } else {
                ""
            }
        );
        let canceller = lock(&state.canceller).clone();
        if let Some(canceller) = canceller {
            canceller.committed().await;
        }
    })
}

/// What becomes of the test's connection and its slot at the test's end.
enum Handback<DB: Dialect> {
    /// Rolled back and healthy: parked in its slot for the next test.
    Park(PoolConnection<DB>),
    /// Still in the test's transaction: rolled back, with the next test's
    /// transaction opened, by the given SQL (`RESTART_TEST`) after the
    /// test, then parked.
    Restart(PoolConnection<DB>, &'static str),
    /// With the next test's transaction opened on it already (see
    /// `RESTART_TEST`): parked in its slot.
    Begun(PoolConnection<DB>),
    /// Back to the slot's pool (closed if it was marked so), or still out
    /// (`false`: the slot is closed, see `Home::give_back`).
    Release(bool),
}
