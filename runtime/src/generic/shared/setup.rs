//! What a backend's setup builds on in transaction mode and database mode:
//! the test's context ([`TestState`]), its fixtures, the transaction-mode
//! resource ([`TxResource`]).

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
        let sql = DB::fixture_in_transaction(fixture.sql).into_owned();
        sqlx::Executor::execute(db, sqlx::raw_sql(sqlx::AssertSqlSafe(sql)))
            .await
            .map_err(|e| crate::run::fixture_failed(spec, fixture.path, e))?;
    }
    Ok(())
}

/// A transaction-mode test's resource: its shared connection, rolled back
/// at the end and returned to its pool.
pub(crate) struct TxResource<DB: Dialect> {
    pub(crate) shared: Arc<Shared<DB>>,
}

impl<DB: Dialect> Resource for TxResource<DB> {
    fn settle(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(self.shared.settle_lent())
    }

    fn teardown(
        self: Box<Self>,
        ending: Ending,
    ) -> futures_util::future::BoxFuture<'static, Verdict> {
        Box::pin(async move {
            if ending.on_own_runtime {
                self.shared
                    .state
                    .runtime_dropped
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            // A healthy connection stays in its slot for the next test.
            self.shared
                .finish(ending.reason, ending.spec.check_constraints)
                .await
        })
    }
}
