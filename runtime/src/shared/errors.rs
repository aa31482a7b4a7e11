//! The messages and errors of transaction mode's failures: a COMMIT that
//! the guard refused, a deferred constraint that fails at the end, a
//! connection that broke, and the error every later use then gets.

use super::session::GUARD_CONSTRAINT;
use crate::error::{Error, ErrorKind};
use crate::hint::sqlstate;

pub(super) fn commit_message(label: &str) -> String {
    format!(
        "db-test: the transaction of test `{label}` was ended by a raw COMMIT or ROLLBACK sent by the \
         test or the app, or by sqlx's own `begin()` on a bare connection (`Connection::begin` or \
         `Acquire::begin` on `&mut *tx` or on an `acquire()` guard) dropped before it finished \
         (a timeout or `select!` around it): sqlx then rolls back the transaction around it, in \
         production too. Nothing of it was committed: db-test refuses any COMMIT of a test's \
         transaction, and rolled it back. (A transaction the test then began itself on a guard's \
         bare connection, with `BEGIN READ WRITE`, was out of db-test's reach.) Use `db.begin()` \
         and `tx.commit()` (they become savepoints under test, and a `db.begin()` dropped midway \
         undoes only its own savepoint) instead of sending COMMIT yourself, or \
         `isolation = \"database\"` for a test that must really commit."
    )
}

/// The error of a COMMIT that db-test's guard refused, explained.
pub(super) fn refused_commit(e: &sqlx::Error, label: &str) -> Option<String> {
    let db = e.as_database_error()?;
    (db.constraint() == Some(GUARD_CONSTRAINT)).then(|| {
        format!(
            "{} (The server reported: {e}. A `SET CONSTRAINTS ALL IMMEDIATE` sent on the bare \
             connection also trips this guard; send it through `Db` or a guard, or name the \
             constraints to check instead.)",
            commit_message(label)
        )
    })
}

/// A deferred constraint that fails when the test ends.
pub(super) fn constraint_failure(e: &sqlx::Error, label: &str) -> Option<String> {
    if let Some(msg) = refused_commit(e, label) {
        return Some(msg);
    }
    let code = sqlstate(e)?;
    code.starts_with("23").then(|| {
        let constraint = e
            .as_database_error()
            .and_then(|d| d.constraint().map(str::to_owned))
            .unwrap_or_default();
        format!(
            "db-test: deferred constraint `{constraint}` fails at the end of test `{label}`: {e}. \
             This would fail at COMMIT in production."
        )
    })
}

/// Why a test cannot go on after its connection broke or lost step.
pub(super) fn out_of_sync(label: &str, e: &sqlx::Error) -> String {
    format!(
        "db-test: the connection of test `{label}` broke or lost step with the server ({e}); \
         something sent on it was abandoned mid-way (a COPY, a stream, a statement whose \
         future was dropped). The test cannot go on; its transaction is rolled back."
    )
}

/// The error every later use of a test's connection gets once something
/// ended its transaction or broke it.
/// The error of a statement sent after the test's use of its connection
/// ended (`why`): it was not run, and the message says so before the cause.
pub(super) fn not_run_error(why: &str) -> sqlx::Error {
    poisoned_error(&not_run_message(why))
}

/// The message of [`not_run_error`], for every backend.
pub(crate) fn not_run_message(why: &str) -> String {
    format!(
        "db-test: statement not run: an earlier statement ended this test's use of its \
         connection. {why}"
    )
}

pub(super) fn poisoned_error(why: &str) -> sqlx::Error {
    let kind = if why.contains("COMMIT") || why.contains("refusing to run") {
        ErrorKind::TransactionEnded
    } else {
        ErrorKind::ConnectionBroken
    };
    Error::new(kind, why).into()
}
