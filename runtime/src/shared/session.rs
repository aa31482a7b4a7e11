//! The session a test's connection runs in: the commit guard's tables and
//! read-only default set up once per connection, the count of catalog writes
//! that makes sqlx's cached statements stale, and reading the session's
//! state at the end of a test.

use sqlx::postgres::PgConnection;
use sqlx::{Either, Executor};

/// The temporary table whose row, inserted when the test's transaction
/// begins, fails a deferred foreign key at any COMMIT of that transaction:
/// whoever sends the COMMIT (the app, a multi-statement string, a raw
/// connection), it fails and the transaction is rolled back. Nothing a test
/// does in transaction mode can be committed.
pub(super) const GUARD_TABLE: &str = "db_test_commit_guard";
/// The constraint's name, which the COMMIT's error names.
pub(crate) const GUARD_CONSTRAINT: &str = "db_test_refuses_to_commit_a_test_transaction";

/// Sets up a new connection of a working database's pool, once for its
/// lifetime (temporary objects live as long as the session): the commit
/// guard's tables (open to every role: a test may `SET ROLE` before its
/// first guard arms them), and a session that defaults to read-only transactions, so
/// that after a COMMIT that got past everything nothing can be written
/// outside the test's transaction either (db-test's own BEGIN says READ
/// WRITE). No `idle_in_transaction_session_timeout` (a migration's `ALTER
/// DATABASE .. SET`): the test's session is in a transaction from its first
/// statement to its last, idle whenever the test waits, where production's
/// autocommit sessions are idle outside one. On PostgreSQL 15+ the
/// statistics of these writes are flushed, so that they do not count as a
/// test's catalog writes.
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
         GRANT ALL ON pg_temp.{GUARD_TABLE}, pg_temp.{GUARD_TABLE}_key TO PUBLIC; \
         COMMIT; \
         SET SESSION default_transaction_read_only = on; \
         SET SESSION idle_in_transaction_session_timeout = 0{flush}"
    )))
    .execute(&mut *conn)
    .await
    .map(|_| ())
}

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
pub(super) const CATALOG_WRITES: &str = "(pg_stat_get_xact_tuples_inserted(1249) + pg_stat_get_xact_tuples_updated(1249) \
     + pg_stat_get_xact_tuples_deleted(1249) + pg_stat_get_xact_tuples_inserted(1259) \
     + pg_stat_get_xact_tuples_updated(1259) + pg_stat_get_xact_tuples_deleted(1259) \
     + pg_stat_get_xact_tuples_inserted(1247) + pg_stat_get_xact_tuples_updated(1247) \
     + pg_stat_get_xact_tuples_deleted(1247) + pg_stat_get_xact_tuples_inserted(2618) \
     + pg_stat_get_xact_tuples_updated(2618) + pg_stat_get_xact_tuples_deleted(2618) \
     + pg_stat_get_xact_tuples_inserted(1255) + pg_stat_get_xact_tuples_updated(1255) \
     + pg_stat_get_xact_tuples_deleted(1255))::int8";

/// Whether the server can be told to flush its pending statistics
/// (`pg_stat_force_next_flush`, PostgreSQL 15).
pub(super) fn can_force_flush(conn: &PgConnection) -> bool {
    conn.server_version_num().unwrap_or(0) >= 150000
}

