//! A statement of the test whose future was dropped before it ended:
//! waiting until the connection is ready again, and undoing it.

use std::sync::atomic::Ordering;

use sqlx::Connection;

use super::errors::{ended_by_database, out_of_sync, poisoned_error};
use super::state::State;
use super::{Dialect, SAVEPOINT, depth, exec, lock};

/// A statement of the test was dropped before it ended: wait until the
/// connection is ready again, and undo what it did if it ran outside an
/// app transaction (as if it had been cancelled). Inside an app transaction
/// it cannot be undone alone; the app's rollback undoes it.
pub(super) async fn recover_dropped<DB: Dialect>(
    state: &State,
    conn: &mut DB::Connection,
) -> sqlx::Result<()> {
    let Some(sql) = lock(&state.in_flight).take() else {
        return Ok(());
    };
    let mut outcome = "its caller dropped it".to_string();
    if let Err(e) = conn.ping().await {
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
