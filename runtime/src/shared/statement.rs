//! Running one statement on the test's connection with production's
//! autocommit semantics: refused if it would end the test's transaction,
//! run after a fresh `dbt_auto` savepoint, undone alone if it fails, and
//! prepared again if DDL made sqlx's cached statement stale.

use std::sync::atomic::Ordering;

use sqlx::postgres::{PgConnection, PgTransactionManager};
use sqlx::{Connection, Either, Executor};
use sqlx_core::transaction::TransactionManager;

use super::SharedConn;
use super::errors::{commit_message, not_run_error, out_of_sync, poisoned_error, refused_commit};
use super::session::{GUARD_CONSTRAINT, GUARD_TABLE, check_deferred};
use super::state::{ConnState, lock, touches_session};
use crate::hint::sqlstate;
use crate::postgres::engine::quote_literal_e;
use crate::query::OwnedQuery;
use crate::sqltext::ends_transaction;

type Step = Either<sqlx::postgres::PgQueryResult, sqlx::postgres::PgRow>;

impl SharedConn {
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
}

/// Refuses, before it reaches the server, SQL that would end the test's
/// transaction (anywhere in a multi-statement string), and fails the test.
pub(crate) fn refuse_ending(state: &ConnState, sql: &str) -> Option<sqlx::Error> {
    if let Some(stmt) = crate::sqltext::names_managed_savepoint(sql) {
        let msg = format!(
            "db-test: refusing to run `{stmt}` in test `{}`: it names a savepoint that db-test \
             or sqlx manages in the test's transaction (`dbt_auto`, `_sqlx_savepoint_N`). Use \
             `db.begin()` and `tx.commit()` / `tx.rollback()`, or savepoints of your own.",
            state.label
        );
        state.poison(msg.clone());
        state.record(sql.to_string(), Some("refused by db-test".into()));
        return Some(poisoned_error(&msg));
    }
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
        return Err(not_run_error(&why));
    }
    let sql = query.sql.as_str().to_owned();
    if !state.touched_session.load(Ordering::Relaxed) && touches_session(&sql) {
        state.touched_session.store(true, Ordering::Relaxed);
    }
    if state.checks_constraints.load(Ordering::Relaxed)
        && !state.check_deferred.load(Ordering::Relaxed)
        && crate::sqltext::contains_any_ignore_case(&sql, &["DEFER"])
    {
        // A deferrable constraint made, or one deferred.
        state.check_deferred.store(true, Ordering::Relaxed);
    }
    if state.check_deferred.load(Ordering::Relaxed)
        && !state.defer_ddl.load(Ordering::Relaxed)
        && crate::sqltext::contains_any_ignore_case(&sql, &["DEFERRABLE", "ALTER", "DROP"])
    {
        // The deferrable constraints may no longer be the working
        // database's: each check reads them.
        state.defer_ddl.store(true, Ordering::Relaxed);
    }
    let autocommit = PgTransactionManager::get_transaction_depth(conn) == 1;
    if autocommit && !state.fresh.load(Ordering::Relaxed) {
        refresh_savepoint(state, conn, false, false).await?;
    }
    if crate::sqltext::contains_any_ignore_case(&sql, &["SETVAL"])
        && lock(&state.sequences).is_none()
    {
        save_sequences(state, conn).await;
    }
    // Settings the statement may make for the transaction only, and what
    // they were before it (or before the app transaction it runs in).
    let local = local_settings_before(state, conn, &sql, autocommit).await;
    // A `SET CONSTRAINTS .. IMMEDIATE` checks, at once, what is pending:
    // the commit guard's row too, which must be checked at COMMIT only.
    // It is taken out for the statement, and put back after it, deferred.
    let rearm = state.may_be_armed.load(Ordering::Relaxed)
        && crate::sqltext::contains_any_ignore_case(&sql, &["CONSTRAINTS"])
        && crate::sqltext::contains_any_ignore_case(&sql, &["IMMEDIATE"]);
    if rearm {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DELETE FROM pg_temp.{GUARD_TABLE}"
        )))
        .execute(&mut *conn)
        .await?;
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
    if rearm && result.is_ok() {
        // Put back where the statement ran: undone with it, should it be.
        result = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SET CONSTRAINTS pg_temp.{GUARD_CONSTRAINT} DEFERRED; \
             INSERT INTO pg_temp.{GUARD_TABLE} VALUES (1)"
        )))
        .execute(&mut *conn)
        .await
        .and(result);
    }
    let plain_read = autocommit && crate::sqltext::is_plain_read(&sql);
    if autocommit
        && !plain_read
        && result.is_ok()
        && state.check_deferred.load(Ordering::Relaxed)
        && let Err(e) = check_deferred(state, conn).await
    {
        // Production commits the statement on its own, and that COMMIT
        // fails: the statement fails, undone below.
        result = Err(e);
    }
    *lock(&state.in_flight) = None;
    state.record(sql, result.as_ref().err().map(|e| e.to_string()));
    if result.is_ok() && !local.is_empty() {
        if autocommit {
            // Production runs it in a transaction of its own, which ends
            // with it: its settings go with it.
            restore_local_settings(conn, local).await;
        } else {
            let mut kept = lock(&state.local_settings);
            for (name, value) in local {
                if !kept.iter().any(|(n, _)| *n == name) {
                    kept.push((name, value));
                }
            }
        }
    }
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
            let e = crate::hint::explain_error(e);
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

