//! Running one statement on the test's connection with production's
//! autocommit semantics: refused if the backend says so, else run in the
//! test's transaction, where a failure undoes that statement alone.
//!
//! MySQL and SQLite undo a failed statement alone and keep what came before
//! it in the transaction (PostgreSQL aborts the whole transaction, which is
//! why its core sets a savepoint before every statement). So no savepoint
//! is set per statement here: after a failure, one round trip checks that
//! the error did not end the test's transaction
//! ([`check_open`](super::check_open)); a statement that succeeds costs
//! nothing more than in production. A failing multi-statement string keeps
//! its statements before the failing one, as production's autocommit does.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::TryStreamExt;

use super::errors::{
    committed_on_a_guard, committed_unseen, ended_by_database, is_broken, never_sent, out_of_sync,
    poisoned_error,
};
use super::recover::{CANCEL_AFTER, recover_dropped};
use super::state::State;
use super::{Dialect, OwnedQuery, Shared, SlotGuard, check_open, depth, exec, lock};
use crate::generic::Step;

impl<DB: Dialect> Shared<DB> {
    /// Runs one statement of `Db` on the test's connection.
    pub(crate) async fn run(
        self: &Arc<Self>,
        query: OwnedQuery<DB>,
    ) -> sqlx::Result<Vec<Step<DB>>> {
        let mut guard = self.lock().await?;
        // (A test already failing, by a deadlock say, gets its error from
        // the statement: nothing to probe.)
        if self.state.probe_once.swap(false, Ordering::Relaxed)
            && lock(&self.state.poisoned).is_none()
        {
            probe_after_guard::<DB>(&self.state, &mut guard).await?;
        }
        self.locked_statement(guard, query).await
    }

    /// The statement on the locked connection. It owns the connection's
    /// lock, so that a caller that drops it midway can leave it to a task
    /// that reads its reply to the end (see `Dialect::DETACH_STATEMENTS`);
    /// polled by the caller otherwise, at no cost. Built here, not in
    /// [`Shared::run`]: its future would take room in that function's frame
    /// (in a debug build), on the test's thread, for every statement.
    fn locked_statement(
        self: &Arc<Self>,
        guard: SlotGuard<DB>,
        query: OwnedQuery<DB>,
    ) -> Detached<DB> {
        let shared = self.clone();
        Detached::<DB> {
            statement: Some(Box::pin(
                async move { shared.run_locked(guard, query).await },
            )),
            polled: false,
            state: self.state.clone(),
        }
    }

    /// [`run_on`] the locked connection. The test's first statement is sent
    /// again on another connection if it could not be sent because the
    /// server had ended the session of the one the test was given (see
    /// [`Shared::replace`] and [`never_sent`]).
    async fn run_locked(
        &self,
        mut guard: SlotGuard<DB>,
        query: OwnedQuery<DB>,
    ) -> sqlx::Result<Vec<Step<DB>>> {
        let again = match guard.first {
            true => query.try_clone(),
            false => None,
        };
        let Some(again) = again else {
            return run_on::<DB>(&self.state, guard.conn_mut(), query).await;
        };
        match run_statement::<DB>(&self.state, guard.conn_mut(), query, true).await {
            Ran::Done(result) => result,
            Ran::Gone(e) => {
                self.replace(&mut guard.guard, &e).await?;
                run_on::<DB>(&self.state, guard.conn_mut(), again).await
            }
        }
    }
}

/// The first statement through `Db` after a guard from `acquire()` handed
/// out the bare connection: is the test's transaction still open? Something
/// sent there, out of db-test's sight, may have ended it: a `COMMIT`, or on
/// MySQL a statement that commits implicitly, such as the `CREATE TABLE IF
/// NOT EXISTS _sqlx_migrations` of an app's `sqlx::migrate!().run(&db)`.
/// Then every statement after it would commit on its own: the test is
/// failed now, and nothing more of it runs. Boxed: the statement path's
/// frame does not hold it.
fn probe_after_guard<'a, DB: Dialect>(
    state: &'a State,
    guard: &'a mut SlotGuard<DB>,
) -> futures_util::future::BoxFuture<'a, sqlx::Result<()>> {
    Box::pin(async move {
        match check_open::<DB>(guard.conn_mut()).await {
            Err(gone) if !is_broken(&gone) && DB::transaction_gone(&gone) => {
                // Committed: the working database is rebuilt.
                state.ended_out_of_sight.store(true, Ordering::Relaxed);
                let msg = committed_on_a_guard(&state.label, &gone, DB::SHARED_WORKING_DATABASE);
                state.poison(msg.clone());
                Err(poisoned_error(&msg))
            }
            other => other,
        }
    })
}

type Statement<DB> = futures_util::future::BoxFuture<'static, sqlx::Result<Vec<Step<DB>>>>;

