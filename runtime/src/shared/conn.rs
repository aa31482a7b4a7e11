//! [`SharedConn`]: the test's one connection, shared by every clone of the
//! test's `Db`; how it opens the test's transaction, and what it reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgTransactionManager};
use sqlx::{Postgres, SqlSafeStr};
use sqlx_core::transaction::TransactionManager;
use tokio::sync::Mutex;

use super::session::{CATALOG_WRITES, can_force_flush};
use super::slot::Slot;
use super::state::{ConnState, LoggedStatement, lock, register, unregister};
use crate::slots::{Home, HomeCell};

pub(crate) struct SharedConn {
    pub(super) slot: Arc<Mutex<Slot>>,
    /// The pool of one the connection came from, and goes back to (also
    /// from a `Transaction` it was lent to); `None` once given back.
    pub(super) home: HomeCell<Postgres>,
    pub(super) state: Arc<ConnState>,
    /// The connection's address while it is registered (see `REGISTRY`).
    pub(super) conn_addr: usize,
    pub(super) label: String,
    /// The prefix of the backend's `application_name` during the test.
    pub(super) tag: String,
    /// Set when the test ends, even if a task still holds the connection.
    pub(super) over: AtomicBool,
    checkout_timeout_ms: AtomicU64,
}

/// A tag unique to one test of one process, on any host: the test's backend
/// carries it in `application_name` while the test runs, so that it, and
/// only it, can be cancelled or terminated from outside.
fn next_tag() -> String {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let token = TOKEN.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
    });
    format!("dbt-{token}-{}:", SEQ.fetch_add(1, Ordering::Relaxed))
}

impl SharedConn {
    /// Opens the test's transaction on `conn` and wraps it.
    pub(crate) async fn open(
        mut conn: PoolConnection<Postgres>,
        home: Home<Postgres>,
        label: String,
        checkout_timeout: Duration,
    ) -> Result<Arc<Self>, (sqlx::Error, PoolConnection<Postgres>, Home<Postgres>)> {
        let tag = next_tag();
        // The test's name follows the tag, for `pg_stat_activity` readers;
        // the server may truncate it.
        let app_name: String = format!("{tag} {label}")
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .filter(|c| *c != '\'')
            .collect();
        let baseline = if can_force_flush(&conn) {
            String::new()
        } else {
            format!("SELECT set_config('db_test.catalog_writes', {CATALOG_WRITES}::text, true); ")
        };
        let begin = format!(
            "BEGIN READ WRITE; SET LOCAL application_name = '{app_name}'; {baseline}\
             SAVEPOINT dbt_auto"
        );
        // sqlx counts this as depth 1, so a nested sqlx `begin()` sends SAVEPOINT.
        let begun = if PgTransactionManager::get_transaction_depth(&conn) == 0 {
            let begin = sqlx::AssertSqlSafe(begin).into_sql_str();
            PgTransactionManager::begin(&mut conn, Some(begin)).await
        } else {
            // Parked by the last test's end, which rolled back in its own
            // round trip (see `finish`): sqlx still counts depth 1, and no
            // transaction is open on the server.
            sqlx::raw_sql(sqlx::AssertSqlSafe(begin))
                .execute(&mut *conn)
                .await
                .map(|_| ())
        };
        if let Err(e) = begun {
            return Err((e, conn, home));
        }
        let state = Arc::new(ConnState {
            label: label.clone(),
            fresh: AtomicBool::new(true),
            ..Default::default()
        });
        let slot = Arc::new(Mutex::new(Slot {
            conn: Some(conn),
            unverified: false,
            lent: false,
            ended: None,
        }));
        // The connection sits in the slot's heap allocation until `finish`
        // takes it out (and unregisters it first).
        let conn_addr = {
            let slot = slot.try_lock().expect("nobody else has it yet");
            let conn: &PgConnection = slot.conn.as_deref().expect("just put there");
            conn as *const PgConnection as usize
        };
        register(conn_addr, state.clone());
        let shared = Arc::new(SharedConn {
            slot,
            home: HomeCell::new(home),
            state,
            conn_addr,
            label,
            tag,
            over: AtomicBool::new(false),
            checkout_timeout_ms: AtomicU64::new(checkout_timeout.as_millis() as u64),
        });
        Ok(shared)
    }

    /// On the body's own runtime, before it is dropped: a connection lent
    /// to `Acquire::begin` whose transaction ended finishes returning to its
    /// pool (see [`HomeCell::settle`]).
    pub(crate) async fn settle_lent(&self) {
        if self.slot.try_lock().map(|slot| slot.lent).unwrap_or(false) {
            self.home.settle().await;
        }
    }

    /// The body's own runtime was dropped, with every task on it (see
    /// `ConnState::runtime_dropped`).
    pub(crate) fn body_runtime_dropped(&self) {
        self.state
            .runtime_dropped
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    pub(crate) fn checkout_timeout(&self) -> Duration {
        Duration::from_millis(self.checkout_timeout_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn set_checkout_timeout(&self, timeout: Duration) {
        self.checkout_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// Statements that ran on the test's connection so far.
    pub(crate) fn statement_count(&self) -> u64 {
        lock(&self.state.counters).statements
    }

    /// The test's last statements, for its failure report; with the one
    /// still running on the connection, if any.
    pub(crate) fn recent_statements(&self) -> Vec<LoggedStatement> {
        let mut log: Vec<LoggedStatement> =
            lock(&self.state.counters).log.iter().cloned().collect();
        if let Some(sql) = lock(&self.state.in_flight).clone() {
            log.push(LoggedStatement {
                sql,
                error: Some(super::STILL_RUNNING.into()),
            });
        }
        log
    }
}

impl Drop for SharedConn {
    fn drop(&mut self) {
        // Teardown never ran (setup failed): leave the registry.
        unregister(self.conn_addr, &self.state);
    }
}