/// The settings `sql` may make for the current transaction only that are
/// not yet noted for the app transaction it runs in, with their values
/// before it (`None`: not defined). Empty for most statements, which
/// mention neither `SET LOCAL` nor `set_config`, and when the values cannot
/// be read (an aborted transaction, where the statement fails too). Read in
/// a savepoint of its own, so that a setting the test's role may not read
/// changes nothing for the test.
async fn local_settings_before(
    state: &ConnState,
    conn: &mut PgConnection,
    sql: &str,
    autocommit: bool,
) -> Vec<(String, Option<String>)> {
    use futures_util::TryStreamExt;
    use sqlx::Row;
    let mut names = crate::sqltext::local_setting_names(sql);
    let functions = lock(&state.function_settings).clone();
    for name in functions.of(sql) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if !autocommit {
        let kept = lock(&state.local_settings);
        names.retain(|n| !kept.iter().any(|(k, _)| k == n));
    }
    if names.is_empty() {
        return Vec::new();
    }
    let list = names
        .iter()
        .map(|n| quote_literal_e(Some(n)))
        .collect::<Vec<_>>();
    let read = format!(
        "SAVEPOINT dbt_settings; \
         SELECT n, pg_catalog.current_setting(n, true) FROM unnest(ARRAY[{}]::text[]) AS n; \
         RELEASE SAVEPOINT dbt_settings",
        list.join(", ")
    );
    let steps: sqlx::Result<Vec<Step>> = conn
        .fetch_many(sqlx::raw_sql(sqlx::AssertSqlSafe(read)))
        .try_collect()
        .await;
    match steps {
        Ok(steps) => steps
            .iter()
            .filter_map(|step| match step {
                Either::Right(row) => Some((
                    row.try_get::<String, _>(0).ok()?,
                    row.try_get::<Option<String>, _>(1).ok()?,
                )),
                Either::Left(_) => None,
            })
            .collect(),
        // Already aborted before: the SAVEPOINT did not run either.
        Err(e) if sqlstate(&e).as_deref() == Some("25P02") => Vec::new(),
        Err(_) => {
            let _ = conn
                .execute("ROLLBACK TO SAVEPOINT dbt_settings; RELEASE SAVEPOINT dbt_settings")
                .await;
            Vec::new()
        }
    }
}

/// Sets back settings made for the transaction only to their values before
/// it (a setting first defined by it to `''`, as the server leaves it when
/// a transaction ends), the role first, so that the others are set as the
/// test's own role. In a savepoint of its own: a setting that cannot be set
/// back stays, and the test's transaction goes on.
pub(super) async fn restore_local_settings(
    conn: &mut PgConnection,
    mut settings: Vec<(String, Option<String>)>,
) {
    settings.sort_by_key(|(n, _)| !matches!(n.as_str(), "role" | "session_authorization"));
    let rows = settings
        .iter()
        .map(|(n, v)| {
            format!(
                "({}, {})",
                quote_literal_e(Some(n)),
                quote_literal_e(v.as_deref())
            )
        })
        .collect::<Vec<_>>();
    let restore = format!(
        "SAVEPOINT dbt_settings; \
         SELECT pg_catalog.set_config(s.n, coalesce(s.v, ''), true) \
         FROM (VALUES {}) AS s(n, v) \
         WHERE pg_catalog.current_setting(s.n, true) IS DISTINCT FROM s.v; \
         RELEASE SAVEPOINT dbt_settings",
        rows.join(", ")
    );
    if let Err(e) = conn
        .execute(sqlx::raw_sql(sqlx::AssertSqlSafe(restore)))
        .await
        && sqlstate(&e).as_deref() != Some("25P02")
    {
        let _ = conn
            .execute("ROLLBACK TO SAVEPOINT dbt_settings; RELEASE SAVEPOINT dbt_settings")
            .await;
    }
}

/// The value `nextval` of the sequence `{id}` (an oid; `s` its
/// `pg_sequence` row) would hand out next: its last value plus its
/// increment once called, its last value as set before that (which
/// `pg_sequence_last_value` does not give: it is read from the sequence).
macro_rules! next_value_sql {
    ($id:literal) => {
        concat!(
            "coalesce(pg_sequence_last_value(", $id, ")::numeric + s.seqincrement, \
             (xpath('/row/last_value/text()', query_to_xml(format('SELECT last_value FROM %s', ",
            $id,
            "::regclass), false, true, '')))[1]::text::numeric)"
        )
    };
}

