//! The test's one connection, shared by every clone of the test's `Db`.
//!
//! The connection sits inside the test's transaction, which sqlx itself opened
//! (so sqlx's transaction depth is 1 and any nested `begin()` becomes a
//! `SAVEPOINT`). Statements issued outside an app transaction are guarded by
//! the savepoint `dbt_auto`, so a failing statement can be undone without
//! aborting the test's transaction: production autocommit semantics.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgTransactionManager};
use sqlx::{Connection, Either, Executor, Postgres, SqlSafeStr};
use sqlx_core::transaction::TransactionManager;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::error::{Error, ErrorKind};
use crate::hint::sqlstate;
use crate::postgres::signal::{Backends, Signal, signal_backends};
use crate::query::OwnedQuery;
use crate::sqltext::ends_transaction;

/// The temporary table whose row, inserted when the test's transaction
/// begins, fails a deferred foreign key at any COMMIT of that transaction:
/// whoever sends the COMMIT (the app, a multi-statement string, a raw
/// connection), it fails and the transaction is rolled back. Nothing a test
/// does in transaction mode can be committed.
const GUARD_TABLE: &str = "db_test_commit_guard";
/// The constraint's name, which the COMMIT's error names.
pub(crate) const GUARD_CONSTRAINT: &str = "db_test_refuses_to_commit_a_test_transaction";

/// Sets up a new connection of a working database's pool, once for its
/// lifetime (temporary objects live as long as the session): the commit
/// guard's tables, and a session that defaults to read-only transactions, so
/// that after a COMMIT that got past everything nothing can be written
/// outside the test's transaction either (db-test's own BEGIN says READ
/// WRITE). On PostgreSQL 15+ the statistics of these writes are flushed, so
/// that they do not count as a test's catalog writes.
pub(crate) async fn prepare_session(conn: &mut PgConnection) -> sqlx::Result<()> {
    let flush = if can_force_flush(conn) {
        "; SELECT pg_stat_force_next_flush()"
    } else {
        ""
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN READ WRITE; \
         CREATE TEMP TABLE IF NOT EXISTS {GUARD_TABLE}_key (id int PRIMARY KEY); \
         CREATE TEMP TABLE IF NOT EXISTS {GUARD_TABLE} (id int CONSTRAINT {GUARD_CONSTRAINT} \
           REFERENCES pg_temp.{GUARD_TABLE}_key DEFERRABLE INITIALLY DEFERRED); \
         COMMIT; \
         SET SESSION default_transaction_read_only = on{flush}"
    )))
    .execute(&mut *conn)
    .await
    .map(|_| ())
}

/// How long teardown waits for a task that still holds the test's
/// connection, and for a cancelled statement to stop.
pub(crate) const TEARDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a statement whose future was dropped may keep running before
/// it is cancelled on the server. One that completes by then keeps its
/// effects, as it would in production; one still running is cancelled (the
/// test's one connection cannot wait out, say, an hour-long statement that
/// its caller gave up on), so it fails and is undone.
const CANCEL_AFTER: Duration = Duration::from_millis(250);

/// Writes to the catalogs that shape a statement's result (columns,
/// relations, types, views, functions: fixed OIDs in every PostgreSQL), as
/// the server counts them for this backend. Counted across the test's
/// transaction, rolled-back savepoints included: DDL, even undone, can make
/// sqlx's cached statements stale.
///
/// These are the backend's pending statistics, which also hold what earlier
/// transactions of the session wrote until the server flushes them; it
/// flushes only outside a transaction block, never during a test. On
/// PostgreSQL 15 and later db-test forces a flush after anything that wrote
/// to the catalogs (the commit guard's creation, a test's DDL), so the count
/// at the end of a test is the test's own. Older servers get a baseline,
/// taken when the test begins.
const CATALOG_WRITES: &str = "(pg_stat_get_xact_tuples_inserted(1249) + pg_stat_get_xact_tuples_updated(1249) \
     + pg_stat_get_xact_tuples_deleted(1249) + pg_stat_get_xact_tuples_inserted(1259) \
     + pg_stat_get_xact_tuples_updated(1259) + pg_stat_get_xact_tuples_deleted(1259) \
     + pg_stat_get_xact_tuples_inserted(1247) + pg_stat_get_xact_tuples_updated(1247) \
     + pg_stat_get_xact_tuples_deleted(1247) + pg_stat_get_xact_tuples_inserted(2618) \
     + pg_stat_get_xact_tuples_updated(2618) + pg_stat_get_xact_tuples_deleted(2618) \
     + pg_stat_get_xact_tuples_inserted(1255) + pg_stat_get_xact_tuples_updated(1255) \
     + pg_stat_get_xact_tuples_deleted(1255))::int8";

