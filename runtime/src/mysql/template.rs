//! Templates: the migrated template database of each migrations hash and
//! its working database (transaction mode), built once per hash, and the
//! sweeps of outdated templates and of leftovers of gone processes.
//!
//! MySQL has no `CREATE DATABASE ... TEMPLATE`. The template is migrated
//! once per hash, under `GET_LOCK`, so parallel processes build it once; a
//! marker database (`_tb`) exists from before the build until after it, so
//! a build killed midway is seen by the next process and redone. A clone is
//! the template's schema and rows replayed by one multi-statement script
//! (built once per process from `SHOW CREATE ...`): tables in any order with
//! `FOREIGN_KEY_CHECKS=0`, their rows (`INSERT ... SELECT`, generated columns
//! left out), routines (a view may call a function), views in dependency
//! order, then triggers (after the rows, so copying fires none), then
//! events. Tables and rows are copied under `sql_mode =
//! 'NO_AUTO_VALUE_ON_ZERO'` (as `mysqldump` loads them), each routine,
//! trigger and event under the `sql_mode` it was created under.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sqlx::mysql::{MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::{Connection, Executor, MySql, Row};
use tokio::sync::Notify;

use super::engine::{
    Engine, LIFELONG_SESSION, connect, hex8, literal, owner_lock, quote, test_database_owner,
};
use super::recycle::{self, Recycle};
use crate::config;
use crate::postgres::engine::Migrations;
use crate::postgres::template::{MigratorRef, migrations_hash, resolve_migrations_once};
use crate::slots::Slots;

/// A migrated template, its working database and the script that clones it.
pub(crate) struct Template {
    pub(crate) prefix: String,
    pub(crate) template: String,
    pub(crate) working: String,
    /// The process's connections to the working database (transaction
    /// mode), a pool of one each (see [`crate::slots`]).
    pub(crate) slots: Slots<MySql>,
    /// The clone script and the recycling plan (see [`ClonePlan`]), read
    /// from the template on first use: a process of transaction-mode tests
    /// whose working database exists needs neither (reading them is some
    /// twenty round trips, a tenth of a 200-test suite's time).
    pub(super) clone_plan: tokio::sync::OnceCell<ClonePlan>,
    /// Used per-test databases reset to the template's state, for the next
    /// tests of this process, each with a pool already connected to it.
    pub(super) spares: Mutex<Vec<(String, MySqlPool)>>,
    /// Database-mode tests of this process running now.
    pub(super) running: AtomicUsize,
    /// Used databases being recycled (or dropped) in the background.
    pub(super) recycling: AtomicUsize,
    /// Signalled when a recycling ends.
    pub(super) recycled: Notify,
    /// Per-test databases of other processes, found when the template was
    /// set up: those of gone processes are dropped in the background once
    /// this process runs a database-mode test (see
    /// [`Engine::drop_leftovers_once`]).
    pub(super) leftovers: Mutex<Vec<String>>,
    /// A connection to the working database, opened under the template lock
    /// and held for the life of the process: another process rebuilds a
    /// working database marked dirty only when nobody is connected to it,
    /// and this process is a user of it from the moment it has the name,
    /// even between tests when none of its slots is connected (a slot's
    /// session ended after a deadlock, say). Never read.
    _keeper: Mutex<MySqlConnection>,
}

/// How to clone the template and recycle its clones.
pub(super) struct ClonePlan {
    /// The clone script: [`TARGET`] stands for the new database's name.
    pub(super) script: String,
    /// How to reset a used per-test database, if this schema allows it.
    pub(super) recycle: Option<Recycle>,
}

impl ClonePlan {
    /// Reads the template's schema (its script) and what recycling its
    /// clones needs. The template does not change while a process uses it
    /// (it is rebuilt only when missing or half-built), so this needs no
    /// lock.
    async fn read(
        engine: &Engine,
        admin: &mut MySqlConnection,
        template: &str,
    ) -> Result<Self, String> {
        let script = clone_script(admin, template).await.map_err(|e| {
            format!(
                "db-test: reading the template's schema on {}: {e}",
                engine.display_url
            )
        })?;
        // Without a plan, per-test databases are cloned afresh: slower, the
        // same result.
        let recycle = recycle::plan(admin, template).await.unwrap_or_else(|e| {
            tracing::warn!(%template, "db-test: per-test databases will not be recycled: {e}");
            None
        });
        Ok(ClonePlan { script, recycle })
    }
}

impl Template {
    /// The template's [`ClonePlan`], read on first use.
    pub(super) async fn clone_plan(&self, engine: &Engine) -> Result<&ClonePlan, String> {
        self.clone_plan
            .get_or_try_init(|| async {
                let mut admin = engine.admin().await?;
                ClonePlan::read(engine, &mut admin, &self.template).await
            })
            .await
    }
}

/// The database whose existence says that the working database of
/// `prefix` holds rows a test committed and must be cloned again.
pub(super) fn working_dirty_marker(prefix: &str) -> String {
    format!("{prefix}_wd")
}

