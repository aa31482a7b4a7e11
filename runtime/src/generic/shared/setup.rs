//! What a backend's setup builds on in transaction mode and database mode:
//! the test's context ([`TestState`]), its fixtures, the transaction-mode
//! resource ([`TxResource`]), and opening the test's transaction.

use std::sync::Arc;

use sqlx::Connection;

use super::{Dialect, Shared};
use crate::generic::Db;
use crate::run::{Ending, Resource, TestSpec, Verdict};

/// What a backend's setup leaves in the test's context for the generic
/// parameter types (`Db<DB>`, `TestDb<DB>`) and the backend's own.
pub(crate) struct TestState<DB: Dialect> {
    /// The test's handle: on its transaction, or on its own pool.
    pub(crate) db: Db<DB>,
    /// The test's own pool (database mode).
    pub(crate) pool: Option<sqlx::Pool<DB>>,
    /// Options to open more connections to the test's database.
    pub(crate) options: <DB::Connection as Connection>::Options,
}

/// Runs a test's fixtures, in order, through its handle.
pub(crate) async fn apply_fixtures<DB: Dialect>(
    spec: &'static TestSpec,
    db: &Db<DB>,
) -> Result<(), String> {
    for fixture in spec.fixtures {
        sqlx::Executor::execute(db, sqlx::raw_sql(sqlx::AssertSqlSafe(fixture.sql)))
            .await
            .map_err(|e| {
                format!(
                    "db-test: fixture `{}` failed in test `{}`: {e}",
                    fixture.path, spec.name
                )
            })?;
    }
    Ok(())
}

/// A transaction-mode test's resource: its shared connection, rolled back
/// at the end and returned to its pool.
pub(crate) struct TxResource<DB: Dialect> {
    pub(crate) shared: Arc<Shared<DB>>,
}

impl<DB: Dialect> Resource for TxResource<DB> {
    fn teardown(
        self: Box<Self>,
        ending: Ending,
    ) -> futures_util::future::BoxFuture<'static, Verdict> {
        Box::pin(async move {
            let (conn, failure, log) = self
                .shared
                .finish(ending.reason, ending.spec.check_constraints)
                .await;
            // Back to the pool, rolled back and healthy: awaited, so that
            // the next test finds it idle rather than opening another copy.
            if let Some(mut conn) = conn {
                conn.return_to_pool().await;
            }
            (failure, log)
        })
    }
}

/// Opens a test's transaction on a connection of `pool`, closing (and
/// replacing) connections that cannot begin one.
// MySQL opens its own (it also needs the connection's id).
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) async fn open_transaction<DB: Dialect>(
    spec: &'static TestSpec,
    pool: &sqlx::Pool<DB>,
    what: &str,
) -> Result<Arc<Shared<DB>>, String> {
    let mut last_err = None;
    for _ in 0..3 {
        let conn = pool.acquire().await.map_err(|e| {
            format!(
                "db-test: cannot get a connection to {what} for test `{}`: {e}",
                spec.name
            )
        })?;
        match Shared::open(conn, spec.name.to_string()).await {
            Ok(shared) => return Ok(shared),
            Err((e, mut conn)) => {
                conn.close_on_drop();
                last_err = Some(e);
            }
        }
    }
    Err(format!(
        "db-test: cannot begin the transaction of test `{}` on {what}: {}",
        spec.name,
        last_err.map(|e| e.to_string()).unwrap_or_default()
    ))
}
