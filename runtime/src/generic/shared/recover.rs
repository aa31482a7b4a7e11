//! A statement of the test whose future was dropped before it ended:
//! waiting until the connection is ready again, and undoing it.

use std::sync::atomic::Ordering;

use sqlx::Connection;

use super::errors::{ended_by_database, out_of_sync, poisoned_error};
use super::state::State;
use super::{Dialect, SAVEPOINT, depth, exec, lock};

/// How long a dropped statement may go on before it is stopped.
const CANCEL_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

/// A statement of the test was dropped before it ended: wait until the
/// connection is ready again, and undo what it did if it ran outside an
/// app transaction (as if it had been cancelled). Inside an app transaction
/// it cannot be undone alone; the app's rollback undoes it.
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
                let ready = ping.await;
                if let Some(canceller) = canceller {
                    canceller.done();
                }
                ready
            }
        }
    };
    // The dropped statement's own error (its stop, a constraint) comes back
    // first: the connection is fine, and ready once it answers again.
    let ready = match ready {
        Err(e) if e.as_database_error().is_some() => conn.ping().await,
        ready => ready,
    };
    *lock(&state.in_flight) = None;
    if let Err(e) = ready {
        let why = out_of_sync(&state.label, &e);
        state.poison(why.clone());
        state.record(sql, Some(outcome));
        return Err(poisoned_error(&why));
    }
    if depth::<DB>(conn) == 1 {
        // Dropped between the release of `db_test_auto` and its renewal,
        // there is no savepoint to go back to: set it where things stand.
        let undone = match exec::<DB>(conn, &format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}")).await {
            Ok(()) => Ok(()),
            Err(_) => exec::<DB>(conn, &format!("SAVEPOINT {SAVEPOINT}")).await,
        };
        if let Err(e) = undone {
            let why = ended_by_database(&state.label, &e);
            state.poison(why.clone());
            state.record(sql, Some(outcome));
            return Err(poisoned_error(&why));
        }
        state.fresh.store(true, Ordering::Relaxed);
        outcome.push_str("; it was undone");
    }
    state.record(sql, Some(outcome));
    Ok(())
}