impl Engine {
    /// Marks the working database of `prefix` dirty (see
    /// [`working_dirty_marker`]). Best effort: the test fails anyway.
    pub(crate) async fn mark_working_dirty(&self, prefix: &str) {
        if let Ok(mut admin) = self.admin().await {
            let marker = working_dirty_marker(prefix);
            let _ = admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "CREATE DATABASE IF NOT EXISTS {}",
                    quote(&marker)
                )))
                .await;
        }
    }
}

/// Stands for the clone's name in a clone script.
pub(super) const TARGET: &str = "\u{1}dbtest-target\u{1}";

impl Engine {
    /// The template (and working database and pool) for these migrations.
    pub(crate) async fn template(
        &'static self,
        migrations: Migrations,
        manifest_dir: &'static str,
    ) -> Result<Arc<Template>, String> {
        let key = crate::postgres::template::migrations_key(migrations, manifest_dir)?;
        let cell = {
            let mut map = self.templates.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key).or_default().clone()
        };
        cell.get_or_try_init(|| async move {
            let (source_key, migrator) = resolve_migrations_once(migrations, manifest_dir).await?;
            self.build_template(&source_key, migrator)
                .await
                .map(Arc::new)
        })
        .await
        .cloned()
    }

    /// [`Engine::template`] if it was built already, without waiting.
    pub(crate) fn built_template(
        &self,
        migrations: Migrations,
        manifest_dir: &'static str,
    ) -> Option<Arc<Template>> {
        crate::postgres::template::built(&self.templates, migrations, manifest_dir)
    }

    async fn build_template(
        &'static self,
        source_key: &str,
        migrator: MigratorRef,
    ) -> Result<Template, String> {
        let hash = migrations_hash(migrator.get());
        let prefix = format!(
            "dbtest_{}_{}",
            hex8(source_key.as_bytes()),
            &hash[..hash.len().min(10)]
        );
        let template = format!("{prefix}_t");
        let working = format!("{prefix}_w");
        let ctx =
            |what: &str, e: sqlx::Error| format!("db-test: {what} on {}: {e}", self.display_url);
        let lock_wait = lock_wait_secs();
        let options = self.options_for(&working);
        let slots = Slots::new(config::pool_size(), config::acquire_timeout(), move |id| {
            let id = id.clone();
            MySqlPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(config::acquire_timeout())
                // A connection comes back rolled back and healthy; one the
                // server dropped fails to begin and is replaced (see `setup`).
                .test_before_acquire(false)
                .after_connect(move |conn, _| {
                    let id = id.clone();
                    Box::pin(async move {
                        // Tests share the working database: a test waiting for
                        // a row another test holds gives up after
                        // DB_TEST_LOCK_TIMEOUT (5s), not InnoDB's 50s. And,
                        // once per connection, not per test, its id: to stop
                        // its statements (`KILL QUERY`) and end its session.
                        // One round trip.
                        // Also its `sql_mode`: how the server reads the
                        // strings of the tests' SQL (see
                        // `lexer::session_commit`).
                        let row = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "SET SESSION innodb_lock_wait_timeout = {lock_wait}, \
                             lock_wait_timeout = {lock_wait}; \
                             SELECT CONNECTION_ID(), CAST(@@SESSION.sql_mode AS CHAR)"
                        )))
                        .fetch_one(&mut *conn)
                        .await?;
                        let session: u64 = row.try_get(0)?;
                        let mode: Option<String> = row.try_get(1).ok().flatten();
                        super::lexer::note_session_mode(mode.as_deref());
                        id.store(session, std::sync::atomic::Ordering::Release);
                        Ok(())
                    })
                })
                // See `read_queued_error`.
                .after_release(crate::slots::read_queued_error::<sqlx::MySql>)
                .connect_lazy_with(options.clone())
        });
        // The keeper (see `Template::_keeper`) connects to the server
        // meanwhile; it enters the working database once that exists.
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).take();
        let keeper = async {
            match spare {
                Some(conn) => Ok(conn),
                None => connect(&self.server, &self.display_url).await,
            }
        };
        let (admin, keeper) = tokio::join!(self.admin(), keeper);
        let mut admin = admin?;
        let lock = format!("{prefix}_lock");
        // Text protocol, literals: one round trip each (a bound parameter
        // costs a prepare first), on the start of every test process.
        let got: Option<i64> = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SELECT GET_LOCK({}, {})",
            literal(&lock),
            config::TEMPLATE_LOCK_WAIT.as_secs()
        )))
        .fetch_one(&mut *admin)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| ctx("taking the template lock", e))?;
        if got != Some(1) {
            let holder: Option<String> = sqlx::query_scalar(
                "SELECT CAST(CONCAT('connection ', id, ' (', user, '@', host, ', ', time, ' s in \
                 its state)') AS CHAR) FROM information_schema.processlist \
                 WHERE id = IS_USED_LOCK(?)",
            )
            .bind(&lock)
            .fetch_optional(&mut *admin)
            .await
            .ok()
            .flatten();
            return Err(format!(
                "db-test: waited {:?} for another test process to build the template `{template}` \
                 on {} (lock `{lock}`); the session building it is {}. It is stuck (a frozen or \
                 unreachable process holds the lock): end that session, and the next test \
                 builds the template.",
                config::TEMPLATE_LOCK_WAIT,
                self.display_url,
                holder.unwrap_or_else(|| "gone now".to_string())
            ));
        }
        // Every database db-test made on the server, read once under the
        // lock: what this build finds, outdated templates, leftovers.
        let listed = sqlx::raw_sql(
            "SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata \
             WHERE schema_name LIKE 'dbtest\\_%'",
        )
        .fetch_all(&mut *admin)
        .await
        .and_then(|rows| {
            rows.iter()
                .map(|row| row.try_get::<String, _>(0))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| ctx("listing databases", e));
        let result = async {
            let names = listed?;
            let built = self
                .build_locked(
                    &mut admin,
                    &names,
                    migrator.get(),
                    &prefix,
                    &template,
                    &working,
                )
                .await?;
            // The connections of the first tests (as many as run at once,
            // and one more, so that a test need not wait for the slot the
            // test before it left to be readied: see `slots::pick`; none
            // more under nextest, a test per process), with their
            // transactions open, are readied meanwhile.
            let spare = usize::from(!config::process_per_test());
            for _ in 0..(config::tests_at_once() + spare).min(config::pool_size() as usize) {
                prewarm_slot(&slots);
            }
            // In the working database before the lock is released: see
            // `Template::_keeper`. With it, in the same round trip, what a
            // test calls that may leave session state unseen (stored
            // functions), and what a test would write past its rollback
            // (tables of an engine that cannot roll back).
            let mut keeper = keeper?;
            let lists = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "USE {working_q}; {LIFELONG_SESSION}; \
                 SELECT CAST(ROUTINE_NAME AS CHAR), CAST(1 AS SIGNED) \
                 FROM information_schema.ROUTINES \
                 WHERE ROUTINE_SCHEMA = {working_l} AND ROUTINE_TYPE = 'FUNCTION' \
                 UNION ALL \
                 SELECT CAST(TABLE_NAME AS CHAR), CAST(0 AS SIGNED) \
                 FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = {working_l} AND TABLE_TYPE = 'BASE TABLE' \
                 AND ENGINE NOT IN ('InnoDB', 'XtraDB') \
                 UNION ALL \
                 SELECT CAST(EVENT_OBJECT_TABLE AS CHAR), CAST(2 AS SIGNED) \
                 FROM information_schema.TRIGGERS t \
                 WHERE TRIGGER_SCHEMA = {working_l} AND (ACTION_STATEMENT LIKE '%@%' \
                     OR ACTION_STATEMENT LIKE '%CALL%' OR ACTION_STATEMENT LIKE '%NEXT%' \
                     OR ACTION_STATEMENT LIKE '%SETVAL%' OR ACTION_STATEMENT LIKE '%LASTVAL%' \
                     OR ACTION_STATEMENT LIKE '%LOCK%' OR ACTION_STATEMENT LIKE '%SESSION%' \
                     OR EXISTS (SELECT 1 FROM information_schema.ROUTINES r \
                         WHERE r.ROUTINE_SCHEMA = {working_l} AND r.ROUTINE_TYPE = 'FUNCTION' \
                         AND t.ACTION_STATEMENT LIKE CONCAT('%', r.ROUTINE_NAME, '%'))) \
                 UNION ALL \
                 SELECT CAST(EVENT_OBJECT_TABLE AS CHAR), CAST(3 AS SIGNED) \
                 FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {working_l} \
                 UNION ALL \
                 SELECT CAST(TABLE_NAME AS CHAR), CAST(3 AS SIGNED) \
                 FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {working_l}",
                working_q = quote(&working),
                working_l = literal(&working),
            )))
            .fetch_all(&mut keeper)
            .await
            .and_then(|rows| {
                rows.iter()
                    .map(|row| Ok((row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()
            })
            .map_err(|e| ctx("setting up the working database's keeper", e))?;
            let reach = if lists.iter().any(|(_, kind)| *kind == 0) {
                non_transactional_reach(&mut keeper, &working, &lists)
                    .await
                    .map_err(|e| ctx("reading what writes the tables that cannot roll back", e))?
            } else {
                NonTransactionalReach::default()
            };
            Ok::<_, String>((built, keeper, lists, names, reach))
        }
        .await;
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DO RELEASE_LOCK({})",
            literal(&lock)
        )))
        .execute(&mut *admin)
        .await;
        let (clone_plan, keeper, lists, names, reach) = result?;
        // Outdated templates and leftovers of gone processes, from the same
        // list: nothing more to ask the server unless it names some.
        self.sweep_outdated(&mut admin, &names, &prefix).await;
        // Leftovers of gone processes, from the same list: checked and
        // dropped once a database-mode test runs (see `drop_leftovers_once`).
        let leftovers = self.leftover_candidates(&names, &prefix);
        drop(admin);
        // 1: a stored function; 0: a table that cannot roll back; 2: a
        // table with a trigger that may leave session state (it names a
        // user variable, `CALL`s a procedure, takes a sequence's next value
        // or a lock, calls one of the schema's stored functions); 3: a table with
        // any trigger (which may write a table of kind 2), or a view (a
        // write through it fires its table's triggers).
        let kind = |k: i64| -> Vec<String> {
            lists
                .iter()
                .filter(|(_, kind)| *kind == k)
                .map(|(name, _)| name.clone())
                .collect()
        };
        super::lexer::note_stored_functions(kind(1));
        super::lexer::note_session_triggers(kind(2), kind(3));
        super::lexer::note_non_transactional_tables(kind(0));
        super::lexer::note_non_transactional_tables(reach.targets);
        super::lexer::note_non_transactional_routines(reach.routines);
        Ok(Template {
            prefix,
            template,
            working,
            slots,
            clone_plan: tokio::sync::OnceCell::new_with(clone_plan),
            spares: Mutex::new(Vec::new()),
            running: AtomicUsize::new(0),
            recycling: AtomicUsize::new(0),
            recycled: Notify::new(),
            leftovers: Mutex::new(leftovers),
            _keeper: Mutex::new(keeper),
        })
    }

    /// Under the template lock: builds what is missing; returns the clone
    /// plan if it had to read it (to clone the working database).
    async fn build_locked(
        &self,
        admin: &mut MySqlConnection,
        names: &[String],
        migrator: &sqlx::migrate::Migrator,
        prefix: &str,
        template: &str,
        working: &str,
    ) -> Result<Option<ClonePlan>, String> {
        let ctx =
            |what: &str, e: sqlx::Error| format!("db-test: {what} on {}: {e}", self.display_url);
        let has = |n: &str| names.iter().any(|e| e == n);
        let building = format!("{prefix}_tb");
        if !has(template) || has(&building) {
            let t0 = Instant::now();
            if has(&building) {
                tracing::info!(database = %template, "db-test: rebuilding a half-built template");
                // The build's process died, but the server may still run
                // its last statement (and would then run the rest of what it
                // sent) in the template: end those sessions first, or they
                // write into the new one.
                for database in [template, working, building.as_str()] {
                    self.kill_sessions(database, true).await;
                }
            }
            for stmt in [
                format!("DROP DATABASE IF EXISTS {}", quote(working)),
                format!("DROP DATABASE IF EXISTS {}", quote(template)),
                format!("CREATE DATABASE IF NOT EXISTS {}", quote(&building)),
                format!("CREATE DATABASE {}", quote(template)),
            ] {
                admin
                    .execute(sqlx::AssertSqlSafe(stmt))
                    .await
                    .map_err(|e| ctx("creating the template database", e))?;
            }
            let mut conn = connect(&self.options_for(template), &self.display_url).await?;
            if migrator.iter().next().is_some()
                && let Err(e) = migrator.run(&mut conn).await
            {
                // Nothing half-built left behind (best effort: a process
                // killed here leaves the marker, and the next one starts
                // over).
                let _ = conn.close().await;
                for name in [template, building.as_str()] {
                    let _ = admin
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {}",
                            quote(name)
                        )))
                        .await;
                }
                return Err(format!(
                    "db-test: migrations failed while building template {template}: {e}"
                ));
            }
            let _ = conn.close().await;
            admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE {}",
                    quote(&building)
                )))
                .await
                .map_err(|e| ctx("finishing the template", e))?;
            tracing::info!(%template, elapsed_ms = t0.elapsed().as_millis() as u64, "db-test: template built");
        }
        let cloning = format!("{prefix}_wb");
        // Marked dirty by a test whose bare connection committed into it
        // (`mark_working_dirty`): cloned again once nobody uses it.
        let dirty = working_dirty_marker(prefix);
        let mut rebuild_dirty = false;
        if has(&dirty) {
            let in_use: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.processlist WHERE db = ?",
            )
            .bind(working)
            .fetch_one(&mut *admin)
            .await
            .map_err(|e| ctx("checking the working database", e))?;
            if in_use == 0 {
                tracing::info!(database = %working, "db-test: rebuilding a working database a test committed into");
                rebuild_dirty = true;
            } else {
                tracing::warn!(database = %working, "db-test: the working database holds rows a test committed; it is rebuilt when no other process uses it");
            }
        }
        let mut clone_plan = None;
        if !has(working) || has(&cloning) || rebuild_dirty {
            let plan = ClonePlan::read(self, admin, template).await?;
            for stmt in [
                format!("DROP DATABASE IF EXISTS {}", quote(working)),
                format!("CREATE DATABASE IF NOT EXISTS {}", quote(&cloning)),
                format!("CREATE DATABASE {}", quote(working)),
            ] {
                admin
                    .execute(sqlx::AssertSqlSafe(stmt))
                    .await
                    .map_err(|e| ctx("creating the working database", e))?;
            }
            clone_into(admin, &plan.script, working)
                .await
                .map_err(|e| ctx("creating the working database", e))?;
            admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE {}",
                    quote(&cloning)
                )))
                .await
                .map_err(|e| ctx("finishing the working database", e))?;
            if has(&dirty) {
                admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {}",
                        quote(&dirty)
                    )))
                    .await
                    .map_err(|e| ctx("finishing the working database", e))?;
            }
            clone_plan = Some(plan);
        }
        Ok(clone_plan)
    }

    /// Drops the templates (and working databases) of the same migrations
    /// source with other migrations hashes: outdated once the migrations
    /// changed. Only those built longer than `DB_TEST_OUTDATED_AFTER` ago
    /// (10 min) whose working database nobody is connected to, so that two
    /// checkouts with different migrations can share a server.
    /// `names`: db-test's databases on the server, listed under the
    /// template lock.
    async fn sweep_outdated(&self, admin: &mut MySqlConnection, names: &[String], prefix: &str) {
        // `dbtest_<source>_`: every hash of this source.
        let Some(source) = prefix.rfind('_').map(|i| &prefix[..=i]) else {
            return;
        };
        let mut others: Vec<&str> = names
            .iter()
            .filter(|n| n.starts_with(source))
            .filter(|n| !n.starts_with(&format!("{prefix}_")))
            .filter_map(|n| n.strip_suffix("_t"))
            .collect();
        others.sort_unstable();
        others.dedup();
        let min_age = config::outdated_after().as_secs() as i64;
        for other in others {
            let (age, in_use): (Option<i64>, i64) = match sqlx::query_as(
                "SELECT (SELECT TIMESTAMPDIFF(SECOND, MAX(create_time), NOW()) \
                         FROM information_schema.tables WHERE table_schema = ?), \
                        (SELECT COUNT(*) FROM information_schema.processlist \
                         WHERE db LIKE CONCAT(REPLACE(?, '_', '\\_'), '\\_%'))",
            )
            .bind(format!("{other}_t"))
            .bind(other)
            .fetch_one(&mut *admin)
            .await
            {
                Ok(row) => row,
                Err(_) => continue,
            };
            // A template without tables has no age to go by: kept.
            if age.is_none_or(|a| a < min_age) || in_use > 0 {
                continue;
            }
            for kind in ["w", "wb", "wd", "t", "tb"] {
                let name = format!("{other}_{kind}");
                if names.contains(&name) {
                    tracing::info!(database = %name, "db-test: dropping an outdated template");
                    let _ = admin
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {}",
                            quote(&name)
                        )))
                        .await;
                }
            }
        }
    }

    /// The per-test databases in `names` that other processes of this
    /// source made (by their names, with no round trip): whether each one's
    /// owner is gone is asked when they are dropped ([`Engine::drop_leftovers`]).
    fn leftover_candidates(&self, names: &[String], prefix: &str) -> Vec<String> {
        // Only this source's (`dbtest_<source>_`, every hash of it), as on
        // PostgreSQL: a process knows where its own project's names come
        // from, not what another project on the server made.
        let Some(source) = prefix.rfind('_').map(|i| &prefix[..=i]) else {
            return Vec::new();
        };
        names
            .iter()
            .filter(|n| n.starts_with(source))
            .filter(|n| test_database_owner(n).is_some_and(|owner| owner != self.owner))
            .cloned()
            .collect()
    }

    /// Whether `name`, a [`Engine::leftover_candidates`], is a leftover: its
    /// owner's lock is free (the process is gone), and it was not kept for
    /// a failed test (`DB_TEST_KEEP_FAILED`).
    async fn is_leftover(&self, admin: &mut MySqlConnection, name: &str) -> bool {
        let Some(owner) = test_database_owner(name) else {
            return false;
        };
        let used: Option<i64> = sqlx::query_scalar("SELECT IS_USED_LOCK(?)")
            .bind(owner_lock(owner))
            .fetch_one(&mut *admin)
            .await
            .unwrap_or(Some(0));
        if used.is_some() {
            return false;
        }
        let kept: bool = sqlx::query_scalar(
            "SELECT EXISTS(SELECT 1 FROM information_schema.tables \
             WHERE table_schema = ? AND table_name = '_dbtest_kept')",
        )
        .bind(name)
        .fetch_one(&mut *admin)
        .await
        .unwrap_or(true);
        !kept
    }

    /// Drops the leftovers [`Template::leftovers`] holds, once per process,
    /// off the tests' time: called when the process runs its first
    /// database-mode test, as on PostgreSQL. Dropping what gone processes
    /// left (a suite of database-mode tests leaves its spares) costs the
    /// server a disk flush per database with stock settings, some 40 ms,
    /// and, run while the tests of a transaction-mode process ran, made a
    /// 200-test process 15 % slower; such a process leaves them to the next
    /// one that makes databases itself. Cut short if this process ends
    /// first: that one drops the rest.
    pub(crate) fn drop_leftovers_once(&'static self, template: &Template) {
        let names =
            std::mem::take(&mut *template.leftovers.lock().unwrap_or_else(|e| e.into_inner()));
        if !names.is_empty() {
            crate::run::shared_runtime().spawn(self.drop_leftovers(names));
        }
    }

    /// Drops those of `names` ([`Engine::leftover_candidates`]) that are
    /// leftovers ([`Engine::is_leftover`]).
    async fn drop_leftovers(&self, names: Vec<String>) {
        let Ok(mut admin) = self.admin().await else {
            return;
        };
        for name in names {
            if !self.is_leftover(&mut admin, &name).await {
                continue;
            }
            tracing::info!(database = %name, "db-test: dropping a leftover test database");
            let _ = admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {}",
                    quote(&name)
                )))
                .await;
        }
    }
}

