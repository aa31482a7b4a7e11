//! The test's one connection, shared by every clone of the test's `Db`.
//!
//! The connection sits inside the test's transaction, which sqlx itself opened
//! (so sqlx's transaction depth is 1 and any nested `begin()` becomes a
//! `SAVEPOINT`). Statements issued outside an app transaction are guarded by
//! the savepoint `dbt_auto`, so a failing statement can be undone without
//! aborting the test's transaction: production autocommit semantics.
//!
//! Where each part lives:
//!
//! - `conn`: [`SharedConn`] itself, how it opens the test's transaction, and
//!   what it reports (label, checkout timeout, statements run);
//! - `state`: what the connection carries besides itself (`ConnState`), the
//!   statement log, and the registry that finds a connection's state;
//! - `slot`: the lock on the connection ([`SlotGuard`]) and what taking it
//!   repairs first;
//! - `recover`: reading the reply of a statement whose future was dropped,
//!   cancelling it if it keeps running;
//! - `statement`: running one statement under `dbt_auto` (refusing what
//!   would end the test's transaction) and renewing that savepoint;
//! - `session`: the session a test connection runs in (the commit guard,
//!   catalog-write counting) and reading its state at the end;
//! - `finish`: the end of the test, leaving the session as a new one;
//! - `errors`: the messages and errors of a refused COMMIT, a failed
//!   deferred constraint, a broken connection.

mod conn;
pub(crate) mod detached;
mod errors;
#[cfg_attr(not(any(feature = "mysql", feature = "sqlite")), allow(unused_imports))]
pub(crate) use errors::not_run_message;
mod finish;
mod recover;
mod session;
mod slot;
mod state;
mod statement;

use std::time::Duration;

pub(crate) use conn::SharedConn;
pub(crate) use session::{SchemaFacts, prepare_session};
pub(crate) use slot::SlotGuard;
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub(crate) use state::STATEMENT_LOG_LEN;
pub(crate) use state::{LoggedStatement, lock, state_of};
pub(crate) use statement::run_on_guard;

/// How long teardown waits for a task that still holds the test's
/// connection, and for a cancelled statement to stop.
pub(crate) const TEARDOWN_GRACE: Duration = Duration::from_secs(5);

/// What a failure report says of a statement that had not ended when the
/// test did.
pub(crate) const STILL_RUNNING: &str =
    "still running when the test ended (or dropped by its caller before its reply was read)";
