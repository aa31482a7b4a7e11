//! The messages and errors of a test's connection that something refused
//! or broke, and which errors leave a connection unusable.

use crate::error::{Error, ErrorKind};

pub(super) fn poisoned_error(why: &str) -> sqlx::Error {
    let kind = if why.contains("refusing to run") || why.contains("ended the transaction of test") {
        ErrorKind::TransactionEnded
    } else {
        ErrorKind::ConnectionBroken
    };
    Error::new(kind, why).into()
}

pub(super) fn out_of_sync(label: &str, e: &sqlx::Error) -> String {
    format!(
        "db-test: the connection of test `{label}` broke ({e}); the test cannot go on, and its \
         transaction is rolled back."
    )
}

/// `failure`: what failed; `check`: how db-test found the transaction gone.
pub(super) fn ended_by_database(
    label: &str,
    failure: &dyn std::fmt::Display,
    check: &sqlx::Error,
) -> String {
    format!(
        "db-test: the database ended the transaction of test `{label}` when a statement \
         failed ({failure}; then: {check}). A deadlock does on MySQL (InnoDB rolls back the \
         whole transaction, app savepoints and all), as does a constraint with `ON CONFLICT \
         ROLLBACK` on SQLite, or a full disk. What the test wrote before is gone, and what it \
         wrote after would be committed, so the test cannot go on. Transaction-mode tests \
         share one working database on MySQL: a test that deadlocks with parallel tests, or \
         retries after a deadlock, needs `isolation = \"database\"`."
    )
}

/// A statement whose inside db-test cannot read (a `CALL`, an `EXECUTE`)
/// ended the test's transaction.
pub(super) fn committed_unseen(label: &str, check: &sqlx::Error) -> String {
    format!(
        "db-test: a statement of test `{label}` ended the transaction of test `{label}` where \
         db-test cannot read it: a procedure it CALLed, or prepared text it EXECUTEd, ran a \
         COMMIT or a statement that commits ({check}). What the test wrote before it was \
         COMMITTED into the shared working database: tests of this run that come later may \
         see it, and db-test rebuilds that database from the template when the next test \
         process starts. A test that runs such a statement needs `isolation = \"database\"`."
    )
}

/// Something sent on the bare connection of a guard from `acquire()` ended
/// the test's transaction; found at the next statement through `Db`.
pub(super) fn committed_on_a_guard(label: &str, check: &sqlx::Error, shared: bool) -> String {
    let what = if shared {
        "What the test wrote before it was COMMITTED into the shared working database: tests \
         of this run that come later may see it, and db-test rebuilds that database from the \
         template when the next test process starts."
    } else {
        "What the test wrote before it was committed on the test's own connection."
    };
    format!(
        "db-test: the transaction of test `{label}` was ended on the bare connection of a \
         connection taken with `acquire()` (`Db::acquire`, or `sqlx::Acquire::acquire(&db)`, as \
         sqlx's `Migrator::run(&db)` does), out of db-test's sight, by a COMMIT or ROLLBACK or a \
         statement that commits implicitly (on MySQL DDL, such as the `CREATE TABLE IF NOT \
         EXISTS _sqlx_migrations` of an app's `sqlx::migrate!().run(&db)`) ({check}). {what} \
         Nothing more of the test runs: every later statement would commit on its own. Under \
         test, db-test has run the migrations already (skip the app's own run of them), send \
         such statements through the test's `Db`/`TestDb` (db-test refuses them there), or use \
         `isolation = \"database\"` for a test that must really commit."
    )
}

/// Whether an error leaves the connection unusable (rather than being a
/// statement's failure that the server reported).
pub(super) fn is_broken(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
    )
}

/// Whether `e` says the connection's session is gone: broken, or ended by
/// the server (see [`Dialect::session_ended`](super::Dialect::session_ended)).
pub(super) fn session_gone<DB: super::Dialect>(e: &sqlx::Error) -> bool {
    is_broken(e) || DB::session_ended(e)
}

/// Whether `e` proves that a statement never reached the server: writing it
/// failed because the server had closed the connection already (`EPIPE`).
/// Any other sign of a lost session may come after the server ran part of
/// it, or all of it (a `COMMIT` inside a procedure, a write to a table that
/// cannot roll back), or from the statement itself (`KILL CONNECTION_ID()`).
pub(super) fn never_sent(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe)
}