/// `DB_TEST_LOCK_TIMEOUT` in whole seconds (MySQL's unit), at least 1.
fn lock_wait_secs() -> u64 {
    let ms: u64 = config::lock_timeout()
        .trim_end_matches("ms")
        .parse()
        .unwrap_or(5000);
    ms.div_ceil(1000).max(1)
}

/// Runs a clone script into `target` (which exists and is empty).
pub(super) async fn clone_into(
    admin: &mut MySqlConnection,
    script: &str,
    target: &str,
) -> Result<(), sqlx::Error> {
    let sql = script.replace(TARGET, &target.replace('`', "``"));
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *admin)
        .await
    {
        // The script stopped partway: what it set on the admin session
        // goes back to what a new session gets (best effort: the session
        // may be gone).
        let _ = sqlx::raw_sql(
            "SET FOREIGN_KEY_CHECKS = 1, SESSION sql_mode = @@GLOBAL.sql_mode, \
             SESSION time_zone = @@GLOBAL.time_zone, SESSION timestamp = DEFAULT; \
             USE information_schema",
        )
        .execute(&mut *admin)
        .await;
        return Err(e);
    }
    Ok(())
}

/// The statement that copies the rows of `template`.`table` into the same
/// table of [`TARGET`] (generated columns left out); None if it has none.
pub(super) async fn copy_rows_sql(
    admin: &mut MySqlConnection,
    template: &str,
    table: &str,
) -> Result<Option<String>, sqlx::Error> {
    let (q, qt) = (quote(template), quote(table));
    let has_rows: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT EXISTS(SELECT 1 FROM {q}.{qt})"
    )))
    .fetch_one(&mut *admin)
    .await?;
    if !has_rows {
        return Ok(None);
    }
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(column_name AS CHAR) FROM information_schema.columns \
         WHERE table_schema = ? AND table_name = ? AND extra NOT LIKE '%GENERATED%' \
         ORDER BY ordinal_position",
    )
    .bind(template)
    .bind(table)
    .fetch_all(&mut *admin)
    .await?;
    let columns = columns
        .iter()
        .map(|c| quote(c))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Some(format!(
        "INSERT INTO `{TARGET}`.{qt} ({columns}) SELECT {columns} FROM {q}.{qt};\n"
    )))
}

