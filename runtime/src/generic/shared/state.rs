//! What a test's connection carries besides the connection ([`State`]):
//! the statement log, the test's flags, and the registry that finds them
//! from the bare connection behind a guard.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::errors::poisoned_error;
use super::{Dialect, lock};
use crate::shared::{LoggedStatement, STATEMENT_LOG_LEN};

/// What a test's connection carries besides the connection: shared between
/// statements through `Db` (under the connection's lock) and statements
/// sent on a guard holding that lock (`&mut DbConn`, which finds it through
/// the registry below). Not generic, so that the registry is one.
pub(crate) struct State {
    pub(super) label: String,
    pub(super) refuse: fn(&str, bool) -> Option<String>,
    pub(super) touches_session: fn(&str) -> bool,
    /// Deferred constraints are checked where production's `COMMIT` would
    /// check them (see `Dialect::deferred_violation`):
    /// set for a test that checks constraints when its database has
    /// deferred ones, or its SQL mentions deferring.
    pub(super) check_deferred: AtomicBool,
    /// The test's `check_constraints`.
    pub(super) checks_constraints: AtomicBool,
    /// The test named the setting of `Dialect::RESET_AT_TRANSACTION_END`.
    pub(super) reset_at_end: AtomicBool,
    /// The savepoints the test opened itself outside an app transaction
    /// (see `Dialect::track_savepoints`).
    pub(super) own_savepoints: Mutex<Vec<String>>,
    /// The test may have left session state on the connection.
    pub(super) touched: AtomicBool,
    /// [`Dialect::advice_once`](crate::generic::Dialect) was printed.
    pub(super) advised_once: AtomicBool,
    /// The test changed the schema (see [`Dialect::changes_schema`]):
    /// sqlx's cached statements are cleared before each of its statements.
    pub(super) schema_changed: AtomicBool,
    /// A guard handed out the bare connection, on which DDL may have run
    /// unseen: sqlx's statement cache is cleared once more, before the
    /// next statement db-test runs.
    pub(super) clear_once: AtomicBool,
    /// The connection went out of db-test's sight (a guard from `acquire()`
    /// or `begin()`, or a transaction from `Acquire::begin`): whether the
    /// test's transaction is still open is checked at the end.
    pub(super) out_of_sight: AtomicBool,
    /// A guard from `acquire()` handed out the bare connection since the
    /// last statement through `Db`: the next one first checks that the
    /// test's transaction is still open (see `Shared::run`).
    pub(super) probe_once: AtomicBool,
    /// See `Shared::abandon_at_end`.
    pub(super) abandon: AtomicBool,
    /// The test's transaction was found ended at the end of the test: what
    /// the test wrote before that was committed.
    pub(super) ended_out_of_sight: AtomicBool,
    /// A task still held the connection (a guard) when the test's end gave
    /// up waiting for it: the backend ends the session under it (MySQL),
    /// so that nothing the task sends later commits.
    pub(super) held_at_end: AtomicBool,
    /// The database ended the test's transaction when a statement failed
    /// (a deadlock): the test is poisoned with that reason.
    pub(super) ended_by_database: AtomicBool,
    /// The body ran on a runtime of its own, dropped with its tasks: a
    /// transaction from `Acquire::begin` that such a task held went with it,
    /// as under `#[tokio::test]`, and its connection (the server rolled
    /// back everything on it).
    pub(super) runtime_dropped: AtomicBool,
    /// The connection broke, or is out of step with the server: teardown
    /// closes it without sending anything (a statement would wait for a
    /// reply that never comes).
    pub(super) broken: AtomicBool,
    pub(super) statements: AtomicU64,
    pub(super) log: Mutex<VecDeque<LoggedStatement>>,
    /// A statement whose future was dropped before it ended.
    pub(super) in_flight: Mutex<Option<String>>,
    /// Set when something refused or broken ended the test's use of its
    /// connection: every later statement gets this error.
    pub(super) poisoned: Mutex<Option<String>>,
    /// Stops a statement still running on the connection (see
    /// [`Canceller`]), set by the backend's setup.
    pub(super) canceller: Mutex<Option<Arc<dyn Canceller>>>,
}

/// Stops the statement running on a test's connection, for a statement
/// whose future was dropped and that does not end by itself (MySQL: `KILL
/// QUERY` from another connection; SQLite: an interrupt).
pub(crate) trait Canceller: Send + Sync {
    /// Whether `sql`, running, may be stopped without losing more than its
    /// own work.
    fn can_cancel(&self, sql: &str) -> bool {
        let _ = sql;
        true
    }
    /// Asks the server (or the library) to stop the running statement.
    fn cancel(&self) -> futures_util::future::BoxFuture<'static, ()>;
    /// The connection is ready again: undo what `cancel` left set.
    fn done(&self) {}
    /// After the test, its transaction was found ended by something db-test
    /// let through: what it wrote was committed. (MySQL: the working
    /// database is marked to be cloned again.)
    fn committed(&self) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

impl State {
    pub(super) fn record(&self, sql: String, error: Option<String>) {
        self.statements.fetch_add(1, Ordering::Relaxed);
        let mut log = lock(&self.log);
        if log.len() == STATEMENT_LOG_LEN {
            log.pop_front();
        }
        log.push_back(LoggedStatement { sql, error });
    }

    pub(super) fn poison(&self, why: String) {
        lock(&self.poisoned).get_or_insert(why);
    }

    /// The database ended the test's transaction: `why` fails the test.
    pub(super) fn ended_by_database(&self, why: String) {
        self.ended_by_database.store(true, Ordering::Relaxed);
        self.poison(why);
    }

    pub(super) fn poisoned_error(&self) -> Option<sqlx::Error> {
        lock(&self.poisoned)
            .as_ref()
            .map(|why| poisoned_error(&crate::shared::not_run_message(why)))
    }
}

/// Test connections by address, so that statements sent on a guard (a
/// `&mut DbConn` over the test's connection) find their test's state.
/// `ACTIVE` keeps the lookup off the path of connections that are no test's.
static REGISTRY: std::sync::RwLock<Vec<(usize, Arc<State>)>> = std::sync::RwLock::new(Vec::new());
static ACTIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub(super) fn register(addr: usize, state: Arc<State>) {
    let mut r = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    r.retain(|(a, _)| *a != addr);
    r.push((addr, state));
    ACTIVE.store(r.len(), Ordering::Release);
}

pub(super) fn unregister(addr: usize, state: &Arc<State>) {
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
