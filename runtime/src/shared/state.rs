//! What a test's connection carries besides the connection ([`ConnState`]):
//! the statement log, the test's flags, and the registry that finds them
//! from the bare connection behind a guard.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::postgres::PgConnection;

/// How many statements a test keeps for its failure report.
pub(crate) const STATEMENT_LOG_LEN: usize = 20;

/// The statements that ran on a test's connection: how many, and the last
/// few, for `assert_queries` and the failure report. Kept apart from the
/// connection's lock, so that statements sent on a guard holding that lock
/// (`DbConnection`, `DbTransaction`) are recorded too.
#[derive(Default)]
pub(crate) struct Counters {
    pub(super) statements: u64,
    pub(super) log: VecDeque<LoggedStatement>,
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

/// One statement run on the test's connection, for diagnostics.
#[derive(Clone, Debug)]
pub(crate) struct LoggedStatement {
    pub(crate) sql: String,
    pub(crate) error: Option<String>,
}

/// What a test's connection carries besides the connection itself, shared
/// between the test's `Db` statements (under the connection's lock) and
/// statements sent on a guard that holds that lock (`&mut DbConn`, which
/// finds it through the registry below).
#[derive(Default)]
pub(crate) struct ConnState {
    /// The test's name.
    pub(super) label: String,
    pub(super) counters: std::sync::Mutex<Counters>,
    /// `dbt_auto` marks the current state: nothing ran since it was set.
    pub(super) fresh: AtomicBool,
    /// A statement whose future was dropped before its reply was read (a
    /// timeout, a `select!`, an aborted task): the reply is still on the
    /// connection.
    pub(super) in_flight: std::sync::Mutex<Option<String>>,
    /// Set when the test's transaction was ended, or the connection broke.
    pub(super) poisoned: std::sync::Mutex<Option<String>>,
    /// The commit guard's row is in the test's transaction. It goes in when
    /// the test first takes a guard: SQL sent through `Db` or `&mut DbConn`
    /// is checked by db-test itself, so only the bare connection behind a
    /// guard can send a COMMIT that only the server can stop.
    pub(super) armed: AtomicBool,
    /// The guard's row may be in the test's transaction: set before the
    /// statement that inserts it is sent (a caller dropped meanwhile leaves
    /// `armed` unset, and the row in), so that teardown deletes it before
    /// checking deferred constraints.
    pub(super) may_be_armed: AtomicBool,
    /// The test may have left session state behind (DDL, SQL `PREPARE`,
    /// advisory locks, sequence state), or used a guard, behind which
    /// db-test cannot see: teardown then checks and resets the session.
    pub(super) touched_session: AtomicBool,
    /// The working database's sequences as they were before the test's
    /// first `setval` (`(oid, next value)` rows of a `VALUES` list):
    /// `setval` is not undone by a rollback, so teardown moves forward again
    /// the ones it moved back.
    pub(super) sequences: std::sync::Mutex<Option<String>>,
    /// Deferred constraints are checked where production's COMMIT would
    /// check them: after each statement outside an app transaction, and at
    /// the outermost app transaction's `commit()`. Set for a test that
    /// checks constraints (`check_constraints`) when the working database
    /// has deferrable ones, or the test's SQL mentions deferring.
    pub(super) check_deferred: AtomicBool,
    /// The test's `check_constraints`.
    pub(super) checks_constraints: AtomicBool,
    /// The working database's `INITIALLY IMMEDIATE` deferrable constraints,
    /// qualified, which a check sets back to immediate.
    pub(super) immediate_constraints: std::sync::Mutex<String>,
    /// The settings the working database's functions may make for the
    /// transaction only, for a statement that calls one or fires a trigger
    /// that runs one.
    pub(super) function_settings: std::sync::Mutex<Arc<super::session::FunctionSettings>>,
    /// The test's SQL may have changed the deferrable constraints
    /// (`DEFERRABLE`, `ALTER`, `DROP`): a check then reads them from the
    /// catalog.
    pub(super) defer_ddl: AtomicBool,
    /// Settings made for the current transaction only (`SET LOCAL`,
    /// `set_config(.., true)`) inside the outermost open app transaction, as
    /// `(name, value before it)`: its `commit()` is a `RELEASE SAVEPOINT`,
    /// which keeps them, where production's `COMMIT` drops them; db-test
    /// sets them back after it. (Its `rollback()` drops them by itself.)
    pub(super) local_settings: std::sync::Mutex<Vec<(String, Option<String>)>>,
    /// The body ran on a runtime of its own, dropped with its tasks: a
    /// transaction from `Acquire::begin` that such a task held went with it,
    /// as under `#[tokio::test]`, and its connection with it (the server
    /// rolled back everything on it; the commit guard kept it from
    /// committing).
    pub(super) runtime_dropped: AtomicBool,
}

/// Whether SQL sent through `Db` or a guard may leave session state that
/// survives ROLLBACK, or stale cached statements.
pub(super) fn touches_session(sql: &str) -> bool {
    crate::sqltext::contains_any_ignore_case(
        sql,
        &[
            "CREATE", "ALTER", "DROP", "PREPARE", "ADVISORY", "VAL(", "DISCARD", "CALL ", "DO ",
            "DO$", "IMPORT",
        ],
    ) || crate::sqltext::may_select_into(sql)
}

pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConnState {
    pub(crate) fn record(&self, sql: String, error: Option<String>) {
        lock(&self.counters).record(sql, error);
    }

    pub(super) fn poisoned(&self) -> Option<String> {
        lock(&self.poisoned).clone()
    }

    pub(super) fn poison(&self, why: String) {
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

pub(super) fn register(addr: usize, state: Arc<ConnState>) {
    let mut r = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    r.retain(|(a, _)| *a != addr);
    r.push((addr, state));
    ACTIVE.store(r.len(), Ordering::Release);
}

/// Removes this state's entry (and no newer one at the same address).
pub(super) fn unregister(addr: usize, state: &Arc<ConnState>) {
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