/// The script that clones `template` into [`TARGET`]: one round trip.
///
/// Read under the `sql_mode` the script runs its tables under: the text of
/// `SHOW CREATE TABLE`/`VIEW` quotes names as the session's mode says (a
/// server whose global mode has `ANSI_QUOTES` would print `"t"`). The
/// admin session's mode is put back afterwards, whatever happened.
async fn clone_script(admin: &mut MySqlConnection, template: &str) -> Result<String, sqlx::Error> {
    sqlx::raw_sql(
        "SET @dbtest_read_mode = @@SESSION.sql_mode, SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO'",
    )
    .execute(&mut *admin)
    .await?;
    let script = clone_script_as_read(admin, template).await;
    let restored = sqlx::raw_sql("SET SESSION sql_mode = @dbtest_read_mode")
        .execute(&mut *admin)
        .await;
    let script = script?;
    restored?;
    Ok(script)
}

async fn clone_script_as_read(
    admin: &mut MySqlConnection,
    template: &str,
) -> Result<String, sqlx::Error> {
    let q = quote(template);
    let target = format!("`{TARGET}`");
    // Whatever the template's text names with its own name names the clone.
    let retarget = |text: &str| text.replace(&format!("{q}."), &format!("{target}."));
    // Tables and rows go in under `NO_AUTO_VALUE_ON_ZERO` alone, as
    // `mysqldump` loads them: a row with id 0 keeps it, and a value stored
    // under a laxer `sql_mode` than the session's (a zero date) is copied,
    // not refused. Each routine, trigger and event is created under the
    // `sql_mode` it was created under (a trigger written after `SET
    // sql_mode = ''` must not run strict), an event under its time zone.
    let mut script = format!(
        "USE {target};\nSET @dbtest_fk = @@FOREIGN_KEY_CHECKS, @dbtest_mode = @@SESSION.sql_mode, \
         @dbtest_tz = @@SESSION.time_zone, FOREIGN_KEY_CHECKS = 0, \
         SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO';\n"
    );
    let in_mode = |mode: &str| format!("SET SESSION sql_mode = {};\n", literal(mode));
    // The database's default character set and collation, where the
    // migrations changed them (`ALTER DATABASE ... COLLATE utf8mb4_bin`):
    // tables a test creates take them, as in a database of `#[sqlx::test]`.
    let (charset, collation, same): (String, String, i64) = sqlx::query_as(
        "SELECT CAST(default_character_set_name AS CHAR), \
                CAST(default_collation_name AS CHAR), \
                default_character_set_name = @@character_set_server \
                AND default_collation_name = @@collation_server \
         FROM information_schema.schemata WHERE schema_name = ?",
    )
    .bind(template)
    .fetch_one(&mut *admin)
    .await?;
    if same == 0 {
        script.push_str(&format!(
            "ALTER DATABASE {target} CHARACTER SET {} COLLATE {};\n",
            quote(&charset),
            quote(&collation)
        ));
    }
    let objects = sqlx::query(
        "SELECT CAST(table_name AS CHAR), CAST(table_type AS CHAR) FROM information_schema.tables \
         WHERE table_schema = ? ORDER BY table_name",
    )
    .bind(template)
    .fetch_all(&mut *admin)
    .await?;
    let mut tables = Vec::new();
    let mut views = Vec::new();
    for row in objects {
        let name: String = row.try_get(0)?;
        let kind: String = row.try_get(1)?;
        if kind == "VIEW" {
            views.push(name);
        } else {
            tables.push(name);
        }
    }
    let mut copies = String::new();
    for table in &tables {
        let qt = quote(table);
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SHOW CREATE TABLE {q}.{qt}")))
            .fetch_one(&mut *admin)
            .await?;
        let create: String = row.try_get(1)?;
        script.push_str(&create);
        script.push_str(";\n");
        if let Some(copy) = copy_rows_sql(admin, template, table).await? {
            copies.push_str(&copy);
        }
    }
    script.push_str(&copies);
    // Routines before the views: a view may call a stored function, which
    // must exist when the view is created (a routine's body names nothing
    // that must exist until it runs).
    let routines = sqlx::query(
        "SELECT CAST(routine_name AS CHAR), CAST(routine_type AS CHAR) \
         FROM information_schema.routines WHERE routine_schema = ? ORDER BY routine_name",
    )
    .bind(template)
    .fetch_all(&mut *admin)
    .await?;
    let any_routine = !routines.is_empty();
    for row in routines {
        let name: String = row.try_get(0)?;
        let kind: String = row.try_get(1)?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SHOW CREATE {kind} {q}.{}",
            quote(&name)
        )))
        .fetch_one(&mut *admin)
        .await?;
        let mode: String = row.try_get(1)?;
        let create: Option<String> = row.try_get(2)?;
        if let Some(create) = create {
            script.push_str(&in_mode(&mode));
            script.push_str(&retarget(&create));
            script.push_str(";\n");
        }
    }
    if any_routine {
        script.push_str(&in_mode("NO_AUTO_VALUE_ON_ZERO"));
    }
    // Views after the tables, each after the views it names.
    let mut view_sql = Vec::new();
    for view in &views {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SHOW CREATE VIEW {q}.{}",
            quote(view)
        )))
        .fetch_one(&mut *admin)
        .await?;
        let create: String = row.try_get(1)?;
        view_sql.push((view.clone(), retarget(&create)));
    }
    let mut done: Vec<String> = Vec::new();
    while done.len() < view_sql.len() {
        let before = done.len();
        for (name, sql) in &view_sql {
            if done.contains(name) {
                continue;
            }
            let waits = view_sql.iter().any(|(other, _)| {
                other != name && !done.contains(other) && sql.contains(&quote(other))
            });
            if !waits {
                script.push_str(sql);
                script.push_str(";\n");
                done.push(name.clone());
            }
        }
        if done.len() == before {
            // A cycle of names (or a name in a string): keep the order.
            for (name, sql) in &view_sql {
                if !done.contains(name) {
                    script.push_str(sql);
                    script.push_str(";\n");
                    done.push(name.clone());
                }
            }
        }
    }
    let triggers: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(trigger_name AS CHAR) FROM information_schema.triggers \
         WHERE trigger_schema = ? ORDER BY action_order, trigger_name",
    )
    .bind(template)
    .fetch_all(&mut *admin)
    .await?;
    for trigger in triggers {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SHOW CREATE TRIGGER {q}.{}",
            quote(&trigger)
        )))
        .fetch_one(&mut *admin)
        .await?;
        let mode: String = row.try_get(1)?;
        let create: String = row.try_get(2)?;
        script.push_str(&in_mode(&mode));
        script.push_str(&retarget(&create));
        script.push_str(";\n");
    }
    // Events, as `#[sqlx::test]`'s migrations would create them in each
    // test's database (whether they run is the server's `event_scheduler`).
    // Each is created as of when the migrations created it (the session's
    // `timestamp`): its `STARTS`/`ENDS`/`AT` times, fixed in the text, may
    // have passed since, and the server would drop such an event at once.
    let events: Vec<(String, i64)> = sqlx::query_as(
        "SELECT CAST(event_name AS CHAR), CAST(UNIX_TIMESTAMP(created) AS SIGNED) \
         FROM information_schema.events WHERE event_schema = ? ORDER BY event_name",
    )
    .bind(template)
    .fetch_all(&mut *admin)
    .await?;
    for (event, created) in &events {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SHOW CREATE EVENT {q}.{}",
            quote(event)
        )))
        .fetch_one(&mut *admin)
        .await?;
        let mode: String = row.try_get(1)?;
        let zone: String = row.try_get(2)?;
        let create: String = row.try_get(3)?;
        script.push_str(&in_mode(&mode));
        script.push_str(&format!(
            "SET SESSION time_zone = {}, SESSION timestamp = {created};\n",
            literal(&zone)
        ));
        script.push_str(&retarget(&create));
        script.push_str(";\n");
    }
    if !events.is_empty() {
        script.push_str("SET SESSION timestamp = DEFAULT;\n");
    }
    script.push_str(
        "SET FOREIGN_KEY_CHECKS = @dbtest_fk, SESSION sql_mode = @dbtest_mode, \
         SESSION time_zone = @dbtest_tz;\n",
    );
    // Out of the clone: an idle admin connection left in it would count as
    // a session of its (`processlist.db`), which must mean a test's.
    script.push_str("USE information_schema;\n");
    Ok(script)
}

