//! The test's one connection, in its transaction, shared by every clone of
//! the test's [`Db`](super::Db): the backend-generic part of transaction mode.
//!
//! Layout of the test's transaction (sqlx's transaction depth in brackets):
//! `BEGIN` (depth 1) and db-test's savepoint `db_test_auto` in one round
//! trip; no savepoint per statement (MySQL and SQLite undo a failed
//! statement alone: see `statement`). An app transaction is a sqlx
//! savepoint on top (depth 2 and up).
//! At the end, everything is rolled back and the connection goes back to
//! its pool as it came.
//!
//! Where each part lives:
//!
//! - `conn`: [`Shared`] itself, how it opens the test's transaction, and
//!   what it reports (label, checkout timeout, statements run);
//! - `state`: what the connection carries besides itself (`State`) and the
//!   registry that finds it from the bare connection behind a guard;
//! - `slot`: the lock on the connection ([`SlotGuard`]);
//! - `recover`: a statement whose future was dropped before it ended;
//! - `statement`: running one statement with production's autocommit semantics;
//! - `finish`: the end of the test;
//! - `errors`: the messages and errors of a refused or broken connection;
//! - `setup`: what a backend's setup builds on: [`TestState`], fixtures,
//!   [`TxResource`], opening the test's transaction.

mod conn;
mod errors;
mod finish;
mod recover;
mod setup;
mod slot;
mod state;
mod statement;

use std::sync::Mutex;

use futures_util::TryStreamExt;
use sqlx_core::transaction::TransactionManager;

use super::{Dialect, OwnedQuery};

pub(crate) use conn::Shared;
pub(crate) use setup::{TestState, TxResource, apply_fixtures};
pub(crate) use slot::SlotGuard;
pub(crate) use state::{Canceller, state_of};
pub(crate) use statement::run_on;

type Manager<DB> = <DB as sqlx::Database>::TransactionManager;

fn depth<DB: Dialect>(conn: &DB::Connection) -> usize {
    Manager::<DB>::get_transaction_depth(conn)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs db-test's own SQL on a connection, to its end.
pub(crate) async fn exec<DB: Dialect>(conn: &mut DB::Connection, sql: &str) -> sqlx::Result<()> {
    DB::conn_fetch_many(conn, OwnedQuery::<DB>::raw(sql))
        .try_collect::<Vec<_>>()
        .await
        .map(|_| ())
}

/// Whether the test's transaction is still open, asked after something
/// failed: the library's answer ([`Dialect::in_transaction`]) or the probe
/// ([`Dialect::PROBE_TRANSACTION`]), at any depth; `Ok` when neither can
/// tell.
pub(super) async fn check_open<DB: Dialect>(conn: &mut DB::Connection) -> sqlx::Result<()> {
    if let Some(open) = DB::in_transaction(conn) {
        return if open.await? {
            Ok(())
        } else {
            Err(crate::error::Error::new(
                crate::error::ErrorKind::TransactionEnded,
                "no transaction is open on the connection any more",
            )
            .into())
        };
    }
    match DB::PROBE_TRANSACTION {
        Some(probe) => exec::<DB>(conn, probe).await,
        None => Ok(()),
    }
}
