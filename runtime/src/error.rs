//! db-test's own failures, as a type.

use std::fmt;

/// What kind of failure of db-test's own an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The test's connection stayed busy (held by a guard or another task)
    /// past the checkout timeout.
    CheckoutTimeout,
    /// The test is over: a task it spawned used its `Db` afterwards.
    TestOver,
    /// A statement that would end the test's transaction was refused, or the
    /// transaction was ended anyway (a COMMIT/ROLLBACK the server refused or
    /// ran): nothing was committed, and the test fails.
    TransactionEnded,
    /// The test's connection broke, or could not be brought back to a known
    /// state; the test cannot go on.
    ConnectionBroken,
    /// Something db-test does not support in this mode.
    Unsupported,
}

/// A failure of db-test's own (not one the database reported).
///
/// It reaches code that uses sqlx as `sqlx::Error::Configuration`, whose
/// source is this type; [`Error::of`] finds it:
///
/// ```
/// use db_test::{Error, ErrorKind};
///
/// fn is_checkout_timeout(e: &sqlx::Error) -> bool {
///     Error::of(e).is_some_and(|e| e.kind() == ErrorKind::CheckoutTimeout)
/// }
/// # assert!(!is_checkout_timeout(&sqlx::Error::RowNotFound));
/// ```
///
/// Errors the database reports stay `sqlx::Error::Database`, with the
/// driver's own error inside (a lock-timeout or deadlock explanation added
/// by db-test keeps `PgDatabaseError` reachable through `downcast_ref`).
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The db-test error inside a `sqlx::Error`, if it is one.
    pub fn of(err: &sqlx::Error) -> Option<&Error> {
        match err {
            sqlx::Error::Configuration(source) => source.downcast_ref::<Error>(),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<Error> for sqlx::Error {
    fn from(e: Error) -> Self {
        sqlx::Error::Configuration(Box::new(e))
    }
}
