//! The MySQL/MariaDB engine: the server (a URL or the embedded one), the
//! template of each migrations hash, its working database, and per-test
//! clones.
//!
//! # Names
//!
//! Every database db-test makes is called `dbtest_<source>_<hash>_<kind>`
//! (at most 64 characters, MySQL's limit): `source` hashes where the
//! migrations come from, `hash` the migrations themselves, and `kind` is
//! `t` (the template), `tb` (present while the template is being built),
//! `w` (the working database of transaction-mode tests), `wb` (present while
//! it is being cloned) or `d<owner>_<n>` (a per-test database of the process
//! whose owner lock is `dbtest_owner_<owner>`). Only such names are ever
//! created or dropped.
//!
//! # Templates
//!
//! MySQL has no `CREATE DATABASE ... TEMPLATE`. The template is migrated
//! once per hash, under `GET_LOCK`, so parallel processes build it once; a
//! marker database (`_tb`) exists from before the build until after it, so
//! a build killed midway is seen by the next process and redone. A clone is
//! the template's schema and rows replayed by one multi-statement script
//! (built once per process from `SHOW CREATE ...`): tables in any order with
//! `FOREIGN_KEY_CHECKS=0`, their rows (`INSERT ... SELECT`, generated columns
//! left out), views in dependency order, routines, then triggers (after the
//! rows, so copying fires none). Events are not copied.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::{Connection, Executor, Row};
use tokio::sync::{Notify, OnceCell};

use super::embedded;
use super::recycle::{self, Recycle};
use crate::config;
use crate::postgres::engine::{Migrations, redact};
use crate::postgres::template::{MigratorRef, migrations_hash, resolve_migrations};
use crate::shared::TEARDOWN_GRACE;

/// The engine of the process: one server.
pub(crate) struct Engine {
    /// The server, password removed, for messages.
    pub(crate) display_url: String,
    /// Options to the server, without a database.
    server: MySqlConnectOptions,
    /// A URL for the server, for tools (`mysql`, a benchmark).
    pub(crate) url: String,
    /// Admin connections (creating, cloning, dropping databases).
    admin: MySqlPool,
    /// This process's owner id (`dbtest_owner_<id>`, held by `owner_conn`).
    owner: u32,
    owner_conn: Mutex<Option<MySqlConnection>>,
    counter: AtomicU64,
    templates: Mutex<HashMap<String, Arc<OnceCell<Arc<Template>>>>>,
}

/// A migrated template, its working database and the script that clones it.
pub(crate) struct Template {
    pub(crate) prefix: String,
    pub(crate) template: String,
    pub(crate) working: String,
    /// The working database's pool (transaction mode).
    pub(crate) pool: MySqlPool,
    /// The clone script: [`TARGET`] stands for the new database's name.
    script: String,
    /// How to reset a used per-test database, if this schema allows it.
    recycle: Option<Recycle>,
    /// Used per-test databases reset to the template's state, for the next
    /// tests of this process, each with a pool already connected to it.
    spares: Mutex<Vec<(String, MySqlPool)>>,
    /// Database-mode tests of this process running now.
    running: AtomicUsize,
    /// Used databases being recycled (or dropped) in the background.
    recycling: AtomicUsize,
    /// Signalled when a recycling ends.
    recycled: Notify,
}

/// Stands for the clone's name in a clone script.
pub(super) const TARGET: &str = "\u{1}dbtest-target\u{1}";

/// MySQL's limit on a database name.
const MAX_NAME_LEN: usize = 64;

static ENGINE: OnceCell<Result<Engine, String>> = OnceCell::const_new();

/// The engine, started on first use. A failure (no binaries, a wrong URL)
/// is kept: every test of the process reports it at once, instead of each
/// one searching or waiting for the connect timeout again.
pub(crate) async fn engine() -> Result<&'static Engine, String> {
    ENGINE
        .get_or_init(Engine::start)
        .await
        .as_ref()
        .map_err(Clone::clone)
}

/// A name in backticks.
pub(crate) fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

fn hex8(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// Whether `name` is a per-test database, and its owner id.
fn test_database_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("dbtest_")?;
    let mut parts = rest.split('_');
    let (_source, _hash, kind, _n) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let owner = kind.strip_prefix('d')?;
    (owner.len() == 8)
        .then(|| u32::from_str_radix(owner, 16).ok())
        .flatten()
}