/// The sequences of the working database that the test's role can read,
/// as `(oid, next value)` rows: what [`restore_sequences`] goes back to.
const SAVE_SEQUENCES: &str = concat!(
    "SAVEPOINT dbt_seq; \
     SELECT coalesce(string_agg(format('(%s::oid, %s::numeric)', c.oid, ",
    next_value_sql!("c.oid"),
    "), ', '), '') \
     FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid \
     WHERE c.relpersistence <> 't' \
       AND CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(c.oid, 'SELECT') END; \
     RELEASE SAVEPOINT dbt_seq"
);

/// Before the test's first `setval`: notes where the sequences stand, in a
/// savepoint of its own, so that a failure here changes nothing for the
/// test (its statement then runs as it would have).
async fn save_sequences(state: &ConnState, conn: &mut PgConnection) {
    use futures_util::TryStreamExt;
    use sqlx::Row;
    let rows: sqlx::Result<Vec<Step>> = conn
        .fetch_many(sqlx::raw_sql(SAVE_SEQUENCES))
        .try_collect()
        .await;
    match rows {
        Ok(steps) => {
            let values = steps.iter().find_map(|step| match step {
                Either::Right(row) => row.try_get::<String, _>(0).ok(),
                Either::Left(_) => None,
            });
            *lock(&state.sequences) = values;
        }
        // Already aborted before: the SAVEPOINT did not run either.
        Err(e) if sqlstate(&e).as_deref() == Some("25P02") => {}
        Err(_) => {
            let _ = conn
                .execute("ROLLBACK TO SAVEPOINT dbt_seq; RELEASE SAVEPOINT dbt_seq")
                .await;
        }
    }
}

/// After the test's transaction: a sequence the test's `setval` moved back
/// is moved forward again to where [`save_sequences`] found it, so that no
/// later test (in this process or another) is handed ids that rows it
/// cannot see may hold. Never back: other tests, still running, may hold
/// the ids it handed out since, and would be handed them again. In a
/// transaction of its own that is rolled back: `setval` outlives it, and
/// the session defaults to read-only ones.
pub(super) async fn restore_sequences(values: &str, conn: &mut PgConnection) -> bool {
    if values.is_empty() {
        return true;
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN READ WRITE; \
         SELECT setval(v.id, greatest(least(v.next, s.seqmax), s.seqmin)::int8, false) \
         FROM (VALUES {values}) AS v(id, next) JOIN pg_sequence s ON s.seqrelid = v.id \
         WHERE sign(s.seqincrement) * ({} - v.next) < 0; \
         ROLLBACK",
        next_value_sql!("v.id")
    )))
    .execute(conn)
    .await
    .is_ok()
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

/// Moves `dbt_auto` up to the current state (first undoing the block since
/// it, with `undo`): the one way db-test renews its savepoint. With `arm`,
/// the commit guard's row goes in at the top level of the test's
/// transaction, between the two savepoints, so that no rollback to
/// `dbt_auto` can take it out. A block a failed statement on the raw
/// connection left aborted is undone too. Any other failure ends the test.
pub(super) async fn refresh_savepoint(
    state: &ConnState,
    conn: &mut PgConnection,
    undo: bool,
    arm: bool,
) -> sqlx::Result<()> {
    let refresh = format!(
        "RELEASE SAVEPOINT dbt_auto; {}SAVEPOINT dbt_auto",
        if arm {
            // Deferred even after a `SET CONSTRAINTS ALL IMMEDIATE`.
            format!(
                "SET CONSTRAINTS pg_temp.{GUARD_CONSTRAINT} DEFERRED; \
                 INSERT INTO pg_temp.{GUARD_TABLE} VALUES (1); "
            )
        } else {
            String::new()
        },
    );
    if arm {
        state.may_be_armed.store(true, Ordering::Relaxed);
    }
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
        // Aborted by something db-test did not see fail: a statement sent
        // on the bare connection of a guard.
        eprintln!("{}", aborted_out_of_sight(&state.label));
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

/// What a test is told when a statement sent on the bare connection of a
/// guard failed, out of db-test's sight: PostgreSQL aborted the test's
/// transaction block, which production's autocommit would not have had.
fn aborted_out_of_sight(label: &str) -> String {
    format!(
        "db-test: in test `{label}`: a statement sent on the bare `PgConnection` of a guard \
         (a helper taking `&mut PgConnection`, `&mut **conn`, the connection `sqlx::Acquire` \
         hands out) failed. db-test does not see such statements, so on PostgreSQL the \
         failure aborted the test's transaction block: the statements after it on that \
         connection failed (\"current transaction is aborted\"), and everything sent there \
         since the guard was taken is undone now, where production's autocommit keeps each \
         statement that succeeded. Let such a helper take `&mut DbConn` (`&mut *conn` gives \
         it): db-test reads its statements and gives each production's autocommit."
    )
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
