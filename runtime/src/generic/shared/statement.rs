//! Running one statement on the test's connection with production's
//! autocommit semantics: refused if the backend says so, else run after a
//! fresh `db_test_auto` savepoint and undone alone if it fails.

use std::sync::atomic::Ordering;

use futures_util::TryStreamExt;

use super::errors::{ended_by_database, is_broken, out_of_sync, poisoned_error};
use super::recover::recover_dropped;
use super::state::State;
use super::{Dialect, OwnedQuery, SAVEPOINT, Shared, depth, exec, lock};
use crate::generic::Step;

impl<DB: Dialect> Shared<DB> {
    /// Runs one statement of `Db` on the test's connection.
    pub(crate) async fn run(&self, query: OwnedQuery<DB>) -> sqlx::Result<Vec<Step<DB>>> {
        let mut guard = self.lock().await?;
        run_on::<DB>(&self.state, guard.conn_mut(), query).await
    }
}

/// Runs one statement on the test's connection (through `Db`, or on a
/// guard through `&mut DbConn`): refused if the backend says so, else run
/// with production's autocommit semantics (outside an app transaction, after
/// a fresh `db_test_auto` savepoint, and a failure undone alone), counted and
/// logged, and marked in flight while it runs.
pub(crate) async fn run_on<DB: Dialect>(
    state: &State,
    conn: &mut DB::Connection,
    query: OwnedQuery<DB>,
) -> sqlx::Result<Vec<Step<DB>>> {
    if let Some(e) = state.poisoned_error() {
        return Err(e);
    }
    recover_dropped::<DB>(state, conn).await?;
    let sql = query.sql.as_str().to_owned();
    if let Some(why) = (state.refuse)(&sql) {
        let msg = format!(
            "db-test: refusing to run `{}` in test `{}`: {why}",
            sql.trim(),
            state.label
        );
        state.poison(msg.clone());
        state.record(sql, Some("refused by db-test".into()));
        return Err(poisoned_error(&msg));
    }
    if !state.touched.load(Ordering::Relaxed) && (state.touches_session)(&sql) {
        state.touched.store(true, Ordering::Relaxed);
    }
    let autocommit = depth::<DB>(conn) == 1;
    // In flight from here: dropped during the savepoint's renewal or the
    // statement, the next user finds out where the connection stands.
    *lock(&state.in_flight) = Some(sql.clone());
    if autocommit && !state.fresh.load(Ordering::Relaxed) {
        let renewed = if DB::SAVEPOINT_REPLACES {
            // One round trip: the new savepoint replaces the old one.
            exec::<DB>(conn, &format!("SAVEPOINT {SAVEPOINT}")).await
        } else {
            match exec::<DB>(conn, &format!("RELEASE SAVEPOINT {SAVEPOINT}")).await {
                Ok(()) => exec::<DB>(conn, &format!("SAVEPOINT {SAVEPOINT}")).await,
                Err(e) => Err(e),
            }
        };
        if let Err(e) = renewed {
            let why = if is_broken(&e) {
                out_of_sync(&state.label, &e)
            } else {
                ended_by_database(&state.label, &e)
            };
            *lock(&state.in_flight) = None;
            state.poison(why.clone());
            return Err(poisoned_error(&why));
        }
        state.fresh.store(true, Ordering::Relaxed);
    }
    let result: sqlx::Result<Vec<Step<DB>>> = DB::conn_fetch_many(conn, query).try_collect().await;
    *lock(&state.in_flight) = None;
    let plain_read = autocommit && crate::sqltext::is_plain_read(&sql);
    state.record(sql, result.as_ref().err().map(|e| e.to_string()));
    match result {
        Ok(steps) => {
            // After a plain read `db_test_auto` still marks the current state.
            if autocommit && !plain_read {
                state.fresh.store(false, Ordering::Relaxed);
            }
            Ok(steps)
        }
        Err(e) if is_broken(&e) => {
            state.poison(out_of_sync(&state.label, &e));
            Err(e)
        }
        Err(e) => {
            // Undo the failed statement alone; `db_test_auto` stays and
            // still marks the state before it.
            if autocommit {
                match exec::<DB>(conn, &format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}")).await {
                    Ok(()) => state.fresh.store(true, Ordering::Relaxed),
                    Err(e2) => state.poison(ended_by_database(&state.label, &e2)),
                }
            }
            Err(e)
        }
    }
}
