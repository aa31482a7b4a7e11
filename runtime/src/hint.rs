//! Errors that deserve an explanation in a test suite.

use std::borrow::Cow;
use std::fmt;

use sqlx::error::{DatabaseError, ErrorKind};

/// A lock timeout (55P03) or deadlock (40P01), with what most likely caused
/// it in a test suite. The SQLSTATE, constraint and table are the server's.
struct Explained {
    inner: Box<dyn DatabaseError>,
    message: String,
}

impl fmt::Debug for Explained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Explained")
            .field("inner", &self.inner)
            .field("message", &self.message)
            .finish()
    }
}

impl fmt::Display for Explained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Explained {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.as_error().source()
    }
}

impl DatabaseError for Explained {
    fn message(&self) -> &str {
        &self.message
    }
    fn code(&self) -> Option<Cow<'_, str>> {
        self.inner.code()
    }
    // The driver's own error, so that `downcast_ref::<PgDatabaseError>()`
    // still finds it; the explanation is in `message()` and `Display`.
    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.inner.as_error()
    }
    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self.inner.as_error_mut()
    }
    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self.inner.into_error()
    }
    fn constraint(&self) -> Option<&str> {
        self.inner.constraint()
    }
    fn table(&self) -> Option<&str> {
        self.inner.table()
    }
    fn kind(&self) -> ErrorKind {
        self.inner.kind()
    }
}

/// Adds the likely cause to a lock timeout or a deadlock, and the way out
/// to an isolation level the test's transaction cannot take.
pub(crate) fn explain_error(err: sqlx::Error) -> sqlx::Error {
    let sqlx::Error::Database(inner) = err else {
        return err;
    };
    let hint = match inner.code().as_deref() {
        Some("55P03") => {
            "db-test: the statement waited for a lock until lock_timeout (DB_TEST_LOCK_TIMEOUT). \
             Likely cause: another test holds a conflicting row lock (the same unique key or row, \
             in its own uncommitted transaction). Use unique test data, or `isolation = \"database\"`."
        }
        Some("40P01") => {
            "db-test: a real deadlock (40P01): two transactions each waited for a lock the other \
             held. If they are two tests, they touch the same rows in opposite orders; use unique \
             test data, or `isolation = \"database\"`."
        }
        // `SET TRANSACTION ISOLATION LEVEL` in a savepoint or after a
        // query, `BEGIN ISOLATION LEVEL` inside the test's transaction.
        Some("25001") if inner.message().contains("ISOLATION LEVEL") => {
            "db-test: in transaction mode the test runs inside db-test's own transaction, which \
             already began, so its isolation level cannot change. A test that sets one (or needs \
             `SERIALIZABLE`) runs in a database of its own: `isolation = \"database\"`."
        }
        _ => return sqlx::Error::Database(inner),
    };
    let message = format!("{} ({hint})", inner.message());
    sqlx::Error::Database(Box::new(Explained { inner, message }))
}

/// `err` (a database error) with `hint` after its message.
#[cfg_attr(not(feature = "mysql"), allow(dead_code))]
pub(crate) fn with_hint(inner: Box<dyn DatabaseError>, hint: &str) -> sqlx::Error {
    let message = format!("{} ({hint})", inner.message());
    sqlx::Error::Database(Box::new(Explained { inner, message }))
}

/// The SQLSTATE of a database error, if it is one.
pub(crate) fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}