/// What else writes the working database's tables that cannot roll back
/// (see `lexer::writes_non_transactional`), upper-cased.
#[derive(Default)]
struct NonTransactionalReach {
    /// Views of such a table (or of such a view): a write to them writes
    /// it. (A trigger that writes one is not followed: the README says so.)
    targets: Vec<String>,
    /// Procedures and functions that name one (or call such a routine).
    routines: Vec<String>,
}

/// [`NonTransactionalReach`] of `working`, whose tables that cannot roll
/// back are `lists`' kind 0. A name anywhere in a view's definition or a
/// routine's body counts (erring on the side of refusing: a routine that
/// only reads such a table is refused too), and so does a body the server
/// does not show.
async fn non_transactional_reach(
    keeper: &mut MySqlConnection,
    working: &str,
    lists: &[(String, i64)],
) -> Result<NonTransactionalReach, sqlx::Error> {
    let w = literal(working);
    let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT CAST(TABLE_NAME AS CHAR), CAST(VIEW_DEFINITION AS CHAR), CAST(0 AS SIGNED) \
         FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {w} \
         UNION ALL \
         SELECT CAST(ROUTINE_NAME AS CHAR), CAST(ROUTINE_DEFINITION AS CHAR), CAST(1 AS SIGNED) \
         FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {w}"
    )))
    .fetch_all(&mut *keeper)
    .await?;
    let mut named: Vec<String> = lists
        .iter()
        .filter(|(_, kind)| *kind == 0)
        .map(|(name, _)| name.to_ascii_uppercase())
        .collect();
    let mut reach = NonTransactionalReach::default();
    let mut done = vec![false; rows.len()];
    loop {
        let mut more = false;
        for (i, (name, text, kind)) in rows.iter().enumerate() {
            let needles: Vec<&str> = named.iter().map(String::as_str).collect();
            let writes = text
                .as_deref()
                .is_none_or(|text| crate::sqltext::contains_any_word_ignore_case(text, &needles));
            if done[i] || !writes {
                continue;
            }
            done[i] = true;
            more = true;
            let name = name.to_ascii_uppercase();
            if *kind == 1 {
                reach.routines.push(name.clone());
            } else {
                reach.targets.push(name.clone());
            }
            if !named.contains(&name) {
                named.push(name);
            }
        }
        if !more {
            return Ok(reach);
        }
    }
}

/// Readies a slot's connection for one of the first tests of the process
/// (see [`Slots::prewarm`]) while the template's setup ends.
fn prewarm_slot(slots: &Slots<MySql>) {
    slots.prewarm(|mut conn| async move {
        let begin = sqlx_core::sql_str::SqlStr::from_static(<MySql as crate::generic::Dialect>::begin_test());
        match <<MySql as sqlx::Database>::TransactionManager as sqlx_core::transaction::TransactionManager>::begin(&mut conn, Some(begin)).await {
            Ok(()) => Some(conn),
            Err(_) => {
                conn.close_on_drop();
                None
            }
        }
    });
}
