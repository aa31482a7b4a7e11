//! The test's one connection, shared by every clone of the test's `Db`.
//!
//! The connection sits inside the test's transaction, which sqlx itself opened
//! (so sqlx's transaction depth is 1 and any nested `begin()` becomes a
//! `SAVEPOINT`). Statements issued outside an app transaction are guarded by
//! the savepoint `dbt_auto`, so a failing statement can be undone without
//! aborting the test's transaction: production autocommit semantics.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgTransactionManager};
use sqlx::{Either, Executor, Postgres, SqlSafeStr};
use sqlx_core::transaction::TransactionManager;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::db::OwnedQuery;
use crate::hint::sqlstate;

/// How many statements a test keeps for its failure report.
pub(crate) const STATEMENT_LOG_LEN: usize = 20;

pub(crate) struct SharedConn {
    slot: Arc<Mutex<Slot>>,
    label: String,
    checkout_timeout_ms: std::sync::atomic::AtomicU64,
}

/// One statement run on the test's connection, for diagnostics.
#[derive(Clone, Debug)]
pub(crate) struct LoggedStatement {
    pub(crate) sql: String,
    pub(crate) error: Option<String>,
}

pub(crate) struct Slot {
    conn: Option<PoolConnection<Postgres>>,
    /// `dbt_auto` marks the current state: nothing ran since it was set.
    fresh: bool,
    /// A raw connection guard was used since the last check; the transaction
    /// may be in the aborted state.
    unverified: bool,
    /// Set when the test's transaction was ended behind our back.
    pub(crate) poisoned: Option<String>,
    pub(crate) statements: u64,
    pub(crate) log: VecDeque<LoggedStatement>,
    pub(crate) ended: Option<&'static str>,
}

/// The lock on the test's connection. Derefs to the connection.
pub(crate) struct SlotGuard {
    guard: OwnedMutexGuard<Slot>,
    raw: bool,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if self.raw {
            self.guard.fresh = false;
            self.guard.unverified = true;
        }
    }
}

impl SlotGuard {
    pub(crate) fn conn(&self) -> &PgConnection {
        self.guard.conn.as_ref().expect("checked at lock time")
    }

    pub(crate) fn conn_mut(&mut self) -> &mut PgConnection {
        self.guard.conn.as_mut().expect("checked at lock time")
    }

    pub(crate) async fn commit_savepoint(&mut self) -> sqlx::Result<()> {
        PgTransactionManager::commit(self.conn_mut()).await
    }

    pub(crate) async fn rollback_savepoint(&mut self) -> sqlx::Result<()> {
        PgTransactionManager::rollback(self.conn_mut()).await
    }

    pub(crate) fn start_rollback_savepoint(&mut self) {
        PgTransactionManager::start_rollback(self.conn_mut())
    }
}

/// Is this SQL a bare `COMMIT` / `ROLLBACK` / `END` / `ABORT` (which would
/// end the test's transaction)? Only whole statements are recognised, so
/// `DO $$ BEGIN ... END $$` or a string containing "; end" never match. A
/// COMMIT hidden in a multi-statement string is caught when the test ends.
fn ends_transaction(sql: &str) -> Option<String> {
    let stmt = sql.trim().trim_end_matches(';').trim();
    let upper = stmt.to_ascii_uppercase();
    let mut words = upper.split_whitespace();
    let first = words.next()?;
    if !matches!(first, "COMMIT" | "ROLLBACK" | "END" | "ABORT") {
        return None;
    }
    let rest: Vec<&str> = words.collect();
    if rest.first() == Some(&"TO") || rest.first() == Some(&"PREPARED") {
        return None; // ROLLBACK TO SAVEPOINT, COMMIT PREPARED: not the test's transaction
    }
    rest.iter()
        .all(|w| matches!(*w, "WORK" | "TRANSACTION" | "AND" | "NO" | "CHAIN"))
        .then(|| stmt.to_string())
}

