//! A statement of the test whose future was dropped before it ended:
//! waiting until the connection is ready again (stopping it if it goes on).

use sqlx::Connection;

use super::errors::{ended_by_database, out_of_sync, poisoned_error};
use super::state::State;
use super::{Dialect, check_open, lock};

/// How long a dropped statement may go on before it is stopped.
pub(super) const CANCEL_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

/// How long a stopped statement may take to answer.
const STOPPED_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// A statement of the test was dropped before it ended: wait until the
/// connection is ready again, stopping it if it runs on for
/// [`CANCEL_AFTER`]. Stopped (or failed), the server undoes it alone;
/// completed, its effects stay, as in production (where it would have
/// committed).
pub(super) async fn recover_dropped<DB: Dialect>(
    state: &State,
    conn: &mut DB::Connection,
) -> sqlx::Result<()> {
    // Cleared only once the connection is ready: dropped again meanwhile
    // (a test that timed out while waiting here), the next user waits too.
    let Some(sql) = lock(&state.in_flight).clone() else {
        return Ok(());
    };
    let mut outcome = "its caller dropped it".to_string();
    let ready = {
        let ping = conn.ping();
        tokio::pin!(ping);
        match crate::clock::timeout(CANCEL_AFTER, &mut ping).await {
            Ok(ready) => ready,
            Err(()) => {
                // Still running: stop it, as PostgreSQL's cancel request does.
                let canceller = lock(&state.canceller)
                    .clone()
                    .filter(|c| c.can_cancel(&sql));
                if let Some(canceller) = &canceller {
                    canceller.cancel().await;
                    outcome.push_str(", and db-test stopped it");
                }
                // Once stopped, its reply comes at once; a connection that
                // still answers nothing is out of step (sqlx's MySQL
                // connection, dropped partway through a result's column
                // definitions on a guard, waits for a packet that never
                // comes): the test fails now, saying so, rather than at its
                // timeout.
                let ready = match &canceller {
                    Some(_) => crate::clock::timeout(STOPPED_WITHIN, &mut ping)
                        .await
                        .unwrap_or_else(|()| {
                            Err(sqlx::Error::Protocol(format!(
                                "no reply {STOPPED_WITHIN:?} after the statement was stopped: \
                                 the connection is out of step with the server (a read \
                                 dropped partway on a guard or in an app transaction, \
                                 whose reply sqlx cannot skip on MySQL/MariaDB; a \
                                 statement sent through `Db` does not have this)"
                            )))
                        }),
                    None => ping.await,
                };
                if let Some(canceller) = canceller {
                    canceller.done();
                }
                ready
            }
        }
    };
    // The dropped statement's own error (its stop, a constraint, a
    // deadlock) comes back first, then maybe the errors of what sqlx queued
    // behind it (the `ROLLBACK TO` of an app transaction dropped with it):
    // the connection is fine, and ready once it answers again.
    let mut ready = ready;
    let mut first_error = None;
    for _ in 0..4 {
        match ready {
            Err(e) if e.as_database_error().is_some() => {
                first_error.get_or_insert(e);
                ready = conn.ping().await;
            }
            _ => break,
        }
    }
    // Ready, but maybe reading the replies of other commands as its own.
    if ready.is_ok()
        && let Some(check) = DB::in_step(conn)
    {
        ready = check.await;
    }
    let failed = first_error.is_some();
    *lock(&state.in_flight) = None;
    if let Err(e) = ready {
        state
            .broken
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let why = out_of_sync(&state.label, &e);
        state.poison(why.clone());
        state.record(sql, Some(outcome));
        return Err(poisoned_error(&why));
    }
    // Where the library answers without a statement (SQLite), the
    // transaction is checked after every dropped statement: sqlx's SQLite
    // worker throws away the reply of a statement whose caller went away,
    // so its error (an `INSERT OR ROLLBACK`, a trigger's `RAISE(ROLLBACK)`
    // that ended the test's transaction) never comes back here.
    let free_check = DB::in_transaction(conn).is_some();
    if failed {
        // It failed or was stopped: the server undid it alone (see
        // `statement`), unless its error ended the transaction.
        outcome.push_str("; it failed, and the server undid it");
    }
    if (failed || free_check)
        && let Err(e) = check_open::<DB>(conn).await
    {
        let failure = match &first_error {
            Some(first) => format!("`{}`: {first}", sql.trim()),
            None if failed => format!("`{}` failed", sql.trim()),
            // Its error was not reported (see `free_check`).
            None => format!(
                "`{}`, dropped by its caller, failed in a way that ended the transaction",
                sql.trim()
            ),
        };
        let why = ended_by_database(&state.label, &failure, &e);
        state.ended_by_database(why.clone());
        state.record(sql, Some(outcome));
        return Err(poisoned_error(&why));
    }
    state.record(sql, Some(outcome));
    Ok(())
}