/// A statement that owns the connection's lock. Dropped after it started
/// and before it ended (its caller gave up on it), the rest of it runs in a
/// task of the shared runtime, and is stopped if it still runs
/// [`CANCEL_AFTER`] later, as a dropped statement is.
struct Detached<DB: Dialect> {
    statement: Option<Statement<DB>>,
    polled: bool,
    state: Arc<State>,
}

impl<DB: Dialect> std::future::Future for Detached<DB> {
    type Output = sqlx::Result<Vec<Step<DB>>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.polled = true;
        let statement = self.statement.as_mut().expect("polled after it ended");
        let out = std::task::ready!(statement.as_mut().poll(cx));
        self.statement = None;
        std::task::Poll::Ready(out)
    }
}

impl<DB: Dialect> Drop for Detached<DB> {
    fn drop(&mut self) {
        let Some(mut statement) = self.statement.take() else {
            return;
        };
        if !self.polled || !DB::DETACH_STATEMENTS {
            // Never started: nothing was sent; or the backend's statements
            // are dropped with their caller (see `DETACH_STATEMENTS`).
            return;
        }
        let state = self.state.clone();
        crate::run::shared_runtime().spawn(async move {
            if tokio::time::timeout(CANCEL_AFTER, &mut statement)
                .await
                .is_ok()
            {
                return;
            }
            let sql = lock(&state.in_flight).clone();
            let canceller = lock(&state.canceller)
                .clone()
                .filter(|c| sql.as_deref().is_some_and(|sql| c.can_cancel(sql)));
            if let Some(canceller) = &canceller {
                canceller.cancel().await;
            }
            let _ = statement.await;
            if let Some(canceller) = canceller {
                canceller.done();
            }
        });
    }
}

/// Runs one statement on the test's connection (through `Db`, or on a
/// guard through `&mut DbConn`): refused if the backend says so, else run
/// with production's autocommit semantics (a failure undone alone), counted
/// and logged, and marked in flight while it runs.
pub(crate) async fn run_on<DB: Dialect>(
    state: &State,
    conn: &mut DB::Connection,
    query: OwnedQuery<DB>,
) -> sqlx::Result<Vec<Step<DB>>> {
    match run_statement::<DB>(state, conn, query, false).await {
        Ran::Done(result) => result,
        Ran::Gone(e) => Err(e),
    }
}

/// What [`run_statement`] did.
enum Ran<DB: Dialect> {
    Done(sqlx::Result<Vec<Step<DB>>>),
    /// The test's first statement found the connection's session gone:
    /// nothing recorded, the test not poisoned; to be sent again.
    Gone(sqlx::Error),
}