impl SharedConn {
    /// Opens the test's transaction on `conn` and wraps it.
    pub(crate) async fn open(
        mut conn: PoolConnection<Postgres>,
        label: String,
        checkout_timeout: Duration,
    ) -> Result<Arc<Self>, (sqlx::Error, PoolConnection<Postgres>)> {
        // sqlx counts this as depth 1, so a nested sqlx `begin()` sends SAVEPOINT.
        let begin = sqlx::AssertSqlSafe("BEGIN; SAVEPOINT dbt_auto").into_sql_str();
        if let Err(e) = PgTransactionManager::begin(&mut conn, Some(begin)).await {
            return Err((e, conn));
        }
        Ok(Arc::new(SharedConn {
            slot: Arc::new(Mutex::new(Slot {
                conn: Some(conn),
                fresh: true,
                unverified: false,
                poisoned: None,
                statements: 0,
                log: VecDeque::with_capacity(STATEMENT_LOG_LEN),
                ended: None,
            })),
            label,
            checkout_timeout_ms: std::sync::atomic::AtomicU64::new(
                checkout_timeout.as_millis() as u64
            ),
        }))
    }

    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    pub(crate) fn checkout_timeout(&self) -> Duration {
        Duration::from_millis(
            self.checkout_timeout_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    pub(crate) fn set_checkout_timeout(&self, timeout: Duration) {
        self.checkout_timeout_ms.store(
            timeout.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    async fn lock_slot(&self) -> sqlx::Result<OwnedMutexGuard<Slot>> {
        let slot = match tokio::time::timeout(
            self.checkout_timeout(),
            self.slot.clone().lock_owned(),
        )
        .await
        {
            Ok(slot) => slot,
            Err(_) => {
                return Err(sqlx::Error::InvalidArgument(format!(
                    "db-test: test `{}` waited {:?} for its database connection, which stayed busy. \
                     Likely cause: a guard from `db.acquire()` or `db.begin()` is held across another \
                     database call (the test has one connection, shared by every clone of its `Db`); \
                     drop the guard first, or raise DB_TEST_CHECKOUT_TIMEOUT.",
                    self.label,
                    self.checkout_timeout()
                )));
            }
        };
        if let Some(when) = slot.ended {
            return Err(sqlx::Error::InvalidArgument(format!(
                "db-test: test `{}` is over ({when}); its `Db` can no longer be used. \
                 A task spawned by the test outlived it.",
                self.label
            )));
        }
        if let Some(why) = &slot.poisoned {
            return Err(sqlx::Error::InvalidArgument(why.clone()));
        }
        Ok(slot)
    }

    /// Brings `dbt_auto` up to date so that it marks the current state,
    /// repairing an aborted transaction if a raw guard left one behind.
    async fn make_fresh(&self, slot: &mut Slot) -> sqlx::Result<()> {
        if slot.fresh {
            return Ok(());
        }
        let conn = slot.conn.as_mut().expect("checked at lock time");
        if PgTransactionManager::get_transaction_depth(conn) > 1 {
            // Inside an app transaction left open on a raw guard: nothing to guard.
            return Ok(());
        }
        match conn
            .execute("RELEASE SAVEPOINT dbt_auto; SAVEPOINT dbt_auto")
            .await
        {
            Ok(_) => {}
            Err(e) if sqlstate(&e).as_deref() == Some("25P02") && slot.unverified => {
                // A statement on a raw connection failed; undo that block.
                conn.execute("ROLLBACK TO SAVEPOINT dbt_auto").await?;
            }
            Err(e) => {
                let msg = match sqlstate(&e).as_deref() {
                    Some("25P01") | Some("3B001") => format!(
                        "db-test: the transaction of test `{}` was ended by a raw COMMIT or ROLLBACK \
                         sent by the test or the app. Writes after that point may have been committed. \
                         Use `db.begin()` and `tx.commit()` (they become savepoints under test) \
                         instead of sending COMMIT yourself.",
                        self.label
                    ),
                    _ => format!(
                        "db-test: the test's connection failed while setting its savepoint: {e}"
                    ),
                };
                slot.poisoned = Some(msg.clone());
                return Err(sqlx::Error::InvalidArgument(msg));
            }
        }
        slot.fresh = true;
        slot.unverified = false;
        Ok(())
    }

    /// Locks the connection for statements outside any app transaction.
    pub(crate) async fn lock_autocommit(&self) -> sqlx::Result<SlotGuard> {
        let mut slot = self.lock_slot().await?;
        self.make_fresh(&mut slot).await?;
        Ok(SlotGuard {
            guard: slot,
            raw: true,
        })
    }

    /// Starts an app transaction: a savepoint that sqlx tracks.
    pub(crate) async fn begin(&self) -> sqlx::Result<SlotGuard> {
        let mut slot = self.lock_slot().await?;
        self.make_fresh(&mut slot).await?;
        slot.fresh = false;
        let conn = slot.conn.as_mut().expect("checked at lock time");
        PgTransactionManager::begin(conn, None).await?;
        slot.statements += 1;
        Ok(SlotGuard {
            guard: slot,
            raw: false,
        })
    }

    /// Runs one statement through the test's connection, undoing it alone if it fails.
    pub(crate) async fn run_statement(
        &self,
        query: OwnedQuery,
    ) -> sqlx::Result<Vec<Either<sqlx::postgres::PgQueryResult, sqlx::postgres::PgRow>>> {
        use futures_util::TryStreamExt;

        let mut slot = self.lock_slot().await?;
        let sql = query.sql.as_str().to_owned();
        if let Some(stmt) = ends_transaction(&sql) {
            let msg = format!(
                "db-test: refusing to run `{stmt}` in test `{}`: it would end the test's \
                 transaction and commit or discard the test's data. Use `db.begin()` and \
                 `tx.commit()` / `tx.rollback()` instead (they become savepoints under test), \
                 or `isolation = \"database\"` for a test that must really commit.",
                self.label
            );
            slot.poisoned = Some(msg.clone());
            return Err(sqlx::Error::InvalidArgument(msg));
        }
        self.make_fresh(&mut slot).await?;
        let conn = slot.conn.as_mut().expect("checked at lock time");
        let result: sqlx::Result<Vec<_>> = conn.fetch_many(query).try_collect().await;
        slot.statements += 1;
        if slot.log.len() == STATEMENT_LOG_LEN {
            slot.log.pop_front();
        }
        slot.log.push_back(LoggedStatement {
            sql,
            error: result.as_ref().err().map(|e| e.to_string()),
        });
        match result {
            Ok(steps) => {
                slot.fresh = false;
                Ok(steps)
            }
            Err(e) => {
                let e = crate::hint::explain_lock_error(e);
                // Undo the failed statement alone; `dbt_auto` stays and still
                // marks the state before it.
                if e.as_database_error().is_some() {
                    let conn = slot.conn.as_mut().expect("checked at lock time");
                    if let Err(e2) = conn.execute("ROLLBACK TO SAVEPOINT dbt_auto").await {
                        slot.poisoned = Some(format!(
                            "db-test: could not undo a failed statement in test `{}`: {e2}",
                            self.label
                        ));
                    }
                } else {
                    slot.fresh = false;
                    slot.unverified = true;
                }
                Err(e)
            }
        }
    }

    /// Ends the test: checks deferred constraints, rolls everything back and
    /// hands the connection back. Later use of any clone of the `Db` errors.
    ///
    /// Returns the connection if it is healthy, and a failure message if the
    /// test's transaction was misused or a deferred constraint fails.
    pub(crate) async fn finish(
        &self,
        reason: &'static str,
        check_constraints: bool,
    ) -> (
        Option<PoolConnection<Postgres>>,
        Option<String>,
        Vec<LoggedStatement>,
    ) {
        let mut slot = match tokio::time::timeout(
            self.checkout_timeout(),
            self.slot.clone().lock_owned(),
        )
        .await
        {
            Ok(slot) => slot,
            Err(_) => {
                // A task is still holding the connection; it is closed with the task.
                return (
                    None,
                    Some(format!(
                        "db-test: test `{}` ended while a task still held its connection for more \
                         than {:?}; the connection was abandoned and its transaction is rolled \
                         back by the server.",
                        self.label,
                        self.checkout_timeout()
                    )),
                    Vec::new(),
                );
            }
        };
        slot.ended = Some(reason);
        let log: Vec<LoggedStatement> = slot.log.iter().cloned().collect();
        let mut failure = slot.poisoned.clone();
        let Some(mut conn) = slot.conn.take() else {
            return (None, failure, log);
        };
        let mut healthy = true;
        if failure.is_none() {
            let check = if check_constraints {
                "RELEASE SAVEPOINT dbt_auto; SET CONSTRAINTS ALL IMMEDIATE"
            } else {
                "RELEASE SAVEPOINT dbt_auto"
            };
            if let Err(e) = conn.execute(check).await {
                match sqlstate(&e).as_deref() {
                    Some("25P02") => {} // test left an aborted transaction; fine, it is rolled back
                    Some("25P01") | Some("3B001") => {
                        failure = Some(format!(
                            "db-test: the transaction of test `{}` was ended by a raw COMMIT or \
                             ROLLBACK sent by the test or the app; its writes may have been committed. \
                             Use `db.begin()` / `tx.commit()` instead.",
                            self.label
                        ));
                    }
                    Some(code) if code.starts_with("23") => {
                        let constraint = e
                            .as_database_error()
                            .and_then(|d| d.constraint().map(str::to_owned))
                            .unwrap_or_default();
                        failure = Some(format!(
                            "db-test: deferred constraint `{constraint}` fails at the end of test `{}`: {e}. \
                             This would fail at COMMIT in production.",
                            self.label
                        ));
                    }
                    _ => healthy = false,
                }
            }
        }
        while healthy && PgTransactionManager::get_transaction_depth(&conn) > 0 {
            if PgTransactionManager::rollback(&mut conn).await.is_err() {
                healthy = false;
            }
        }
        if healthy && failure.is_none() {
            (Some(conn), None, log)
        } else {
            // Never hand a connection in an unknown state to the next test.
            let _ = conn.close().await;
            (None, failure, log)
        }
    }

    pub(crate) async fn statement_count(&self) -> sqlx::Result<u64> {
        let slot = self.lock_slot().await?;
        Ok(slot.statements)
    }

    pub(crate) async fn recent_statements(&self) -> sqlx::Result<Vec<LoggedStatement>> {
        let slot = self.lock_slot().await?;
        Ok(slot.log.iter().cloned().collect())
    }
}