/// The end-of-test state: session advisory locks released, catalog writes
/// during the test (-1 if that is unknown), and the SQL-`PREPARE`d
/// statements.
pub(super) fn session_state_sql(baseline: bool) -> String {
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

/// Runs the end-of-test check and reads the session's state from its
/// `dbt_ddl`/`dbt_prepared` row. Returns that state if the row came, and the
/// error that stopped the check, if any.
pub(super) async fn session_state(
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

/// The session settings a statement can change (`SET`, `set_config`), as
/// `(names, values)`.
const SETTINGS_SQL: &str = "SELECT name, setting FROM pg_catalog.pg_settings \
     WHERE context IN ('user', 'superuser') ORDER BY name";

/// Sets back the settings that differ from `$1`/`$2` (names and values).
const RESTORE_SETTINGS_SQL: &str = "SELECT pg_catalog.set_config(b.name, b.setting, false) \
     FROM unnest($1::text[], $2::text[]) AS b(name, setting) \
     JOIN pg_catalog.pg_settings s USING (name) WHERE s.setting IS DISTINCT FROM b.setting";

/// The database's deferrable constraints (foreign keys, constraint
/// triggers, ...), other than db-test's own and temporary ones: whether it
/// has any, and the qualified names of those that are `INITIALLY
/// IMMEDIATE` (see [`check_deferred`]).
const DEFERRABLE_SQL: &str = "SELECT count(*) > 0, coalesce(string_agg(format('%I.%I', \
       n.nspname, c.conname), ', ') FILTER (WHERE NOT c.condeferred AND NOT EXISTS ( \
         SELECT 1 FROM pg_catalog.pg_constraint d WHERE d.connamespace = c.connamespace \
           AND d.conname = c.conname AND d.condeferred)), '') \
     FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_namespace n ON n.oid = c.connamespace \
     WHERE c.condeferrable AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
       AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'";

/// [`DEFERRABLE_SQL`]'s `INITIALLY IMMEDIATE` ones made immediate again,
/// read when the check runs (the test changed the schema), the session's
/// temporary ones included.
const IMMEDIATE_AGAIN: &str = "DO $dbt$DECLARE l text; BEGIN \
     SELECT string_agg(format('%I.%I', n.nspname, c.conname), ', ') INTO l \
     FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_namespace n ON n.oid = c.connamespace \
     WHERE c.condeferrable AND NOT c.condeferred \
       AND (n.oid = pg_catalog.pg_my_temp_schema() OR n.nspname NOT LIKE 'pg\\_temp\\_%') \
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint d \
         WHERE d.connamespace = c.connamespace AND d.conname = c.conname AND d.condeferred); \
     IF l IS NOT NULL THEN EXECUTE 'SET CONSTRAINTS ' || l || ' IMMEDIATE'; END IF; END$dbt$";

/// Checks the deferred constraints now, as a COMMIT would, and fails with
/// the constraint's error as the COMMIT would; then, as after a COMMIT,
/// each deferrable constraint is back to its initial mode (`SET
/// CONSTRAINTS` lasts for a transaction in production). What it checked
/// stays checked. The commit guard's row is taken out for the check and
/// put back. A failed check changes nothing (its savepoint is rolled back).
///
/// `SET CONSTRAINTS` names a constraint by schema and name only: an
/// `INITIALLY IMMEDIATE` one that shares its name with an `INITIALLY
/// DEFERRED` one in its schema stays deferred (checked at the next check,
/// not at its statement), and one the test's role cannot reach (no `USAGE`
/// on its schema) too.
pub(super) async fn check_deferred(
    state: &super::state::ConnState,
    conn: &mut PgConnection,
) -> sqlx::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let armed = state.may_be_armed.load(Relaxed);
    let (disarm, rearm) = if armed {
        (
            format!("DELETE FROM pg_temp.{GUARD_TABLE}; "),
            format!("INSERT INTO pg_temp.{GUARD_TABLE} VALUES (1); "),
        )
    } else {
        (String::new(), String::new())
    };
    let check = format!(
        "SAVEPOINT dbt_check; {disarm}SET CONSTRAINTS ALL IMMEDIATE; \
         SET CONSTRAINTS ALL DEFERRED; {rearm}RELEASE SAVEPOINT dbt_check"
    );
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(check))
        .execute(&mut *conn)
        .await
    {
        if e.as_database_error().is_some() && crate::hint::sqlstate(&e).as_deref() != Some("25P02")
        {
            conn.execute("ROLLBACK TO SAVEPOINT dbt_check; RELEASE SAVEPOINT dbt_check")
                .await?;
        }
        return Err(e);
    }
    let immediate = if state.defer_ddl.load(Relaxed) {
        IMMEDIATE_AGAIN.to_string()
    } else {
        let names = super::state::lock(&state.immediate_constraints);
        if names.is_empty() {
            return Ok(());
        }
        format!("SET CONSTRAINTS {names} IMMEDIATE")
    };
    // Apart, in a savepoint of its own: one that cannot be set back stays
    // deferred, and the test goes on.
    let modes = format!("SAVEPOINT dbt_modes; {immediate}; RELEASE SAVEPOINT dbt_modes");
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(modes))
        .execute(&mut *conn)
        .await
        && e.as_database_error().is_some()
    {
        conn.execute("ROLLBACK TO SAVEPOINT dbt_modes; RELEASE SAVEPOINT dbt_modes")
            .await?;
    }
    Ok(())
}

