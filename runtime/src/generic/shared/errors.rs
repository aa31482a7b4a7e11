//! The messages and errors of a test's connection that something refused
//! or broke, and which errors leave a connection unusable.

use crate::error::{Error, ErrorKind};

pub(super) fn poisoned_error(why: &str) -> sqlx::Error {
    let kind = if why.contains("refusing to run") || why.contains("ended the test's transaction") {
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

pub(super) fn ended_by_database(label: &str, e: &sqlx::Error) -> String {
    format!(
        "db-test: the database ended the test's transaction in test `{label}` ({e}); for \
         example a constraint with `ON CONFLICT ROLLBACK`, or a full disk. What the test \
         wrote before is gone; the test cannot go on."
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
