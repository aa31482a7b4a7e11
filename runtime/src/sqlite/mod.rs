//! SQLite: `Db`, `TestDb` and the engine behind `#[db_test]` on `SqlitePool`.

#[cfg(feature = "harness")]
mod refuse;

use sqlx::Sqlite;

/// The app-facing handle on a SQLite database: a [`sqlx::SqlitePool`] in
/// production, the test's transaction under `#[db_test]`. See
/// [`generic::Db`](crate::generic::Db).
pub type Db = crate::generic::Db<Sqlite>;

/// A transaction from [`Db::begin`](crate::generic::Db::begin).
pub type DbTransaction = crate::generic::DbTransaction<Sqlite>;

/// A connection from [`Db::acquire`](crate::generic::Db::acquire).
pub type DbConnection = crate::generic::DbConnection<Sqlite>;

/// The test's handle on its SQLite database. See
/// [`generic::TestDb`](crate::generic::TestDb).
#[cfg(feature = "harness")]
pub type TestDb = crate::generic::TestDb<Sqlite>;

impl crate::generic::sealed::Sealed for Sqlite {}

impl crate::generic::Dialect for Sqlite {
    #[cfg(feature = "harness")]
    const BACKEND: crate::Backend = crate::Backend::Sqlite;

    #[cfg(feature = "harness")]
    fn refuse(sql: &str) -> Option<String> {
        refuse::refuse(sql)
    }
    #[cfg(not(feature = "harness"))]
    fn refuse(_sql: &str) -> Option<String> {
        None
    }

    const CHECK_CONSTRAINTS: Option<&'static str> = Some("PRAGMA foreign_key_check");

    crate::generic::dialect_executors!();
}

#[cfg(feature = "harness")]
pub(crate) async fn setup(
    spec: &'static crate::run::TestSpec,
) -> Result<crate::run::Prepared, String> {
    Err(format!(
        "db-test: SQLite is not implemented yet (test `{}`)",
        spec.name
    ))
}