/// The working database's own functions (`plpgsql`, `sql`, ...: not C, and
/// not an extension's),
/// as `(name, definition)`, and which of them triggers run: what settings
/// a statement that calls one, or that writes, may make for the
/// transaction only (see [`FunctionSettings`]).
const FUNCTIONS_SQL: &str = "SELECT p.proname::text, pg_catalog.pg_get_functiondef(p.oid), \
       EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgfoid = p.oid AND NOT t.tgisinternal) \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
     WHERE p.prokind IN ('f', 'p') AND l.lanname NOT IN ('c', 'internal') \
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
       AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast%' \
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
         WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')";

/// The settings the working database's functions make for the transaction
/// only (`set_config('name', .., true)`, `SET LOCAL`, found in their
/// definitions), themselves or through the functions they call.
#[derive(Default)]
pub(crate) struct FunctionSettings {
    /// By function name (overloads together).
    pub(super) by_function: std::collections::HashMap<String, Vec<String>>,
    /// Those of the functions triggers run: a write may make them.
    pub(super) by_trigger: Vec<String>,
}

impl FunctionSettings {
    /// From `(name, definition, run by a trigger)` rows.
    fn read(functions: &[(String, String, bool)]) -> Self {
        use std::collections::HashMap;
        let mut direct: HashMap<&str, Vec<String>> = HashMap::new();
        let mut calls: HashMap<&str, Vec<String>> = HashMap::new();
        for (name, definition, _) in functions {
            let names = direct.entry(name).or_default();
            for n in crate::sqltext::local_setting_names(definition) {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            calls
                .entry(name)
                .or_default()
                .extend(crate::sqltext::called_functions(definition));
        }
        // Through the functions each one calls, a few levels deep.
        let mut all = direct.clone();
        for _ in 0..4 {
            let mut changed = false;
            for (name, called) in &calls {
                let mut add = Vec::new();
                for c in called {
                    if let Some(ns) = all.get(c.as_str()) {
                        add.extend(ns.iter().cloned());
                    }
                }
                let names = all.entry(name).or_default();
                for n in add {
                    if !names.contains(&n) {
                        names.push(n);
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let mut by_trigger: Vec<String> = Vec::new();
        for (name, _, trigger) in functions {
            if *trigger {
                for n in &all[name.as_str()] {
                    if !by_trigger.contains(n) {
                        by_trigger.push(n.clone());
                    }
                }
            }
        }
        FunctionSettings {
            by_function: all
                .into_iter()
                .filter(|(_, ns)| !ns.is_empty())
                .map(|(f, ns)| (f.to_string(), ns))
                .collect(),
            by_trigger,
        }
    }

    /// The settings `sql` may make through the functions it calls, or
    /// (a write) the triggers it may fire.
    pub(super) fn of(&self, sql: &str) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        if !self.by_function.is_empty() {
            for f in crate::sqltext::called_functions(sql) {
                for n in self.by_function.get(&f).into_iter().flatten() {
                    if !names.contains(n) {
                        names.push(n.clone());
                    }
                }
            }
        }
        if !self.by_trigger.is_empty() && !crate::sqltext::is_plain_read(sql) {
            for n in &self.by_trigger {
                if !names.contains(n) {
                    names.push(n.clone());
                }
            }
        }
        names
    }
}

/// What a test in transaction mode needs to know of its working database's
/// schema, read once per process by its first test.
#[derive(Clone, Default)]
pub(crate) struct SchemaFacts {
    /// It has deferrable constraints (see [`DEFERRABLE_SQL`]).
    defers: bool,
    /// The `INITIALLY IMMEDIATE` ones, qualified, comma-separated.
    immediate: String,
    /// The settings its functions may make for the transaction only.
    function_settings: std::sync::Arc<FunctionSettings>,
}

impl super::SharedConn {
    /// The test's working database's [`SchemaFacts`]; deferrable
    /// constraints assumed if they cannot be read.
    pub(crate) async fn schema_facts(&self) -> SchemaFacts {
        let unknown = SchemaFacts {
            defers: true,
            ..SchemaFacts::default()
        };
        let Ok(mut slot) = self.lock_slot().await else {
            return unknown;
        };
        let conn = slot.conn.as_mut().expect("checked at lock time");
        // Both in one round trip: it is on the first test's time.
        let both = format!(
            "SELECT d.*, f.* FROM ({DEFERRABLE_SQL}) d, (SELECT \
               coalesce(array_agg(x.name), '{{}}'), coalesce(array_agg(x.def), '{{}}'), \
               coalesce(array_agg(x.trig), '{{}}') \
             FROM ({FUNCTIONS_SQL}) x(name, def, trig)) f"
        );
        type Row = (bool, String, Vec<String>, Vec<String>, Vec<bool>);
        let Ok((defers, immediate, names, defs, triggers)) =
            sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(both))
                .fetch_one(&mut **conn)
                .await
        else {
            return unknown;
        };
        let functions: Vec<(String, String, bool)> = names
            .into_iter()
            .zip(defs)
            .zip(triggers)
            .map(|((n, d), t)| (n, d, t))
            .collect();
        SchemaFacts {
            defers,
            immediate,
            function_settings: std::sync::Arc::new(FunctionSettings::read(&functions)),
        }
    }

    /// What this test checks and restores, from its `check_constraints`
    /// and its working database's [`SchemaFacts`]: deferred constraints
    /// where production's COMMIT would check them, and the settings its
    /// functions may make for the transaction only.
    pub(crate) fn use_schema_facts(&self, checks: bool, facts: SchemaFacts) {
        use std::sync::atomic::Ordering::Relaxed;
        self.state.checks_constraints.store(checks, Relaxed);
        self.state
            .check_deferred
            .store(checks && facts.defers, Relaxed);
        *super::state::lock(&self.state.immediate_constraints) = facts.immediate;
        *super::state::lock(&self.state.function_settings) = facts.function_settings;
    }

    /// The session's settings, before fixtures run in the test's
    /// transaction (see [`SharedConn::restore_settings`]).
    pub(crate) async fn settings(&self) -> sqlx::Result<(Vec<String>, Vec<String>)> {
        let mut slot = self.lock_slot().await?;
        let conn = slot.conn.as_mut().expect("checked at lock time");
        let rows: Vec<(String, String)> =
            sqlx::query_as(SETTINGS_SQL).fetch_all(&mut **conn).await?;
        Ok(rows.into_iter().unzip())
    }

    /// After the fixtures: the session settings they changed (a `pg_dump`
    /// file's header sets `search_path` to '') are set back, so that the
    /// test runs with the settings it would have without them, as under
    /// `#[sqlx::test]`, which runs fixtures on a connection of their own.
    pub(crate) async fn restore_settings(
        &self,
        (names, values): (Vec<String>, Vec<String>),
    ) -> sqlx::Result<()> {
        let mut slot = self.lock_slot().await?;
        let conn = slot.conn.as_mut().expect("checked at lock time");
        sqlx::query(RESTORE_SETTINGS_SQL)
            .bind(names)
            .bind(values)
            .execute(&mut **conn)
            .await
            .map(|_| ())
    }
}