fn owner_lock(owner: u32) -> String {
    format!("dbtest_owner_{owner:08x}")
}

impl Engine {
    async fn start() -> Result<Engine, String> {
        let (server, display_url, url) = match config::server_url(crate::Backend::MySql)? {
            Some((var, url)) => {
                let display = redact(&url);
                let options = MySqlConnectOptions::from_str(&url).map_err(|e| {
                    format!("db-test: {var}={display} is not a valid MySQL URL: {e}")
                })?;
                (options, format!("{display} (from {var})"), url)
            }
            None => {
                let embedded = tokio::task::spawn_blocking(embedded::ensure_started)
                    .await
                    .map_err(|e| {
                        format!("db-test: starting the embedded server panicked: {e}")
                    })??;
                let options = MySqlConnectOptions::new()
                    .socket(&embedded.socket)
                    .username("root");
                let display = format!(
                    "the embedded MySQL/MariaDB (socket {})",
                    embedded.socket.display()
                );
                let url = format!(
                    "mysql://root@localhost/?socket={}",
                    embedded.socket.display()
                );
                (options, display, url)
            }
        };
        // Never run anything in the URL's own database.
        let server = server.database("");
        let admin = MySqlPoolOptions::new()
            .max_connections(4)
            .min_connections(0)
            .acquire_timeout(config::connect_timeout())
            .after_connect(|conn, _| {
                Box::pin(async move {
                    // Dropping a database waits for the metadata locks of
                    // sessions still in it: never forever.
                    conn.execute("SET SESSION lock_wait_timeout = 30").await?;
                    // Fingerprints concatenate a whole schema.
                    conn.execute("SET SESSION group_concat_max_len = 67108864")
                        .await?;
                    // MySQL 8 caches the AUTO_INCREMENT it reports (MariaDB
                    // has no such setting).
                    let _ = conn
                        .execute("SET SESSION information_schema_stats_expiry = 0")
                        .await;
                    Ok(())
                })
            })
            .connect_lazy_with(server.clone());
        // A wrong URL: a clear error within the connect timeout.
        let mut owner_conn = connect(&server, &display_url).await?;
        let mut owner = 0u32;
        for _ in 0..16 {
            let candidate = u32::from_le_bytes(
                hex8(
                    format!(
                        "{}:{:?}:{}",
                        std::process::id(),
                        Instant::now(),
                        owner.wrapping_add(1)
                    )
                    .as_bytes(),
                )
                .as_bytes()[..4]
                    .try_into()
                    .unwrap_or_default(),
            ) ^ std::process::id();
            let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 0)")
                .bind(owner_lock(candidate))
                .fetch_one(&mut owner_conn)
                .await
                .map_err(|e| format!("db-test: taking the owner lock on {display_url}: {e}"))?;
            owner = candidate;
            if got == Some(1) {
                break;
            }
        }
        Ok(Engine {
            display_url,
            url,
            server,
            admin,
            owner,
            owner_conn: Mutex::new(Some(owner_conn)),
            counter: AtomicU64::new(0),
            templates: Mutex::new(HashMap::new()),
        })
    }

    /// Options to `database` on this server.
    pub(crate) fn options_for(&self, database: &str) -> MySqlConnectOptions {
        self.server.clone().database(database)
    }

    /// An admin connection.
    async fn admin(&self) -> Result<sqlx::pool::PoolConnection<sqlx::MySql>, String> {
        self.admin.acquire().await.map_err(|e| {
            format!(
                "db-test: cannot connect to {} (DB_TEST_CONNECT_TIMEOUT={:?}): {e}",
                self.display_url,
                config::connect_timeout()
            )
        })
    }

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
            let (source_key, migrator) = resolve_migrations(migrations, manifest_dir).await?;
            self.build_template(&source_key, migrator)
                .await
                .map(Arc::new)
        })
        .await
        .cloned()
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
        let mut admin = self.admin().await?;
        let lock = format!("{prefix}_lock");
        let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 600)")
            .bind(&lock)
            .fetch_one(&mut *admin)
            .await
            .map_err(|e| ctx("taking the template lock", e))?;
        if got != Some(1) {
            return Err(format!(
                "db-test: waited 600s for the template lock `{lock}` on {}; another test process \
                 is building the template, or is stuck",
                self.display_url
            ));
        }
        let result = self
            .build_locked(&mut admin, migrator.get(), &prefix, &template, &working)
            .await;
        let _ = sqlx::query("SELECT RELEASE_LOCK(?)")
            .bind(&lock)
            .execute(&mut *admin)
            .await;
        let (script, recycle) = result?;
        drop(admin);
        self.sweep_leftovers().await;
        self.sweep_outdated(&prefix).await;
        let lock_wait = lock_wait_secs();
        let pool = MySqlPoolOptions::new()
            .max_connections(config::pool_size())
            .acquire_timeout(config::acquire_timeout())
            // A connection comes back rolled back and healthy; one the server
            // dropped fails to begin and is replaced (see `setup`).
            .test_before_acquire(false)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    // Tests share the working database: a test waiting for a
                    // row another test holds gives up after
                    // DB_TEST_LOCK_TIMEOUT (5s), not InnoDB's 50s.
                    conn.execute(sqlx::AssertSqlSafe(format!(
                        "SET SESSION innodb_lock_wait_timeout = {lock_wait}, \
                         lock_wait_timeout = {lock_wait}"
                    )))
                    .await?;
                    Ok(())
                })
            })
            .connect_lazy_with(self.options_for(&working));
        Ok(Template {
            prefix,
            template,
            working,
            pool,
            script,
            recycle,
            spares: Mutex::new(Vec::new()),
            running: AtomicUsize::new(0),
            recycling: AtomicUsize::new(0),
            recycled: Notify::new(),
        })
    }

    /// Under the template lock: builds what is missing, returns the clone script.
    async fn build_locked(
        &self,
        admin: &mut MySqlConnection,
        migrator: &sqlx::migrate::Migrator,
        prefix: &str,
        template: &str,
        working: &str,
    ) -> Result<(String, Option<Recycle>), String> {
        let ctx =
            |what: &str, e: sqlx::Error| format!("db-test: {what} on {}: {e}", self.display_url);
        let existing: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata \
             WHERE schema_name LIKE CONCAT(?, '\\_%')",
        )
        .bind(prefix)
        .fetch_all(&mut *admin)
        .await
        .map_err(|e| ctx("listing databases", e))?;
        let has = |n: &str| existing.iter().any(|e| e == n);
        let building = format!("{prefix}_tb");
        if !has(template) || has(&building) {
            let t0 = Instant::now();
            if has(&building) {
                tracing::info!(database = %template, "db-test: rebuilding a half-built template");
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
            if migrator.iter().next().is_some() {
                migrator.run(&mut conn).await.map_err(|e| {
                    format!("db-test: migrations failed while building template {template}: {e}")
                })?;
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
        let script = clone_script(admin, template)
            .await
            .map_err(|e| ctx("reading the template's schema", e))?;
        let cloning = format!("{prefix}_wb");
        if !has(working) || has(&cloning) {
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
            clone_into(admin, &script, working)
                .await
                .map_err(|e| ctx("creating the working database", e))?;
            admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE {}",
                    quote(&cloning)
                )))
                .await
                .map_err(|e| ctx("finishing the working database", e))?;
        }
        // Without a plan, per-test databases are cloned afresh: slower, the
        // same result.
        let recycle = recycle::plan(admin, template).await.unwrap_or_else(|e| {
            tracing::warn!(%template, "db-test: per-test databases will not be recycled: {e}");
            None
        });
        Ok((script, recycle))
    }

    /// Drops per-test databases whose owning process is gone (its owner
    /// lock is free) and that were not kept on purpose.
    /// Drops the templates (and working databases) of the same migrations
    /// source with other migrations hashes: outdated once the migrations
    /// changed. Only those built longer than `DB_TEST_OUTDATED_AFTER` ago
    /// (10 min) whose working database nobody is connected to, so that two
    /// checkouts with different migrations can share a server.
    async fn sweep_outdated(&self, prefix: &str) {
        // `dbtest_<source>_`: every hash of this source.
        let Some(source) = prefix.rfind('_').map(|i| &prefix[..=i]) else {
            return;
        };
        let Ok(mut admin) = self.admin().await else {
            return;
        };
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata \
             WHERE schema_name LIKE CONCAT(REPLACE(?, '_', '\\_'), '%')",
        )
        .bind(source)
        .fetch_all(&mut *admin)
        .await
        .unwrap_or_default();
        let mut others: Vec<&str> = names
            .iter()
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
            for kind in ["w", "wb", "t", "tb"] {
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

    async fn sweep_leftovers(&self) {
        let Ok(mut admin) = self.admin().await else {
            return;
        };
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata \
             WHERE schema_name LIKE 'dbtest\\_%'",
        )
        .fetch_all(&mut *admin)
        .await
        .unwrap_or_default();
        for name in names {
            let Some(owner) = test_database_owner(&name) else {
                continue;
            };
            if owner == self.owner {
                continue;
            }
            let used: Option<i64> = sqlx::query_scalar("SELECT IS_USED_LOCK(?)")
                .bind(owner_lock(owner))
                .fetch_one(&mut *admin)
                .await
                .unwrap_or(Some(0));
            if used.is_some() {
                continue;
            }
            let kept: bool = sqlx::query_scalar(
                "SELECT EXISTS(SELECT 1 FROM information_schema.tables \
                 WHERE table_schema = ? AND table_name = '_dbtest_kept')",
            )
            .bind(&name)
            .fetch_one(&mut *admin)
            .await
            .unwrap_or(true);
            if !kept {
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

    /// A per-test database: a spare (with its pool, connected) if one is
    /// ready, otherwise a new clone of the template (and no pool yet).
    pub(crate) async fn create_test_database(
        &self,
        template: &Template,
    ) -> Result<(String, Option<MySqlPool>), String> {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let recycled = template.recycled.notified();
            tokio::pin!(recycled);
            recycled.as_mut().enable();
            let spare = template
                .spares
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop();
            if let Some((name, pool)) = spare {
                template.running.fetch_add(1, Ordering::Relaxed);
                return Ok((name, Some(pool)));
            }
            // With no other test running, nothing else would use the time:
            // wait for the database being recycled (a few ms) rather than
            // clone a new one. With others running, clone: their databases
            // come back as spares for the tests after this one.
            if template.recycling.load(Ordering::Relaxed) == 0
                || template.running.load(Ordering::Relaxed) > 0
                || tokio::time::timeout_at(deadline.into(), recycled)
                    .await
                    .is_err()
            {
                break;
            }
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}_d{:08x}_{n}", template.prefix, self.owner);
        debug_assert!(name.len() <= MAX_NAME_LEN);
        let mut admin = self.admin().await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE {}",
                quote(&name)
            )))
            .await
            .map_err(|e| {
                format!(
                    "db-test: creating database {name} on {}: {e}",
                    self.display_url
                )
            })?;
        if let Err(e) = clone_into(&mut admin, &template.script, &name).await {
            let _ = admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {}",
                    quote(&name)
                )))
                .await;
            return Err(format!(
                "db-test: cloning template {} into {name} on {}: {e}",
                template.template, self.display_url
            ));
        }
        template.running.fetch_add(1, Ordering::Relaxed);
        Ok((name, None))
    }

    /// Ends every session in `database` (`KILL CONNECTION`), or only their
    /// running statements (`KILL QUERY`).
    pub(crate) async fn kill_sessions(&self, database: &str, connection: bool) {
        let Ok(mut admin) = self.admin().await else {
            return;
        };
        let ids: Vec<u64> = sqlx::query_scalar(
            "SELECT CAST(id AS UNSIGNED) FROM information_schema.processlist \
             WHERE db = ? AND id <> CONNECTION_ID()",
        )
        .bind(database)
        .fetch_all(&mut *admin)
        .await
        .unwrap_or_default();
        for id in ids {
            self.kill_one(&mut admin, id, connection).await;
        }
    }

    /// `KILL QUERY id` or `KILL CONNECTION id`.
    pub(crate) async fn kill(&self, id: u64, connection: bool) {
        if let Ok(mut admin) = self.admin().await {
            self.kill_one(&mut admin, id, connection).await;
        }
    }

    async fn kill_one(&self, admin: &mut MySqlConnection, id: u64, connection: bool) {
        let what = if connection { "CONNECTION" } else { "QUERY" };
        // An error: the session is already gone.
        let _ = admin
            .execute(sqlx::AssertSqlSafe(format!("KILL {what} {id}")))
            .await;
    }

    /// The test using `name` is over: closes its pool, then recycles the
    /// database into a spare (or drops it), in the background on the shared
    /// runtime, off the test's time. A failure there is the engine's, not the test's: it is
    /// logged, and a database left behind is this process's, swept by the
    /// next one.
    pub(crate) fn release_test_database(
        &'static self,
        template: Arc<Template>,
        name: String,
        pool: MySqlPool,
        test: &'static str,
    ) {
        template.recycling.fetch_add(1, Ordering::Relaxed);
        template.running.fetch_sub(1, Ordering::Relaxed);
        crate::run::shared_runtime().spawn(async move {
            let closed = self.close_test_pool(&name, &pool, test).await;
            if !(closed && self.recycle_test_database(&template, &name).await)
                && let Err(e) = self.drop_test_database(&name).await
            {
                tracing::warn!("{e}");
            }
            template.recycling.fetch_sub(1, Ordering::Relaxed);
            template.recycled.notify_waiters();
        });
    }

    /// Closes the pool of a test's database; a connection that a task of
    /// the test still holds after the grace period is killed (`false`).
    pub(crate) async fn close_test_pool(&self, name: &str, pool: &MySqlPool, test: &str) -> bool {
        if tokio::time::timeout(TEARDOWN_GRACE, pool.close())
            .await
            .is_ok()
        {
            return true;
        }
        tracing::warn!(
            test,
            database = %name,
            "db-test: a task still held a connection to the test's database \
             {TEARDOWN_GRACE:?} after the test ended; its connections were killed"
        );
        self.kill_sessions(name, true).await;
        false
    }

    /// A test's database that is not recycled (dropped or kept) is no
    /// longer in use.
    pub(crate) fn end_test_database(&self, template: &Template) {
        template.running.fetch_sub(1, Ordering::Relaxed);
    }

    /// Resets a used per-test database to the template's state and keeps it
    /// as a spare for the next test of this process, with a pool connected
    /// to it (a new connection: no session state of the test's); `false`
    /// when that is not possible (the test changed the schema, the template
    /// has triggers, enough spares), and the caller drops it. No file is
    /// created or removed: rows are deleted and copied back, and
    /// `AUTO_INCREMENT`s that moved are set back (see [`recycle`]).
    pub(crate) async fn recycle_test_database(&self, template: &Template, name: &str) -> bool {
        let Some(plan) = &template.recycle else {
            return false;
        };
        if template
            .spares
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            >= config::max_databases()
        {
            return false;
        }
        let Ok(mut admin) = self.admin().await else {
            return false;
        };
        if let Err(why) = plan.reset(&mut admin, name).await {
            tracing::debug!(database = %name, why, "db-test: dropping a test database instead of recycling it");
            return false;
        }
        drop(admin);
        let pool = self.test_pool(name);
        if let Err(e) = pool.acquire().await {
            tracing::debug!(database = %name, "db-test: dropping a test database instead of recycling it: {e}");
            pool.close().await;
            return false;
        }
        template
            .spares
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_string(), pool));
        true
    }

    /// The pool of a test's own database (not connected yet).
    pub(crate) fn test_pool(&self, name: &str) -> MySqlPool {
        MySqlPoolOptions::new()
            .max_connections(config::database_pool_size())
            .acquire_timeout(config::acquire_timeout())
            // An idle connection is handed out without a round trip: the
            // database is the test's alone.
            .test_before_acquire(false)
            .connect_lazy_with(self.options_for(name))
    }

    /// Drops a per-test database.
    pub(crate) async fn drop_test_database(&self, name: &str) -> Result<(), String> {
        if test_database_owner(name) != Some(self.owner) {
            return Err(format!(
                "db-test: refusing to drop {name}: not a database of this process"
            ));
        }
        let mut admin = self.admin().await?;
        let dropped = admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {}",
                quote(name)
            )))
            .await;
        dropped.map(|_| ()).map_err(|e| {
            format!(
                "db-test: dropping database {name} on {}: {e}",
                self.display_url
            )
        })
    }

    /// Keeps a failed test's database: marks it so that no sweep drops it.
    pub(crate) async fn keep_test_database(&self, name: &str) -> Result<(), String> {
        let mut admin = self.admin().await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE TABLE {}.`_dbtest_kept` (kept_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)",
                quote(name)
            )))
            .await
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "db-test: keeping database {name} on {}: {e}",
                    self.display_url
                )
            })
    }

    /// Releases the owner lock (tests only use it through process exit).
    #[allow(dead_code)]
    pub(crate) fn owner_id(&self) -> u32 {
        let _ = &self.owner_conn;
        self.owner
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

/// Connects within the connect timeout.
pub(crate) async fn connect(
    options: &MySqlConnectOptions,
    display_url: &str,
) -> Result<MySqlConnection, String> {
    let timeout = config::connect_timeout();
    match tokio::time::timeout(timeout, MySqlConnection::connect_with(options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(format!("db-test: cannot connect to {display_url}: {e}")),
        Err(_) => Err(format!(
            "db-test: cannot connect to {display_url}: no answer within {timeout:?} \
             (DB_TEST_CONNECT_TIMEOUT); is the server running and the URL right?"
        )),
    }
}

/// Runs a clone script into `target` (which exists and is empty).
async fn clone_into(
    admin: &mut MySqlConnection,
    script: &str,
    target: &str,
) -> Result<(), sqlx::Error> {
    let sql = script.replace(TARGET, &target.replace('`', "``"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *admin)
        .await?;
    Ok(())
}

/// The script that clones `template` into [`TARGET`]: one round trip.
async fn clone_script(admin: &mut MySqlConnection, template: &str) -> Result<String, sqlx::Error> {
    let q = quote(template);
    let target = format!("`{TARGET}`");
    // Whatever the template's text names with its own name names the clone.
    let retarget = |text: &str| text.replace(&format!("{q}."), &format!("{target}."));
    let mut script =
        format!("USE {target};\nSET @dbtest_fk = @@FOREIGN_KEY_CHECKS, FOREIGN_KEY_CHECKS = 0;\n");
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
        let has_rows: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT EXISTS(SELECT 1 FROM {q}.{qt})"
        )))
        .fetch_one(&mut *admin)
        .await?;
        if has_rows {
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
            copies.push_str(&format!(
                "INSERT INTO {target}.{qt} ({columns}) SELECT {columns} FROM {q}.{qt};\n"
            ));
        }
    }
    script.push_str(&copies);
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
    let routines = sqlx::query(
        "SELECT CAST(routine_name AS CHAR), CAST(routine_type AS CHAR) \
         FROM information_schema.routines WHERE routine_schema = ? ORDER BY routine_name",
    )
    .bind(template)
    .fetch_all(&mut *admin)
    .await?;
    for row in routines {
        let name: String = row.try_get(0)?;
        let kind: String = row.try_get(1)?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SHOW CREATE {kind} {q}.{}",
            quote(&name)
        )))
        .fetch_one(&mut *admin)
        .await?;
        let create: Option<String> = row.try_get(2)?;
        if let Some(create) = create {
            script.push_str(&retarget(&create));
            script.push_str(";\n");
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
        let create: String = row.try_get(2)?;
        script.push_str(&retarget(&create));
        script.push_str(";\n");
    }
    script.push_str("SET FOREIGN_KEY_CHECKS = @dbtest_fk;\n");
    Ok(script)
}

/// Waits (briefly, in real time) until every connection of the pool is idle.
pub(crate) async fn settle_pool(pool: &MySqlPool) {
    let deadline = Instant::now() + Duration::from_millis(200);
    while (pool.num_idle() as u32) < pool.size() && Instant::now() < deadline {
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_micros(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_generated_per_test_names_have_an_owner() {
        assert_eq!(
            test_database_owner("dbtest_0123abcd_0123456789_d0000002a_7"),
            Some(42)
        );
        assert_eq!(test_database_owner("dbtest_0123abcd_0123456789_t"), None);
        assert_eq!(test_database_owner("dbtest_0123abcd_0123456789_w"), None);
        assert_eq!(test_database_owner("test"), None);
        assert_eq!(test_database_owner("dbtest_x_y_dzz_1"), None);
        let longest = format!(
            "dbtest_{}_{}_d{:08x}_{}",
            "a".repeat(8),
            "b".repeat(10),
            u32::MAX,
            u64::MAX
        );
        assert!(longest.len() <= MAX_NAME_LEN, "{}", longest.len());
    }

    #[test]
    fn literals_and_names_are_quoted() {
        assert_eq!(quote("a`b"), "`a``b`");
    }
}
