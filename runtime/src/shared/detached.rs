//! An app transaction's `BEGIN` (a savepoint inside the test's
//! transaction), and its `COMMIT`/`ROLLBACK` on MySQL and SQLite, run to
//! their end in a task of their own on the shared runtime, so that dropping
//! the caller's future cannot cut them short.
//!
//! sqlx's `begin()` is not safe to drop inside a transaction: cut short
//! after sending its `SAVEPOINT`, it rolls back at the depth it started
//! from, which under a test is the test's own transaction (a `ROLLBACK`, or
//! a `ROLLBACK TO` the enclosing savepoint), not the savepoint it was
//! creating. In production the app's first `begin()` starts at depth 0,
//! where that rollback does nothing; under a test every `begin()` is nested,
//! so a `tokio::time::timeout`, a `select!` or a tower `TimeoutLayer` around
//! a handler that begins a transaction would end the test. Here the caller
//! waits for the task; a caller that is gone leaves the task to undo the
//! savepoint it made, and the connection goes back to the test's pool of
//! one, where the next user of the test's connection reclaims it (as after
//! a lent connection).

use sqlx::pool::PoolConnection;
use sqlx::{Database, Transaction};
use sqlx_core::transaction::TransactionManager;
use tokio::sync::oneshot;

type Manager<DB> = <DB as Database>::TransactionManager;

/// sqlx's `begin()` on the test's connection, taken out of its slot (which
/// must say it is lent while this runs). `None` if the task was lost (it
/// panicked): the connection is gone with it.
pub(crate) async fn begin<DB: Database>(
    mut conn: PoolConnection<DB>,
) -> Option<(PoolConnection<DB>, sqlx::Result<()>)> {
    let (done, result) = oneshot::channel();
    crate::run::shared_runtime().spawn(async move {
        let begun = Manager::<DB>::begin(&mut conn, None).await;
        let savepoint = begun.is_ok();
        // Not received (the caller was dropped, before or after this
        // send): dropped, which undoes the savepoint.
        let _ = done.send((
            Begun {
                conn: Some(conn),
                savepoint,
            },
            begun,
        ));
    });
    let (mut begun, result) = result.await.ok()?;
    begun.conn.take().map(|conn| (conn, result))
}

/// sqlx's `commit()` (`commit`) or `rollback()` of the app transaction
/// open on the test's connection, taken out of its slot (lent meanwhile),
/// run to its end as [`begin`] is: cut short, sqlx's MySQL connection would
/// keep a depth one too high (its savepoint released on the server), and
/// SQLite's worker would swallow the next rollback of an unrelated
/// transaction. A caller that is gone leaves the connection at the depth
/// below the transaction's (rolled back if the statement failed), back in
/// the test's pool of one. `None` if the task was lost.
#[cfg_attr(not(any(feature = "mysql", feature = "sqlite")), allow(dead_code))]
pub(crate) async fn end<DB: Database>(
    mut conn: PoolConnection<DB>,
    commit: bool,
) -> Option<(PoolConnection<DB>, sqlx::Result<()>)> {
    let (done, result) = oneshot::channel();
    crate::run::shared_runtime().spawn(async move {
        let depth = Manager::<DB>::get_transaction_depth(&conn);
        let ended = if commit {
            Manager::<DB>::commit(&mut conn).await
        } else {
            Manager::<DB>::rollback(&mut conn).await
        };
        if let Err((mut conn, ended)) = done.send((conn, ended)) {
            // Nobody takes the connection back: it must not stay inside
            // the transaction that was to end.
            if ended.is_err() && Manager::<DB>::get_transaction_depth(&conn) == depth {
                let _ = Manager::<DB>::rollback(&mut conn).await;
            }
        }
    });
    result.await.ok()
}

/// The connection a detached `begin()` ran on, until its caller takes it:
/// dropped untaken, its new savepoint is rolled back (queued, as sqlx's
/// `Transaction` does when dropped, and sent when the connection goes back
/// to the test's pool of one).
struct Begun<DB: Database> {
    conn: Option<PoolConnection<DB>>,
    savepoint: bool,
}

impl<DB: Database> Drop for Begun<DB> {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take()
            && self.savepoint
        {
            Manager::<DB>::start_rollback(&mut conn);
        }
    }
}

/// `Transaction::begin` on the test's connection, lent to it: a caller that
/// is gone drops the transaction, which rolls back its savepoint.
pub(crate) async fn transaction<DB: Database>(
    conn: PoolConnection<DB>,
) -> sqlx::Result<Transaction<'static, DB>> {
    let (done, result) = oneshot::channel();
    crate::run::shared_runtime().spawn(async move {
        // A transaction nobody receives is dropped here, and rolled back.
        let _ = done.send(Transaction::begin(conn, None).await);
    });
    result
        .await
        .unwrap_or_else(|_| Err(sqlx::Error::WorkerCrashed))
}
