//! The test's one connection, in its transaction, shared by every clone of
//! the test's [`Db`]: the backend-generic part of transaction mode.
//!
//! Layout of the test's transaction (sqlx's transaction depth in brackets):
//! `BEGIN` [1], then db-test's savepoint `db_test_auto`, renewed before a
//! statement run outside an app transaction whenever the one before it
//! changed something. An app transaction is a sqlx savepoint on top [2..].
//! At the end, everything is rolled back and the connection goes back to
//! its pool as it came.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::Connection;
use sqlx::pool::PoolConnection;
use sqlx_core::transaction::TransactionManager;
use tokio::sync::OwnedMutexGuard;

use super::{Db, Dialect, OwnedQuery, Step};
use crate::error::{Error, ErrorKind};
use crate::run::{Ending, Resource, TestSpec, Verdict};
use crate::shared::{LoggedStatement, STATEMENT_LOG_LEN, TEARDOWN_GRACE};

/// db-test's savepoint in the test's transaction.
pub(crate) const SAVEPOINT: &str = "db_test_auto";

type Manager<DB> = <DB as sqlx::Database>::TransactionManager;

fn depth<DB: Dialect>(conn: &DB::Connection) -> usize {
    Manager::<DB>::get_transaction_depth(conn)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs db-test's own SQL on a connection, to its end.
pub(crate) async fn exec<DB: Dialect>(conn: &mut DB::Connection, sql: &str) -> sqlx::Result<()> {
    DB::conn_fetch_many(conn, OwnedQuery::<DB>::raw(sql))
        .try_collect::<Vec<_>>()
        .await
        .map(|_| ())
}

/// What a test's connection carries besides the connection: shared between
/// statements through `Db` (under the connection's lock) and statements
/// sent on a guard holding that lock (`&mut DbConn`, which finds it through
/// the registry below). Not generic, so that the registry is one.
pub(crate) struct State {
    label: String,
    refuse: fn(&str) -> Option<String>,
    touches_session: fn(&str) -> bool,
    /// The test may have left session state on the connection.
    touched: AtomicBool,
    statements: AtomicU64,
    log: Mutex<VecDeque<LoggedStatement>>,
    /// `db_test_auto` marks the current state: nothing changed since it was set.
    fresh: AtomicBool,
    /// A statement whose future was dropped before it ended.
    in_flight: Mutex<Option<String>>,
    /// Set when something refused or broken ended the test's use of its
    /// connection: every later statement gets this error.
    poisoned: Mutex<Option<String>>,
}

impl State {
    fn record(&self, sql: String, error: Option<String>) {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let mut log = lock(&self.log);
        if log.len() == STATEMENT_LOG_LEN {
            log.pop_front();
        }
        log.push_back(LoggedStatement { sql, error });
    }

    fn poison(&self, why: String) {
        lock(&self.poisoned).get_or_insert(why);
    }

    fn poisoned_error(&self) -> Option<sqlx::Error> {
        lock(&self.poisoned).as_ref().map(|why| poisoned_error(why))
    }
}

fn poisoned_error(why: &str) -> sqlx::Error {
    let kind = if why.contains("refusing to run") || why.contains("ended the test's transaction") {
        ErrorKind::TransactionEnded
    } else {
        ErrorKind::ConnectionBroken
    };
    Error::new(kind, why).into()
}

/// Test connections by address, so that statements sent on a guard (a
/// `&mut DbConn` over the test's connection) find their test's state.
/// `ACTIVE` keeps the lookup off the path of connections that are no test's.
static REGISTRY: std::sync::RwLock<Vec<(usize, Arc<State>)>> = std::sync::RwLock::new(Vec::new());
static ACTIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn register(addr: usize, state: Arc<State>) {
    let mut r = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    r.retain(|(a, _)| *a != addr);
    r.push((addr, state));
    ACTIVE.store(r.len(), Ordering::Release);
}

fn unregister(addr: usize, state: &Arc<State>) {
    let mut r = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    r.retain(|(a, s)| !(*a == addr && Arc::ptr_eq(s, state)));
    ACTIVE.store(r.len(), Ordering::Release);
}

/// The state of the test whose connection this is, if any.
pub(crate) fn state_of<DB: Dialect>(conn: &DB::Connection) -> Option<Arc<State>> {
    if ACTIVE.load(Ordering::Acquire) == 0 {
        return None;
    }
    let addr = conn as *const DB::Connection as usize;
    let r = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    r.iter().find(|(a, _)| *a == addr).map(|(_, s)| s.clone())
}

pub(crate) struct Slot<DB: Dialect> {
    conn: Option<PoolConnection<DB>>,
    ended: Option<&'static str>,
}

/// The lock on the test's connection. Derefs (through `DbConn`) to it.
pub(crate) struct SlotGuard<DB: Dialect> {
    guard: OwnedMutexGuard<Slot<DB>>,
    /// Handed to the test or the app (`acquire()`, `begin()`), which may
    /// write on the bare connection, out of db-test's sight.
    raw: Option<Arc<State>>,
}

impl<DB: Dialect> Drop for SlotGuard<DB> {
    fn drop(&mut self) {
        // What was written through this guard must not be undone with the
        // next failing statement: `db_test_auto` is renewed before it.
        if let Some(state) = &self.raw {
            state.fresh.store(false, Ordering::Relaxed);
        }
    }
}

impl<DB: Dialect> SlotGuard<DB> {
    pub(crate) fn conn(&self) -> &DB::Connection {
        self.guard.conn.as_ref().expect("checked at lock time")
    }

    pub(crate) fn conn_mut(&mut self) -> &mut DB::Connection {
        self.guard.conn.as_mut().expect("checked at lock time")
    }

    /// Ends the app transaction this guard began: `RELEASE SAVEPOINT` on
    /// commit, `ROLLBACK TO SAVEPOINT` otherwise.
    pub(crate) async fn end_savepoint(&mut self, commit: bool) -> sqlx::Result<()> {
        let conn = self.conn_mut();
        if commit {
            Manager::<DB>::commit(conn).await
        } else {
            Manager::<DB>::rollback(conn).await
        }
    }

    pub(crate) fn start_rollback_savepoint(&mut self) {
        Manager::<DB>::start_rollback(self.conn_mut())
    }
}

/// The test's connection in its transaction, shared by every clone of the
/// test's `Db`.
pub(crate) struct Shared<DB: Dialect> {
    slot: Arc<tokio::sync::Mutex<Slot<DB>>>,
    state: Arc<State>,
    conn_addr: usize,
    /// Set when the test ends, even if a task still holds the connection.
    over: AtomicBool,
    checkout_timeout_ms: AtomicU64,
}

impl<DB: Dialect> Shared<DB> {
    /// Opens the test's transaction on `conn` and wraps it. On failure the
    /// connection is handed back, for the caller to close.
    pub(crate) async fn open(
        mut conn: PoolConnection<DB>,
        label: String,
    ) -> Result<Arc<Self>, (sqlx::Error, PoolConnection<DB>)> {
        if depth::<DB>(&conn) != 0 {
            return Err((
                sqlx::Error::Protocol("the connection came back in a transaction".into()),
                conn,
            ));
        }
        if let Err(e) = Manager::<DB>::begin(&mut conn, None).await {
            return Err((e, conn));
        }
        if let Err(e) = exec::<DB>(&mut conn, &format!("SAVEPOINT {SAVEPOINT}")).await {
            return Err((e, conn));
        }
        let state = Arc::new(State {
            label,
            refuse: DB::refuse,
            touches_session: DB::touches_session,
            touched: AtomicBool::new(false),
            statements: AtomicU64::new(0),
            log: Mutex::new(VecDeque::new()),
            fresh: AtomicBool::new(true),
            in_flight: Mutex::new(None),
            poisoned: Mutex::new(None),
        });
        let slot = Arc::new(tokio::sync::Mutex::new(Slot {
            conn: Some(conn),
            ended: None,
        }));
        // The connection sits in the slot's heap allocation until `finish`
        // takes it out (and unregisters it first).
        let conn_addr = {
            let slot = slot.try_lock().expect("nobody else has it yet");
            let conn: &DB::Connection = slot.conn.as_deref().expect("just put there");
            conn as *const DB::Connection as usize
        };
        register(conn_addr, state.clone());
        Ok(Arc::new(Shared {
            slot,
            state,
            conn_addr,
            over: AtomicBool::new(false),
            checkout_timeout_ms: AtomicU64::new(
                crate::config::checkout_timeout().as_millis() as u64
            ),
        }))
    }

    pub(crate) fn label(&self) -> &str {
        &self.state.label
    }

    pub(crate) fn checkout_timeout(&self) -> Duration {
        Duration::from_millis(self.checkout_timeout_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn set_checkout_timeout(&self, timeout: Duration) {
        self.checkout_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    pub(crate) fn statement_count(&self) -> u64 {
        self.state.statements.load(Ordering::Relaxed)
    }

    pub(crate) fn recent_statements(&self) -> Vec<LoggedStatement> {
        lock(&self.state.log).iter().cloned().collect()
    }

    fn over_error(&self, when: &str) -> sqlx::Error {
        Error::new(
            ErrorKind::TestOver,
            format!(
                "db-test: test `{}` is over ({when}); its `Db` can no longer be used. \
                 A task spawned by the test outlived it.",
                self.state.label
            ),
        )
        .into()
    }

    /// Takes the test's connection, waiting at most the checkout timeout.
    pub(crate) async fn lock(&self) -> sqlx::Result<SlotGuard<DB>> {
        if self.over.load(Ordering::Acquire) {
            return Err(self.over_error("it ended"));
        }
        let mut slot = match self.slot.clone().try_lock_owned() {
            Ok(slot) => slot,
            Err(_) => {
                match crate::clock::timeout(self.checkout_timeout(), self.slot.clone().lock_owned())
                    .await
                {
                    Ok(slot) => slot,
                    Err(()) => {
                        return Err(Error::new(
                            ErrorKind::CheckoutTimeout,
                            format!(
                                "db-test: test `{}` waited {:?} for its database connection, which \
                                 stayed busy. Likely cause: a guard from `db.acquire()` or \
                                 `db.begin()` is held across another database call (the test has \
                                 one connection, shared by every clone of its `Db`); drop the \
                                 guard first, or raise DB_TEST_CHECKOUT_TIMEOUT.",
                                self.state.label,
                                self.checkout_timeout()
                            ),
                        )
                        .into());
                    }
                }
            }
        };
        if let Some(when) = slot.ended {
            return Err(self.over_error(when));
        }
        if let Some(e) = self.state.poisoned_error() {
            return Err(e);
        }
        let conn = slot.conn.as_mut().expect("present until the test ends");
        recover_dropped::<DB>(&self.state, conn).await?;
        Ok(SlotGuard {
            guard: slot,
            raw: None,
        })
    }

    /// The test's connection for the test or the app (`acquire()`).
    pub(crate) async fn lock_raw(&self) -> sqlx::Result<SlotGuard<DB>> {
        let mut guard = self.lock().await?;
        guard.raw = Some(self.state.clone());
        Ok(guard)
    }

    /// An app transaction: a savepoint inside the test's transaction.
    pub(crate) async fn begin(&self) -> sqlx::Result<SlotGuard<DB>> {
        let mut guard = self.lock_raw().await?;
        Manager::<DB>::begin(guard.conn_mut(), None).await?;
        Ok(guard)
    }

    /// Runs one statement of `Db` on the test's connection.
    pub(crate) async fn run(&self, query: OwnedQuery<DB>) -> sqlx::Result<Vec<Step<DB>>> {
        let mut guard = self.lock().await?;
        run_on::<DB>(&self.state, guard.conn_mut(), query).await
    }

    /// Ends the test: checks constraints if asked, rolls everything back,
    /// and returns the connection (`None` if it could not be made clean),
    /// a failure to report, and the last statements.
    pub(crate) async fn finish(
        &self,
        reason: &'static str,
        check_constraints: bool,
    ) -> (
        Option<PoolConnection<DB>>,
        Option<String>,
        Vec<LoggedStatement>,
    ) {
        self.over.store(true, Ordering::Release);
        let log = self.recent_statements();
        let mut slot =
            match crate::clock::timeout(TEARDOWN_GRACE, self.slot.clone().lock_owned()).await {
                Ok(slot) => slot,
                Err(()) => {
                    return (
                        None,
                        Some(format!(
                            "db-test: a task still held the connection of test `{}` (a guard from \
                         `db.acquire()` or `db.begin()`) {TEARDOWN_GRACE:?} after the test ended; \
                         its transaction is rolled back when the task lets go",
                            self.state.label
                        )),
                        log,
                    );
                }
            };
        slot.ended = Some(reason);
        // A refused statement (a COMMIT, implicit-commit DDL, ...) or a
        // connection that broke fails the test, even if the test swallowed
        // the error: as on PostgreSQL.
        let poisoned = lock(&self.state.poisoned).clone();
        let Some(mut conn) = slot.conn.take() else {
            return (None, poisoned, log);
        };
        unregister(self.conn_addr, &self.state);
        let mut failure = poisoned;
        // A statement still running (the test timed out in it) gets a
        // grace period; then the connection is dropped instead of reused.
        let mut healthy = matches!(
            crate::clock::timeout(
                TEARDOWN_GRACE,
                recover_dropped::<DB>(&self.state, &mut conn)
            )
            .await,
            Ok(Ok(()))
        );
        if healthy
            && check_constraints
            && lock(&self.state.poisoned).is_none()
            && let Some(check) = DB::CHECK_CONSTRAINTS
        {
            match DB::conn_fetch_many(&mut conn, OwnedQuery::<DB>::raw(check))
                .try_collect::<Vec<_>>()
                .await
            {
                Ok(steps) => {
                    let rows = steps.iter().filter(|s| s.is_right()).count();
                    if rows > 0 {
                        failure = Some(format!(
                            "db-test: {rows} constraint violation(s) at the end of test `{}` \
                             (`{check}` found them): this would fail at COMMIT in production",
                            self.state.label
                        ));
                    }
                }
                Err(e) => {
                    failure = Some(format!(
                        "db-test: cannot check the constraints of test `{}`: {e}",
                        self.state.label
                    ))
                }
            }
        }
        while healthy && depth::<DB>(&conn) > 0 {
            let outer = depth::<DB>(&conn) == 1;
            if let Err(e) = Manager::<DB>::rollback(&mut conn).await {
                healthy = false;
                if outer && !is_broken(&e) && failure.is_none() {
                    // Nothing to roll back: something sent on the bare
                    // connection of a guard ended the test's transaction.
                    failure = Some(format!(
                        "db-test: the transaction of test `{}` was ended by a COMMIT or \
                         ROLLBACK sent on the bare connection of a guard (`&mut **conn`), out \
                         of db-test's sight ({e}). Its writes were not rolled back where they \
                         went; the connection is closed and no other test sees them. Use \
                         `db.begin()` and `tx.commit()` (savepoints under test), or \
                         `isolation = \"database\"` for a test that must really commit.",
                        self.state.label
                    ));
                }
            }
        }
        if healthy && !self.state.touched.load(Ordering::Relaxed) {
            (Some(conn), failure, log)
        } else {
            // Never hand a connection in an unknown state (or with session
            // state the test set) to the next test.
            conn.close_on_drop();
            (None, failure, log)
        }
    }
}

impl<DB: Dialect> Drop for Shared<DB> {
    fn drop(&mut self) {
        // Teardown never ran (setup failed): leave the registry.
        unregister(self.conn_addr, &self.state);
    }
}

/// A statement of the test was dropped before it ended: wait until the
/// connection is ready again, and undo what it did if it ran outside an
/// app transaction (as if it had been cancelled). Inside an app transaction
/// it cannot be undone alone; the app's rollback undoes it.
async fn recover_dropped<DB: Dialect>(
    state: &State,
    conn: &mut DB::Connection,
) -> sqlx::Result<()> {
    let Some(sql) = lock(&state.in_flight).take() else {
        return Ok(());
    };
    let mut outcome = "its caller dropped it".to_string();
    if let Err(e) = conn.ping().await {
        let why = out_of_sync(&state.label, &e);
        state.poison(why.clone());
        state.record(sql, Some(outcome));
        return Err(poisoned_error(&why));
    }
    if depth::<DB>(conn) == 1 {
        // Dropped between the release of `db_test_auto` and its renewal,
        // there is no savepoint to go back to: set it where things stand.
        let undone = match exec::<DB>(conn, &format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}")).await {
            Ok(()) => Ok(()),
            Err(_) => exec::<DB>(conn, &format!("SAVEPOINT {SAVEPOINT}")).await,
        };
        if let Err(e) = undone {
            let why = ended_by_database(&state.label, &e);
            state.poison(why.clone());
            state.record(sql, Some(outcome));
            return Err(poisoned_error(&why));
        }
        state.fresh.store(true, Ordering::Relaxed);
        outcome.push_str("; it was undone");
    }
    state.record(sql, Some(outcome));
    Ok(())
}

fn out_of_sync(label: &str, e: &sqlx::Error) -> String {
    format!(
        "db-test: the connection of test `{label}` broke ({e}); the test cannot go on, and its \
         transaction is rolled back."
    )
}

fn ended_by_database(label: &str, e: &sqlx::Error) -> String {
    format!(
        "db-test: the database ended the test's transaction in test `{label}` ({e}); for \
         example a constraint with `ON CONFLICT ROLLBACK`, or a full disk. What the test \
         wrote before is gone; the test cannot go on."
    )
}

/// Whether an error leaves the connection unusable (rather than being a
/// statement's failure that the server reported).
fn is_broken(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
    )
}

/// Runs one statement on the test's connection (through `Db`, or on a
/// guard through `&mut DbConn`): refused if the backend says so, else run
/// with production's autocommit semantics (outside an app transaction, after
/// a fresh `db_test_auto` savepoint, and a failure undone alone), counted and
/// logged, and marked in flight while it runs.
pub(crate) async fn run_on<DB: Dialect>(
    state: &State,
    conn: &mut DB::Connection,
    query: OwnedQuery<DB>,
) -> sqlx::Result<Vec<Step<DB>>> {
    if let Some(e) = state.poisoned_error() {
        return Err(e);
    }
    recover_dropped::<DB>(state, conn).await?;
    let sql = query.sql.as_str().to_owned();
    if let Some(why) = (state.refuse)(&sql) {
        let msg = format!(
            "db-test: refusing to run `{}` in test `{}`: {why}",
            sql.trim(),
            state.label
        );
        state.poison(msg.clone());
        state.record(sql, Some("refused by db-test".into()));
        return Err(poisoned_error(&msg));
    }
    if !state.touched.load(Ordering::Relaxed) && (state.touches_session)(&sql) {
        state.touched.store(true, Ordering::Relaxed);
    }
    let autocommit = depth::<DB>(conn) == 1;
    // In flight from here: dropped during the savepoint's renewal or the
    // statement, the next user finds out where the connection stands.
    *lock(&state.in_flight) = Some(sql.clone());
    if autocommit && !state.fresh.load(Ordering::Relaxed) {
        let renewed = if DB::SAVEPOINT_REPLACES {
            // One round trip: the new savepoint replaces the old one.
            exec::<DB>(conn, &format!("SAVEPOINT {SAVEPOINT}")).await
        } else {
            match exec::<DB>(conn, &format!("RELEASE SAVEPOINT {SAVEPOINT}")).await {
                Ok(()) => exec::<DB>(conn, &format!("SAVEPOINT {SAVEPOINT}")).await,
                Err(e) => Err(e),
            }
        };
        if let Err(e) = renewed {
            let why = if is_broken(&e) {
                out_of_sync(&state.label, &e)
            } else {
                ended_by_database(&state.label, &e)
            };
            *lock(&state.in_flight) = None;
            state.poison(why.clone());
            return Err(poisoned_error(&why));
        }
        state.fresh.store(true, Ordering::Relaxed);
    }
    let result: sqlx::Result<Vec<Step<DB>>> = DB::conn_fetch_many(conn, query).try_collect().await;
    *lock(&state.in_flight) = None;
    let plain_read = autocommit && crate::sqltext::is_plain_read(&sql);
    state.record(sql, result.as_ref().err().map(|e| e.to_string()));
    match result {
        Ok(steps) => {
            // After a plain read `db_test_auto` still marks the current state.
            if autocommit && !plain_read {
                state.fresh.store(false, Ordering::Relaxed);
            }
            Ok(steps)
        }
        Err(e) if is_broken(&e) => {
            state.poison(out_of_sync(&state.label, &e));
            Err(e)
        }
        Err(e) => {
            // Undo the failed statement alone; `db_test_auto` stays and
            // still marks the state before it.
            if autocommit {
                match exec::<DB>(conn, &format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}")).await {
                    Ok(()) => state.fresh.store(true, Ordering::Relaxed),
                    Err(e2) => state.poison(ended_by_database(&state.label, &e2)),
                }
            }
            Err(e)
        }
    }
}

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