/// [`run_on`]; `first`: the test's first statement, which reports a
/// session found gone rather than failing the test with it.
async fn run_statement<DB: Dialect>(
    state: &State,
    conn: &mut DB::Connection,
    query: OwnedQuery<DB>,
    first: bool,
) -> Ran<DB> {
    if let Some(e) = state.poisoned_error() {
        return Ran::Done(Err(e));
    }
    if let Err(e) = recover_dropped::<DB>(state, conn).await {
        return Ran::Done(Err(e));
    }
    let sql = query.sql.as_str().to_owned();
    let touches = (state.touches_session)(&sql);
    let cautious = touches
        || state.touched.load(Ordering::Relaxed)
        || state.out_of_sight.load(Ordering::Relaxed);
    if let Some(why) = (state.refuse)(&sql, cautious) {
        let msg = format!(
            "db-test: refusing to run `{}` in test `{}`: {why}",
            crate::sqltext::excerpt(&sql, 200),
            state.label
        );
        state.poison(msg.clone());
        state.record(sql, Some("refused by db-test".into()));
        return Ran::Done(Err(poisoned_error(&msg)));
    }
    if touches && !state.touched.load(Ordering::Relaxed) {
        state.touched.store(true, Ordering::Relaxed);
    }
    if touches && let Some(advice) = DB::advice(&sql) {
        eprintln!("db-test: in test `{}`: {advice}", state.label);
    }
    if !state.advised_once.load(Ordering::Relaxed)
        && let Some(advice) = DB::advice_once(&sql)
    {
        state.advised_once.store(true, Ordering::Relaxed);
        eprintln!("db-test: in test `{}`: {advice}", state.label);
    }
    if touches && DB::changes_schema(&sql) {
        state.schema_changed.store(true, Ordering::Relaxed);
    }
    if (state.schema_changed.load(Ordering::Relaxed)
        | state.clear_once.swap(false, Ordering::Relaxed))
        && let Some(clear) = DB::clear_statements(conn)
    {
        // A statement sqlx cached before the schema changed (or before a
        // rollback undid the change) keeps the columns it was prepared
        // with, which SQLite's re-prepared statement no longer has.
        if let Err(e) = clear.await {
            return Ran::Done(Err(e));
        }
    }
    if !state.check_deferred.load(Ordering::Relaxed)
        && state.checks_constraints.load(Ordering::Relaxed)
        && crate::sqltext::contains_any_ignore_case(&sql, &["DEFER"])
    {
        // A deferred key made, or every key deferred.
        state.check_deferred.store(true, Ordering::Relaxed);
    }
    // Outside a transaction (sqlx's, or one the test's own savepoints
    // began) production commits each statement on its own.
    let at_top = depth::<DB>(conn) == 1;
    let autocommit = at_top && lock(&state.own_savepoints).is_empty();
    let names_savepoints =
        at_top && crate::sqltext::contains_any_word_ignore_case(&sql, &["SAVEPOINT", "RELEASE"]);
    if let Some((word, _)) = DB::RESET_AT_TRANSACTION_END
        && !state.reset_at_end.load(Ordering::Relaxed)
        && crate::sqltext::contains_any_ignore_case(&sql, &[word])
    {
        state.reset_at_end.store(true, Ordering::Relaxed);
    }
    // Outside a transaction production commits the statement on its own,
    // and that COMMIT fails on a deferred constraint the statement left
    // broken, which undoes it: here it runs in a savepoint of its own, to
    // be undone. (The name is db-test's, which no statement of the test's
    // may use; this one, innermost, is the one named.) Not around the
    // test's own savepoints, which a `RELEASE` of this one would release
    // too, or whose `ROLLBACK TO` would cancel this one.
    let deferred = state.check_deferred.load(Ordering::Relaxed)
        && autocommit
        && !crate::sqltext::is_plain_read(&sql)
        && !crate::sqltext::contains_any_word_ignore_case(
            &sql,
            &["SAVEPOINT", "RELEASE", "ROLLBACK"],
        );
    if deferred && let Err(e) = exec::<DB>(conn, "SAVEPOINT db_test_auto").await {
        return if first && never_sent(&e) {
            Ran::Gone(e)
        } else {
            Ran::Done(Err(e))
        };
    }
    let unseen = DB::may_commit_unseen(&sql);
    // In flight from here: dropped during the statement, the next user
    // finds out where the connection stands.
    *lock(&state.in_flight) = Some(sql.clone());
    let mut result: sqlx::Result<Vec<Step<DB>>> = DB::conn_fetch_many(conn, query)
        .try_collect()
        .await
        .map_err(DB::explain);
    if deferred {
        let violation = match (&result, DB::deferred_violation(conn)) {
            (Ok(_), Some(ask)) => ask.await,
            _ => Ok(None),
        };
        let end = match violation {
            Ok(None) => exec::<DB>(conn, "RELEASE db_test_auto").await,
            Ok(Some(e)) | Err(e) => {
                result = Err(e);
                exec::<DB>(conn, "ROLLBACK TO db_test_auto; RELEASE db_test_auto").await
            }
        };
        if let Err(e) = end
            && result.is_ok()
        {
            result = Err(e);
        }
    }
    if names_savepoints && result.is_ok() {
        // Once they ran: a string that failed opened none, or not all.
        DB::track_savepoints(&sql, &mut lock(&state.own_savepoints));
    }
    if autocommit
        && state.reset_at_end.load(Ordering::Relaxed)
        && !crate::sqltext::is_plain_read(&sql)
        && !crate::sqltext::contains_any_word_ignore_case(&sql, &["PRAGMA"])
        && let Some((_, reset)) = DB::RESET_AT_TRANSACTION_END
        && let Err(e) = exec::<DB>(conn, reset).await
        && result.is_ok()
    {
        // Production's own COMMIT of the statement resets it (a read or a
        // `PRAGMA` opens no transaction that would).
        result = Err(e);
    }
    *lock(&state.in_flight) = None;
    if first
        && let Err(e) = &result
        && never_sent(e)
    {
        // The session ended before the test sent anything: its transaction
        // held nothing of the test's, and the statement did not run.
        return Ran::Gone(result.err().expect("an error"));
    }
    state.record(sql, result.as_ref().err().map(|e| e.to_string()));
    if let Err(e) = &result
        && is_broken(e)
    {
        state.broken.store(true, Ordering::Relaxed);
        state.poison(out_of_sync(&state.label, e));
        return Ran::Done(result);
    }
    // A failed statement was undone by the server alone, unless its error
    // ended the test's transaction (a deadlock does, app savepoints and
    // all: every later statement would then run outside it, and commit).
    // A `CALL` may have committed inside the procedure, failed or not.
    if (unseen || result.is_err())
        && let Err(gone) = check_open::<DB>(conn).await
    {
        match &result {
            Err(e) if !unseen => {
                state.ended_by_database(ended_by_database(&state.label, e, &gone));
            }
            _ => {
                // Committed: the working database is rebuilt.
                state.ended_out_of_sight.store(true, Ordering::Relaxed);
                state.ended_by_database(committed_unseen(&state.label, &gone));
            }
        }
    }
    Ran::Done(result)
}