/// Whether the server can be told to flush its pending statistics
/// (`pg_stat_force_next_flush`, PostgreSQL 15).
fn can_force_flush(conn: &PgConnection) -> bool {
    conn.server_version_num().unwrap_or(0) >= 150000
}

/// The end-of-test state: session advisory locks released, catalog writes
/// during the test (-1 if that is unknown), and the SQL-`PREPARE`d
/// statements.
fn session_state_sql(baseline: bool) -> String {
    let writes = if baseline {
        format!(
            "coalesce({CATALOG_WRITES} - nullif(current_setting('db_test.catalog_writes', true), '')::int8, -1)"
        )
    } else {
        CATALOG_WRITES.to_string()
    };
    format!(
        "SELECT pg_advisory_unlock_all() AS dbt_unlock, {writes} AS dbt_ddl, \
         ARRAY(SELECT name FROM pg_prepared_statements WHERE from_sql)::text[] AS dbt_prepared"
    )
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

/// How many statements a test keeps for its failure report.
pub(crate) const STATEMENT_LOG_LEN: usize = 20;

/// The statements that ran on a test's connection: how many, and the last
/// few, for `assert_queries` and the failure report. Kept apart from the
/// connection's lock, so that statements sent on a guard holding that lock
/// (`DbConnection`, `DbTransaction`) are recorded too.
#[derive(Default)]
pub(crate) struct Counters {
    statements: u64,
    log: VecDeque<LoggedStatement>,
}

impl Counters {
    pub(crate) fn record(&mut self, sql: String, error: Option<String>) {
        self.statements += 1;
        if self.log.len() == STATEMENT_LOG_LEN {
            self.log.pop_front();
        }
        self.log.push_back(LoggedStatement { sql, error });
    }
}

/// What a test's connection carries besides the connection itself, shared
/// between the test's `Db` statements (under the connection's lock) and
/// statements sent on a guard that holds that lock (`&mut DbConn`, which
/// finds it through the registry below).
#[derive(Default)]
pub(crate) struct ConnState {
    /// The test's name.
    label: String,
    counters: std::sync::Mutex<Counters>,
    /// `dbt_auto` marks the current state: nothing ran since it was set.
    fresh: AtomicBool,
    /// A statement whose future was dropped before its reply was read (a
    /// timeout, a `select!`, an aborted task): the reply is still on the
    /// connection.
    in_flight: std::sync::Mutex<Option<String>>,
    /// Set when the test's transaction was ended, or the connection broke.
    poisoned: std::sync::Mutex<Option<String>>,
    /// The commit guard's row is in the test's transaction. It goes in when
    /// the test first takes a guard: SQL sent through `Db` or `&mut DbConn`
    /// is checked by db-test itself, so only the bare connection behind a
    /// guard can send a COMMIT that only the server can stop.
    armed: AtomicBool,
    /// The test may have left session state behind (DDL, SQL `PREPARE`,
    /// advisory locks, sequence state), or used a guard, behind which
    /// db-test cannot see: teardown then checks and resets the session.
    touched_session: AtomicBool,
}

/// Whether SQL sent through `Db` or a guard may leave session state that
/// survives ROLLBACK, or stale cached statements.
fn touches_session(sql: &str) -> bool {
    [
        "CREATE", "ALTER", "DROP", "PREPARE", "ADVISORY", "VAL(", "DISCARD", "CALL ", "DO ", "DO$",
        "IMPORT",
    ]
    .iter()
    .any(|k| crate::sqltext::contains_ignore_case(sql, k))
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConnState {
    pub(crate) fn record(&self, sql: String, error: Option<String>) {
        lock(&self.counters).record(sql, error);
    }

    fn poisoned(&self) -> Option<String> {
        lock(&self.poisoned).clone()
    }

    fn poison(&self, why: String) {
        lock(&self.poisoned).get_or_insert(why);
    }
}

/// Test connections by address, so that statements sent on a guard (a
/// `&mut DbConn` over the test's `PgConnection`) find their test's state.
/// `ACTIVE` keeps the lookup off the path of connections that are not a
/// test's (database mode, or no test running).
static REGISTRY: std::sync::RwLock<Vec<(usize, Arc<ConnState>)>> =
    std::sync::RwLock::new(Vec::new());
static ACTIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn register(addr: usize, state: Arc<ConnState>) {
    let mut r = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    r.retain(|(a, _)| *a != addr);
    r.push((addr, state));
    ACTIVE.store(r.len(), Ordering::Release);
}

/// Removes this state's entry (and no newer one at the same address).
fn unregister(addr: usize, state: &Arc<ConnState>) {
    let mut r = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    r.retain(|(a, s)| !(*a == addr && Arc::ptr_eq(s, state)));
    ACTIVE.store(r.len(), Ordering::Release);
}

/// The state of the test whose connection this is, if any.
pub(crate) fn state_of(conn: &PgConnection) -> Option<Arc<ConnState>> {
    if ACTIVE.load(Ordering::Acquire) == 0 {
        return None;
    }
    let addr = conn as *const PgConnection as usize;
    let r = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    r.iter().find(|(a, _)| *a == addr).map(|(_, c)| c.clone())
}

pub(crate) struct SharedConn {
    slot: Arc<Mutex<Slot>>,
    state: Arc<ConnState>,
    /// The connection's address while it is registered (see `REGISTRY`).
    conn_addr: usize,
    label: String,
    /// The prefix of the backend's `application_name` during the test.
    tag: String,
    /// Set when the test ends, even if a task still holds the connection.
    over: AtomicBool,
    checkout_timeout_ms: AtomicU64,
}

/// One statement run on the test's connection, for diagnostics.
#[derive(Clone, Debug)]
pub(crate) struct LoggedStatement {
    pub(crate) sql: String,
    pub(crate) error: Option<String>,
}

pub(crate) struct Slot {
    conn: Option<PoolConnection<Postgres>>,
    /// A guard was used since the last check: something sent on the raw
    /// connection may have left a reply behind, or an aborted block.
    unverified: bool,
    pub(crate) ended: Option<&'static str>,
}

/// The lock on the test's connection. Derefs to the connection.
pub(crate) struct SlotGuard {
    guard: OwnedMutexGuard<Slot>,
    state: Arc<ConnState>,
    raw: bool,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        // Something sent on the raw connection may have been dropped in
        // flight: the next user reads the connection to its end first.
        self.guard.unverified = true;
        if self.raw {
            self.state.fresh.store(false, Ordering::Relaxed);
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

impl SharedConn {
    /// Opens the test's transaction on `conn` and wraps it.
    pub(crate) async fn open(
        mut conn: PoolConnection<Postgres>,
        label: String,
        checkout_timeout: Duration,
    ) -> Result<Arc<Self>, (sqlx::Error, PoolConnection<Postgres>)> {
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
        let begin = sqlx::AssertSqlSafe(begin).into_sql_str();
        if let Err(e) = PgTransactionManager::begin(&mut conn, Some(begin)).await {
            return Err((e, conn));
        }
        let state = Arc::new(ConnState {
            label: label.clone(),
            fresh: AtomicBool::new(true),
            ..Default::default()
        });
        let slot = Arc::new(Mutex::new(Slot {
            conn: Some(conn),
            unverified: false,
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
            state,
            conn_addr,
            label,
            tag,
            over: AtomicBool::new(false),
            checkout_timeout_ms: AtomicU64::new(checkout_timeout.as_millis() as u64),
        });
        Ok(shared)
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

    fn over_error(&self, when: &str) -> sqlx::Error {
        Error::new(
            ErrorKind::TestOver,
            format!(
                "db-test: test `{}` is over ({when}); its `Db` can no longer be used. \
             A task spawned by the test outlived it.",
                self.label
            ),
        )
        .into()
    }

    async fn lock_slot(&self) -> sqlx::Result<OwnedMutexGuard<Slot>> {
        if self.over.load(Ordering::Acquire) {
            return Err(self.over_error("it ended"));
        }
        // The uncontended case needs no timer at all.
        let mut slot = match self.slot.clone().try_lock_owned() {
            Ok(slot) => slot,
            Err(_) => {
                match crate::clock::timeout(self.checkout_timeout(), self.slot.clone().lock_owned())
                    .await
                {
                    Ok(slot) => slot,
                    Err(()) => {
                        return Err(Error::new(ErrorKind::CheckoutTimeout, format!(
                            "db-test: test `{}` waited {:?} for its database connection, which stayed busy. \
                         Likely cause: a guard from `db.acquire()` or `db.begin()` is held across another \
                         database call (the test has one connection, shared by every clone of its `Db`); \
                         drop the guard first, or raise DB_TEST_CHECKOUT_TIMEOUT.",
                            self.label,
                            self.checkout_timeout()
                        ))
                        .into());
                    }
                }
            }
        };
        if let Some(when) = slot.ended {
            return Err(self.over_error(when));
        }
        if let Some(why) = self.state.poisoned() {
            return Err(poisoned_error(&why));
        }
        if lock(&self.state.in_flight).is_some() {
            self.recover_dropped(&mut slot).await;
            if let Some(why) = self.state.poisoned() {
                return Err(poisoned_error(&why));
            }
        }
        Ok(slot)
    }

    /// Reads what is left on the connection until it is ready for the next
    /// statement. A statement still running after [`CANCEL_AFTER`] (its
    /// caller gave up on it) is cancelled on the server. Returns the errors
    /// the server reported meanwhile.
    async fn drain(&self, conn: &mut PgConnection) -> sqlx::Result<Vec<String>> {
        let mut errors = Vec::new();
        let mut cancelled = false;
        for _ in 0..64 {
            let result = {
                let ping = conn.ping();
                tokio::pin!(ping);
                if cancelled {
                    ping.await
                } else {
                    tokio::select! {
                        biased;
                        r = &mut ping => r,
                        () = crate::clock::sleep(CANCEL_AFTER) => {
                            cancelled = true;
                            signal_backends(Backends::Tagged(self.tag.clone()), Signal::Cancel).await;
                            match crate::clock::timeout(TEARDOWN_GRACE, &mut ping).await {
                                Ok(r) => r,
                                Err(()) => Err(sqlx::Error::Protocol(
                                    "the cancelled statement did not stop".into(),
                                )),
                            }
                        }
                    }
                }
            };
            match result {
                Ok(()) => return Ok(errors),
                Err(e) if is_abandoned_copy(&e) => {
                    // sqlx does not count the reply of a COPY it abandoned:
                    // from here on it would read every reply one late.
                    return Err(sqlx::Error::Protocol(format!(
                        "a `COPY ... FROM STDIN` was abandoned (its `PgCopyIn` dropped without \
                         `finish()` or `fail()`): {e}"
                    )));
                }
                Err(e) if e.as_database_error().is_some() => errors.push(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        Err(sqlx::Error::Protocol(
            "too many pending errors on the test's connection".into(),
        ))
    }

    /// A statement of `Db` was dropped mid-flight: read its outcome, undo it
    /// if it failed (so the next statement sees only what completed), and
    /// put it in the statement log.
    async fn recover_dropped(&self, slot: &mut Slot) {
        let Some(sql) = lock(&self.state.in_flight).take() else {
            return;
        };
        let conn = slot.conn.as_mut().expect("checked at lock time");
        let outcome = match self.drain(conn).await {
            Ok(errors) if errors.is_empty() => {
                self.state.fresh.store(false, Ordering::Relaxed);
                "its caller dropped it; it completed on the server".to_string()
            }
            Ok(errors) => {
                let undo = if PgTransactionManager::get_transaction_depth(conn) == 1 {
                    conn.execute("ROLLBACK TO SAVEPOINT dbt_auto").await.err()
                } else {
                    None
                };
                if let Some(e) = undo {
                    self.state.poison(format!(
                        "db-test: could not undo a dropped statement in test `{}`: {e}",
                        self.label
                    ));
                }
                format!(
                    "its caller dropped it; it failed and was undone: {}",
                    errors.join("; ")
                )
            }
            Err(e) => {
                self.state.poison(out_of_sync(&self.label, &e));
                format!("its caller dropped it; the connection broke: {e}")
            }
        };
        self.state.record(sql, Some(outcome));
    }

    /// Brings `dbt_auto` up to date so that it marks the current state,
    /// repairing what a guard left behind: the reply of something it
    /// dropped mid-flight (read first, and cancelled if still running), or
    /// an aborted transaction block.
    async fn make_fresh(&self, slot: &mut Slot, for_guard: bool) -> sqlx::Result<()> {
        let conn = slot.conn.as_mut().expect("checked at lock time");
        if for_guard {
            self.state.touched_session.store(true, Ordering::Relaxed);
        }
        let mut undo = false;
        if slot.unverified {
            match self.drain(conn).await {
                Ok(errors) => undo = !errors.is_empty(),
                Err(e) => {
                    let msg = out_of_sync(&self.label, &e);
                    self.state.poison(msg.clone());
                    return Err(poisoned_error(&msg));
                }
            }
            slot.unverified = false;
        }
        let arm = for_guard && !self.state.armed.load(Ordering::Relaxed);
        if !undo && !arm && self.state.fresh.load(Ordering::Relaxed) {
            return Ok(());
        }
        if PgTransactionManager::get_transaction_depth(conn) > 1 {
            // Inside an app transaction left open on a guard: nothing to guard.
            return Ok(());
        }
        refresh_savepoint(&self.state, conn, undo, arm).await
    }

    /// Locks the connection for statements outside any app transaction.
    pub(crate) async fn lock_autocommit(&self) -> sqlx::Result<SlotGuard> {
        let mut slot = self.lock_slot().await?;
        self.make_fresh(&mut slot, true).await?;
        Ok(SlotGuard {
            guard: slot,
            state: self.state.clone(),
            raw: true,
        })
    }

    /// Starts an app transaction: a savepoint that sqlx tracks.
    pub(crate) async fn begin(&self) -> sqlx::Result<SlotGuard> {
        let mut slot = self.lock_slot().await?;
        self.make_fresh(&mut slot, true).await?;
        self.state.fresh.store(false, Ordering::Relaxed);
        let conn = slot.conn.as_mut().expect("checked at lock time");
        PgTransactionManager::begin(conn, None).await?;
        Ok(SlotGuard {
            guard: slot,
            state: self.state.clone(),
            raw: false,
        })
    }

    /// Runs one statement through the test's connection, undoing it alone if it fails.
    pub(crate) async fn run_statement(&self, query: OwnedQuery) -> sqlx::Result<Vec<Step>> {
        let mut slot = self.lock_slot().await?;
        if let Some(refused) = refuse_ending(&self.state, query.sql.as_str()) {
            return Err(refused);
        }
        self.make_fresh(&mut slot, false).await?;
        let conn = slot.conn.as_mut().expect("checked at lock time");
        let result = run_guarded(&self.state, conn, query).await;
        if matches!(&result, Err(e) if e.as_database_error().is_none()) {
            slot.unverified = true;
        }
        result
    }

    /// Ends the test: checks deferred constraints, rolls everything back,
    /// leaves the session as a new one would be (no advisory lock, no SQL
    /// `PREPARE`d statement, no stale statement cache) and hands the
    /// connection back. Later use of any clone of the `Db` errors.
    ///
    /// A test that timed out has its running statement cancelled on the
    /// server first. A task that still holds the connection after
    /// [`TEARDOWN_GRACE`] has the backend terminated under it.
    ///
    /// Returns the connection if it is healthy, and a failure message if the
    /// test's transaction was misused or a deferred constraint fails.
    pub(crate) async fn finish(
        &self,
        reason: &'static str,
        check_constraints: bool,
        timed_out: bool,
    ) -> (
        Option<PoolConnection<Postgres>>,
        Option<String>,
        Vec<LoggedStatement>,
    ) {
        self.over.store(true, Ordering::Release);
        // From now on no statement counts for this test, whatever holds the
        // connection; and its address may serve another test's connection.
        unregister(self.conn_addr, &self.state);
        let log =
            || -> Vec<LoggedStatement> { lock(&self.state.counters).log.iter().cloned().collect() };
        if timed_out {
            signal_backends(Backends::Tagged(self.tag.clone()), Signal::Cancel).await;
        }
        let mut slot = match self.slot.clone().try_lock_owned() {
            Ok(slot) => slot,
            Err(_) => match crate::clock::timeout(TEARDOWN_GRACE, self.slot.clone().lock_owned())
                .await
            {
                Ok(slot) => slot,
                Err(()) => {
                    // A task still holds the connection: end the session under
                    // it, so that nothing of the test stays running or locked.
                    signal_backends(Backends::Tagged(self.tag.clone()), Signal::Terminate).await;
                    return (
                        None,
                        Some(format!(
                            "db-test: test `{}` ended ({reason}) while a task it spawned still held its \
                             connection {TEARDOWN_GRACE:?} later; the connection's backend was terminated \
                             and everything the test wrote was rolled back. Stop such tasks before the \
                             test returns, or start them with `TestContext::spawn`, which aborts them.",
                            self.label
                        )),
                        log(),
                    );
                }
            },
        };
        slot.ended = Some(reason);
        self.recover_dropped(&mut slot).await;
        let mut failure = self.state.poisoned();
        let Some(mut conn) = slot.conn.take() else {
            return (None, failure, log());
        };
        if failure.is_none() && slot.unverified {
            // A guard dropped mid-statement leaves its reply behind.
            if self.drain(&mut conn).await.is_err() {
                let _ = conn.detach().close_hard().await;
                return (None, failure, log());
            }
        }
        let log = log();
        let mut healthy = true;
        // Unknown until the state query answers: assume the worst.
        let mut stale_cache = true;
        let mut state_known = false;
        let mut prepared: Vec<String> = Vec::new();
        let touched = self.state.touched_session.load(Ordering::Relaxed);
        if failure.is_none() {
            // The guard's row would fail the check of deferred constraints.
            let disarm = if self.state.armed.load(Ordering::Relaxed) {
                format!("DELETE FROM pg_temp.{GUARD_TABLE}; ")
            } else {
                String::new()
            };
            let constraints = if check_constraints {
                format!("; {disarm}SET CONSTRAINTS ALL IMMEDIATE")
            } else {
                String::new()
            };
            // Only a test that may have left session state behind pays for
            // looking (DISCARD SEQUENCES: its `currval`/`lastval` must not
            // answer in the next test on this connection).
            let state_sql = if touched {
                format!(
                    "; DISCARD SEQUENCES; {}",
                    session_state_sql(!can_force_flush(&conn))
                )
            } else {
                String::new()
            };
            let check = format!("RELEASE SAVEPOINT dbt_auto{state_sql}{constraints}");
            match session_state(&mut conn, check).await {
                (Some((ddl, names)), error) => {
                    // The same row released the session advisory locks.
                    state_known = true;
                    stale_cache = ddl != 0;
                    prepared = names;
                    if let Some(e) = error {
                        failure = constraint_failure(&e, &self.label);
                        healthy = failure.is_some();
                    }
                }
                (None, None) if !touched => {
                    // Nothing the test sent could have left session state.
                    state_known = true;
                    stale_cache = false;
                }
                (None, Some(e)) if !touched && constraint_failure(&e, &self.label).is_some() => {
                    state_known = true;
                    stale_cache = false;
                    failure = constraint_failure(&e, &self.label);
                }
                (None, Some(e)) => match sqlstate(&e).as_deref() {
                    Some("25P02") => {} // test left an aborted transaction; fine, it is rolled back
                    Some("25P01") | Some("3B001") => failure = Some(commit_message(&self.label)),
                    _ => healthy = false,
                },
                (None, None) => healthy = false,
            }
        }
        // Awaited, not queued for sqlx's release ping: the connection is
        // then back in the pool before the next test asks for one (a test
        // that found none idle would open a new connection, which costs far
        // more than this round trip).
        while healthy && PgTransactionManager::get_transaction_depth(&conn) > 0 {
            if PgTransactionManager::rollback(&mut conn).await.is_err() {
                healthy = false;
            }
        }
        if healthy && failure.is_none() && !state_known {
            // The state query did not run (an aborted transaction): ask now.
            match sqlx::query_scalar::<_, String>(
                "SELECT name::text FROM pg_prepared_statements WHERE from_sql",
            )
            .fetch_all(&mut *conn)
            .await
            {
                Ok(names) => prepared = names,
                Err(_) => healthy = false,
            }
        }
        if healthy && failure.is_none() && (!state_known || !prepared.is_empty()) {
            // Session state that survives ROLLBACK. (Usually nothing to do:
            // the state query already released the advisory locks.)
            let mut cleanup = String::from("SELECT pg_advisory_unlock_all()");
            for name in &prepared {
                cleanup.push_str(&format!("; DEALLOCATE \"{}\"", name.replace('"', "\"\"")));
            }
            healthy = sqlx::raw_sql(sqlx::AssertSqlSafe(cleanup))
                .execute(&mut *conn)
                .await
                .is_ok();
        }
        if healthy && failure.is_none() && stale_cache {
            healthy = conn.clear_cached_statements().await.is_ok();
            if healthy && can_force_flush(&conn) {
                // So that the next test's count starts from zero.
                healthy = conn
                    .execute("SELECT pg_stat_force_next_flush()")
                    .await
                    .is_ok();
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

    /// Statements that ran on the test's connection so far.
    pub(crate) fn statement_count(&self) -> u64 {
        lock(&self.state.counters).statements
    }

    pub(crate) fn recent_statements(&self) -> Vec<LoggedStatement> {
        lock(&self.state.counters).log.iter().cloned().collect()
    }
}

impl Drop for SharedConn {
    fn drop(&mut self) {
        // Teardown never ran (setup failed): leave the registry.
        unregister(self.conn_addr, &self.state);
    }
}

/// `0A000 cached plan must not change result type`: a statement sqlx
/// prepared earlier now returns other columns, because of DDL.
fn is_stale_plan(e: &sqlx::Error) -> bool {
    sqlstate(e).as_deref() == Some("0A000")
        && e.as_database_error().is_some_and(|d| {
            d.message()
                .contains("cached plan must not change result type")
        })
}

fn commit_message(label: &str) -> String {
    format!(
        "db-test: the transaction of test `{label}` was ended by a raw COMMIT or ROLLBACK sent by the \
         test or the app. Nothing was committed: db-test refuses any COMMIT of a test's transaction, \
         and rolled it back. Use `db.begin()` and `tx.commit()` (they become savepoints under test) \
         instead of sending COMMIT yourself, or `isolation = \"database\"` for a test that must \
         really commit."
    )
}

/// The error of a COMMIT that db-test's guard refused, explained.
fn refused_commit(e: &sqlx::Error, label: &str) -> Option<String> {
    let db = e.as_database_error()?;
    (db.constraint() == Some(GUARD_CONSTRAINT)).then(|| {
        format!(
            "{} (The server reported: {e}. A `SET CONSTRAINTS ALL IMMEDIATE` sent by the test \
             also trips this guard; name the constraints to check instead.)",
            commit_message(label)
        )
    })
}

/// A deferred constraint that fails when the test ends.
fn constraint_failure(e: &sqlx::Error, label: &str) -> Option<String> {
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

/// Runs the end-of-test check and reads the session's state from its
/// `dbt_ddl`/`dbt_prepared` row. Returns that state if the row came, and the
/// error that stopped the check, if any.
async fn session_state(
    conn: &mut PgConnection,
    check: String,
) -> (Option<(i64, Vec<String>)>, Option<sqlx::Error>) {
    use futures_util::StreamExt;
    use sqlx::Row;
    let mut state = None;
    let mut error = None;
    {
        let mut steps = conn.fetch_many(sqlx::raw_sql(sqlx::AssertSqlSafe(check)));
        while let Some(step) = steps.next().await {
            match step {
                Ok(Either::Right(row)) if row.len() == 3 => {
                    let ddl = row.try_get::<i64, _>("dbt_ddl").unwrap_or(1);
                    let prepared = row
                        .try_get::<Vec<String>, _>("dbt_prepared")
                        .unwrap_or_default();
                    state = Some((ddl, prepared));
                }
                Ok(_) => {}
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
    }
    (state, error)
}

type Step = Either<sqlx::postgres::PgQueryResult, sqlx::postgres::PgRow>;

/// Refuses, before it reaches the server, SQL that would end the test's
/// transaction (anywhere in a multi-statement string), and fails the test.
pub(crate) fn refuse_ending(state: &ConnState, sql: &str) -> Option<sqlx::Error> {
    let stmt = ends_transaction(sql)?;
    let msg = format!(
        "db-test: refusing to run `{stmt}` in test `{}`: it would end the test's \
         transaction and commit or discard the test's data. Use `db.begin()` and \
         `tx.commit()` / `tx.rollback()` instead (they become savepoints under test), \
         or `isolation = \"database\"` for a test that must really commit.",
        state.label
    );
    state.poison(msg.clone());
    state.record(sql.to_string(), Some("refused by db-test".into()));
    Some(poisoned_error(&msg))
}

/// Runs one statement on a test's connection (through `Db`, or on a guard
/// through `&mut DbConn`) with production's autocommit semantics: outside
/// an app transaction it runs after a fresh `dbt_auto` savepoint and a
/// failure is undone alone. It is counted and logged; if its future is
/// dropped, it is marked in flight, for the next user to read its reply.
/// A statement sqlx had cached that DDL made stale is prepared again.
pub(crate) async fn run_guarded(
    state: &ConnState,
    conn: &mut PgConnection,
    query: OwnedQuery,
) -> sqlx::Result<Vec<Step>> {
    use futures_util::TryStreamExt;

    if let Some(why) = state.poisoned() {
        return Err(poisoned_error(&why));
    }
    let sql = query.sql.as_str().to_owned();
    if !state.touched_session.load(Ordering::Relaxed) && touches_session(&sql) {
        state.touched_session.store(true, Ordering::Relaxed);
    }
    let autocommit = PgTransactionManager::get_transaction_depth(conn) == 1;
    if autocommit && !state.fresh.load(Ordering::Relaxed) {
        refresh_savepoint(state, conn, false, false).await?;
    }
    // A copy for one retry, should a cached statement have gone stale.
    let retry = query.clone();
    *lock(&state.in_flight) = Some(sql.clone());
    let mut result: sqlx::Result<Vec<Step>> = conn.fetch_many(query).try_collect().await;
    if autocommit && result.as_ref().err().is_some_and(is_stale_plan) {
        // DDL made a statement sqlx had cached (in this test, or before it
        // on this connection) return other columns: forget the cache and
        // run it again, as a fresh connection would.
        if conn.execute("ROLLBACK TO SAVEPOINT dbt_auto").await.is_ok()
            && conn.clear_cached_statements().await.is_ok()
        {
            result = conn.fetch_many(retry).try_collect().await;
        }
    }
    *lock(&state.in_flight) = None;
    let plain_read = autocommit && crate::sqltext::is_plain_read(&sql);
    state.record(sql, result.as_ref().err().map(|e| e.to_string()));
    match result {
        Ok(steps) => {
            // After a plain read `dbt_auto` still marks the current state.
            if autocommit && !plain_read {
                state.fresh.store(false, Ordering::Relaxed);
            }
            Ok(steps)
        }
        Err(e) => {
            if let Some(msg) = refused_commit(&e, &state.label) {
                state.poison(msg.clone());
                return Err(poisoned_error(&msg));
            }
            if e.as_database_error().is_none() {
                // The connection broke, or lost step with the server.
                state.poison(out_of_sync(&state.label, &e));
                return Err(e);
            }
            let e = crate::hint::explain_lock_error(e);
            // Undo the failed statement alone; `dbt_auto` stays and still
            // marks the state before it.
            if autocommit && let Err(e2) = conn.execute("ROLLBACK TO SAVEPOINT dbt_auto").await {
                state.poison(format!(
                    "db-test: could not undo a failed statement in test `{}`: {e2}",
                    state.label
                ));
            }
            Err(e)
        }
    }
}

/// The error of a COPY whose `PgCopyIn` was dropped: sqlx sent `CopyFail`.
fn is_abandoned_copy(e: &sqlx::Error) -> bool {
    sqlstate(e).as_deref() == Some("57014")
        && e.as_database_error()
            .is_some_and(|d| d.message().starts_with("COPY from stdin failed"))
}

/// Moves `dbt_auto` up to the current state (first undoing the block since
/// it, with `undo`): the one way db-test renews its savepoint. With `arm`,
/// the commit guard's row goes in at the top level of the test's
/// transaction, between the two savepoints, so that no rollback to
/// `dbt_auto` can take it out. A block a failed statement on the raw
/// connection left aborted is undone too. Any other failure ends the test.
async fn refresh_savepoint(
    state: &ConnState,
    conn: &mut PgConnection,
    undo: bool,
    arm: bool,
) -> sqlx::Result<()> {
    let refresh = format!(
        "RELEASE SAVEPOINT dbt_auto; {}SAVEPOINT dbt_auto",
        if arm {
            format!("INSERT INTO pg_temp.{GUARD_TABLE} VALUES (1); ")
        } else {
            String::new()
        },
    );
    let undo_then = format!("ROLLBACK TO SAVEPOINT dbt_auto; {refresh}");
    let first = if undo { &undo_then } else { &refresh };
    let mut result = sqlx::raw_sql(sqlx::AssertSqlSafe(first.clone()))
        .execute(&mut *conn)
        .await
        .map(|_| ());
    if !undo
        && let Err(e) = &result
        && sqlstate(e).as_deref() == Some("25P02")
    {
        result = sqlx::raw_sql(sqlx::AssertSqlSafe(undo_then))
            .execute(&mut *conn)
            .await
            .map(|_| ());
    }
    if let Err(e) = result {
        let msg = match sqlstate(&e).as_deref() {
            Some("25P01") | Some("3B001") => commit_message(&state.label),
            _ if e.as_database_error().is_none() => out_of_sync(&state.label, &e),
            _ => format!("db-test: the test's connection failed while setting its savepoint: {e}"),
        };
        state.poison(msg.clone());
        return Err(poisoned_error(&msg));
    }
    state.fresh.store(true, Ordering::Relaxed);
    if arm {
        state.armed.store(true, Ordering::Relaxed);
    }
    Ok(())
}

/// A statement sent on a guard (`&mut DbConn`): refused if it would end the
/// test's transaction, else run as [`run_guarded`] runs it.
pub(crate) async fn run_on_guard(
    state: &ConnState,
    conn: &mut PgConnection,
    query: OwnedQuery,
) -> sqlx::Result<Vec<Step>> {
    if let Some(refused) = refuse_ending(state, query.sql.as_str()) {
        return Err(refused);
    }
    run_guarded(state, conn, query).await
}

/// Why a test cannot go on after its connection broke or lost step.
fn out_of_sync(label: &str, e: &sqlx::Error) -> String {
    format!(
        "db-test: the connection of test `{label}` broke or lost step with the server ({e}); \
         something sent on it was abandoned mid-way (a COPY, a stream, a statement whose \
         future was dropped). The test cannot go on; its transaction is rolled back."
    )
}

/// The error every later use of a test's connection gets once something
/// ended its transaction or broke it.
fn poisoned_error(why: &str) -> sqlx::Error {
    let kind = if why.contains("COMMIT") || why.contains("refusing to run") {
        ErrorKind::TransactionEnded
    } else {
        ErrorKind::ConnectionBroken
    };
    Error::new(kind, why).into()
}
