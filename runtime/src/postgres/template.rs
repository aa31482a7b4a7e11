//! The template of a migrator hash: a database with every migration run,
//! built once on the server for all test processes and never connected to
//! afterwards (cloning needs it idle). Its working database and its clones
//! are made from it.
//!
//! Parallel processes build a template exactly once: the build runs under
//! an advisory lock per migrations source, into a `_b` database that is
//! renamed to `_t` when its migrations are done. A `_b` found under the lock
//! is the remains of a killed build and is started over.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Postgres};
use tokio::sync::OnceCell;

use super::embedded;
use super::engine::{
    AdvisoryLock, Engine, drop_database_sql, mark, marked_sql, quote_ident, quote_literal,
    rename_database_sql,
};
use super::naming::{self, Kind};
use super::recycle::Recycle;
use crate::slots::Slots;

/// Where a test's migrations come from (built by the macro).
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum Migrations {
    /// `./migrations` under the crate root if it exists, otherwise none.
    Default,
    /// `migrations = "path"`, relative to the crate root.
    Path(&'static str),
    /// `migrations = false`.
    None,
    /// `migrator = "path::TO::MIGRATOR"`; the string names it.
    Migrator(fn() -> &'static Migrator, &'static str),
}

/// A migrated template and the working database cloned from it.
pub(crate) struct Template {
    /// `dbtest_<base>_<source>_<hash>`: every database of this template's
    /// hash starts with it.
    pub(crate) prefix: String,
    pub(crate) template: String,
    pub(crate) working: String,
    /// The process's connections to the working database, a pool of one
    /// each (see [`crate::slots`]).
    pub(crate) slots: Slots<Postgres>,
    /// Options to connect to the working database.
    pub(crate) options: PgConnectOptions,
    /// `dbtest_<base>_<source>` and `<hash>`, to rebuild the template.
    pub(super) source: String,
    pub(super) hash: String,
    pub(super) migrator: MigratorRef,
    pub(super) leftovers_checked: OnceCell<()>,
    /// How to reset a per-test database to the template's state, if that is
    /// possible for this schema (see [`Engine::recycle_test_database`]).
    pub(super) recycle: OnceCell<Option<Recycle>>,
    /// What a test in transaction mode needs to know of the working
    /// database's schema (deferrable constraints, settings its functions
    /// make), read by its first test.
    pub(crate) facts: OnceCell<crate::shared::SchemaFacts>,
}

pub(crate) enum MigratorRef {
    Static(&'static Migrator),
    Owned(Migrator),
}

impl MigratorRef {
    pub(crate) fn get(&self) -> &Migrator {
        match self {
            MigratorRef::Static(m) => m,
            MigratorRef::Owned(m) => m,
        }
    }
}

/// Prefix of the comment db-test puts on a template: when it was built.
const BUILT_AT: &str = "db-test template built at ";

/// Seconds since the Unix epoch, as a template's comment gives them.
pub(super) fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// When a template was built ([`unix_seconds`]), from its comment; 0 (long
/// ago) if the comment does not say.
pub(super) fn built_at(comment: Option<&str>) -> i64 {
    comment
        .and_then(|c| c.strip_prefix(BUILT_AT))
        .and_then(|t| t.lines().next())
        .and_then(|t| t.trim().parse::<i64>().ok())
        .unwrap_or(0)
}

/// A template's comment: db-test's label ([`BUILT_AT`]), then, on the
/// lines after it, the comment the migrations gave the database, if any.
fn template_comment(own: Option<&str>) -> String {
    match own {
        Some(own) => format!("{BUILT_AT}{}\n{own}", unix_seconds()),
        None => format!("{BUILT_AT}{}", unix_seconds()),
    }
}

/// The comment the migrations gave a database, from its template's
/// comment ([`template_comment`]): what its clones get.
pub(super) fn migrations_comment(template_comment: &str) -> Option<&str> {
    match template_comment.strip_prefix(BUILT_AT) {
        Some(rest) => rest.split_once('\n').map(|(_, own)| own),
        None => Some(template_comment),
    }
}

/// The `hash` of a template's name: its migrations' versions, checksums and
/// directions, and how templates are built.
pub(crate) fn migrations_hash(migrator: &Migrator) -> String {
    // Bump TEMPLATE_FORMAT when the way templates are built changes, so
    // that old templates are rebuilt (and dropped as outdated). v5: spares
    // recycled by older builds may hold sequence positions and `ALTER`ed
    // state their reset and fingerprint missed; they are not reused. v6:
    // PostgreSQL templates carry db-test's mark (`engine::MARK`), and so
    // every database cloned from them: older ones have none.
    const TEMPLATE_FORMAT: &[u8] = b"db-test template v6";
    let mut hasher_input = TEMPLATE_FORMAT.to_vec();
    for m in migrator.iter() {
        hasher_input.extend_from_slice(&m.version.to_le_bytes());
        hasher_input.extend_from_slice(&m.checksum);
        hasher_input.push(m.migration_type.is_down_migration() as u8);
    }
    naming::hash(&hasher_input)
}

/// A path with symlinks and `..` resolved, as text; the path itself if it
/// cannot be resolved.
fn canonical(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Where these migrations come from, as a key for a per-process cache of
/// templates. Checks that a named directory exists.
pub(crate) fn migrations_key(
    migrations: Migrations,
    manifest_dir: &'static str,
) -> Result<String, String> {
    // Asked by every test, and a directory's `stat` costs more than the
    // rest of the lookup: each attribute's strings (static, so their
    // addresses name them) are looked up once per process.
    type Seen = std::collections::HashMap<(usize, usize, usize, usize), String>;
    static SEEN: std::sync::LazyLock<std::sync::Mutex<Seen>> =
        std::sync::LazyLock::new(Default::default);
    let path = match migrations {
        Migrations::Default => Some(""),
        Migrations::Path(p) => Some(p),
        Migrations::None | Migrations::Migrator(..) => None,
    };
    let Some(path) = path else {
        return migrations_key_uncached(migrations, manifest_dir);
    };
    let id = (
        manifest_dir.as_ptr() as usize,
        manifest_dir.len(),
        path.as_ptr() as usize,
        // The default's `""` may share its address with a path's end.
        if matches!(migrations, Migrations::Default) {
            usize::MAX
        } else {
            path.len()
        },
    );
    if let Some(key) = crate::shared::lock(&SEEN).get(&id) {
        return Ok(key.clone());
    }
    let key = migrations_key_uncached(migrations, manifest_dir)?;
    crate::shared::lock(&SEEN).insert(id, key.clone());
    Ok(key)
}

fn migrations_key_uncached(
    migrations: Migrations,
    manifest_dir: &'static str,
) -> Result<String, String> {
    Ok(match migrations {
        Migrations::Default => {
            let dir = PathBuf::from(manifest_dir).join("migrations");
            if dir.is_dir() {
                dir.display().to_string()
            } else {
                "none".to_string()
            }
        }
        Migrations::Path(p) => {
            let dir = PathBuf::from(manifest_dir).join(p);
            if !dir.is_dir() {
                let what = if dir.exists() {
                    "is not a directory"
                } else {
                    "does not exist"
                };
                return Err(format!(
                    "db-test: migrations directory {} {what} (from `migrations = \"{p}\"`, \
                     relative to {manifest_dir}); it names a directory of migration files",
                    dir.display()
                ));
            }
            dir.display().to_string()
        }
        Migrations::None => "none".to_string(),
        Migrations::Migrator(_, name) => format!("{manifest_dir}::{name}"),
    })
}

/// The migrator a test names, and a key for its source that is the same in
/// every process and checkout-specific (the whole canonical path: two
/// checkouts whose migrations directories end alike still get templates of
/// their own). Every backend builds its templates from this.
pub(crate) async fn resolve_migrations(
    migrations: Migrations,
    manifest_dir: &'static str,
) -> Result<(String, MigratorRef), String> {
    let key = migrations_key(migrations, manifest_dir)?;
    let dir = match migrations {
        Migrations::Default | Migrations::Path(_) if key != "none" => Some(PathBuf::from(&key)),
        _ => None,
    };
    let source_key = match (migrations, &dir) {
        (Migrations::Migrator(_, name), _) => {
            format!("{}::{name}", canonical(Path::new(manifest_dir)))
        }
        (_, Some(dir)) => canonical(dir),
        (_, None) => key.clone(),
    };
    let migrator = match (migrations, dir) {
        (Migrations::Migrator(m, _), _) => MigratorRef::Static(m()),
        (_, Some(dir)) => {
            // sqlx reads the directory with `spawn_blocking`: asked for on a
            // worker (see `run::spawn_blocking_uncaptured`).
            let read = dir.clone();
            let migrator = crate::run::on_worker(async move { Migrator::new(read).await })
                .await
                .map_err(|e| format!("db-test: reading migrations in {}: {e}", dir.display()))?;
            MigratorRef::Owned(migrator.map_err(|e| {
                format!("db-test: cannot read migrations in {}: {e}", dir.display())
            })?)
        }
        (_, None) => MigratorRef::Owned(Migrator::with_migrations(Vec::new())),
    };
    Ok((source_key, migrator))
}

/// [`resolve_migrations`], once per process for each set of migrations:
/// a backend's setup starts it beside its engine's start, and its template
/// then finds it done. The migrator lives as long as the process.
#[cfg_attr(not(feature = "mysql"), allow(dead_code))]
pub(crate) async fn resolve_migrations_once(
    migrations: Migrations,
    manifest_dir: &'static str,
) -> Result<(String, MigratorRef), String> {
    type Resolved = Result<(String, &'static Migrator), String>;
    type Cells = std::collections::HashMap<String, Arc<tokio::sync::OnceCell<Resolved>>>;
    static RESOLVED: std::sync::LazyLock<std::sync::Mutex<Cells>> =
        std::sync::LazyLock::new(Default::default);
    let key = migrations_key(migrations, manifest_dir)?;
    let cell = crate::shared::lock(&RESOLVED)
        .entry(key)
        .or_default()
        .clone();
    let resolved = cell
        .get_or_init(|| async {
            let (source_key, migrator) = resolve_migrations(migrations, manifest_dir).await?;
            let migrator: &'static Migrator = match migrator {
                MigratorRef::Static(m) => m,
                MigratorRef::Owned(m) => Box::leak(Box::new(m)),
            };
            Ok((source_key, migrator))
        })
        .await;
    resolved
        .clone()
        .map(|(source_key, migrator)| (source_key, MigratorRef::Static(migrator)))
}

/// An engine's template for these migrations if it was built already,
/// without waiting: `templates` is that engine's map of them, by
/// [`migrations_key`] (PostgreSQL's and MySQL's alike).
pub(crate) fn built<T>(
    templates: &std::sync::Mutex<std::collections::HashMap<String, Arc<OnceCell<Arc<T>>>>>,
    migrations: Migrations,
    manifest_dir: &'static str,
) -> Option<Arc<T>> {
    let key = migrations_key(migrations, manifest_dir).ok()?;
    let map = templates.lock().unwrap_or_else(|e| e.into_inner());
    map.get(&key)?.get().cloned()
}

impl Engine {
    /// [`Engine::template`] if it was built already, without waiting.
    pub(crate) fn built_template(
        &self,
        migrations: Migrations,
        manifest_dir: &'static str,
    ) -> Option<Arc<Template>> {
        built(&self.templates, migrations, manifest_dir)
    }

    /// The template (and working database and pool) for these migrations.
    pub(crate) async fn template(
        &'static self,
        migrations: Migrations,
        manifest_dir: &'static str,
    ) -> Result<Arc<Template>, String> {
        let key = migrations_key(migrations, manifest_dir)?;
        let cell = {
            let mut map = self.templates.lock().unwrap();
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
        let source = naming::source(&self.base, source_key);
        let prefix = naming::prefix(&source, &hash);

        // Held until the process ends: the outdated-template sweep of a
        // process running newer migrations leaves this hash alone.
        self.hold_hash(AdvisoryLock::hash(&prefix)).await?;

        let working = naming::name(&prefix, Kind::Working);
        let slots = self
            .working_slots(&working, migrator.get(), &source, &hash)
            .await?;
        Ok(Template {
            template: naming::name(&prefix, Kind::Template),
            prefix,
            options: self.options_for(&working),
            working,
            slots,
            source,
            hash,
            migrator,
            leftovers_checked: OnceCell::new(),
            recycle: OnceCell::new(),
            facts: OnceCell::new(),
        })
    }

    /// Builds the template of `<source>_<hash>` and its working database,
    /// whichever is missing, under a cluster-wide advisory lock, so parallel
    /// test processes build it exactly once. Then sweeps the source's
    /// outdated templates.
    pub(super) async fn create_template(
        &self,
        migrator: &Migrator,
        source: &str,
        hash: &str,
    ) -> Result<(), String> {
        let t0 = std::time::Instant::now();
        let ctx =
            |what: &str, e: sqlx::Error| format!("db-test: {what} on {}: {e}", self.display_url);
        let mut admin = self.admin_connect().await?;
        let lock_key = i64::from_le_bytes(
            embedded::short_hash(format!("db-test:{source}").as_bytes()).as_bytes()[..8]
                .try_into()
                .unwrap(),
        );
        // Bounded: a process that froze while building (or a host that
        // lost its network with the lock held) must not stall every test
        // process on the server for good.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SET lock_timeout = '{}s'",
            crate::config::TEMPLATE_LOCK_WAIT.as_secs()
        )))
        .execute(&mut admin)
        .await
        .map_err(|e| ctx("taking the template lock", e))?;
        let locked = sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(lock_key)
            .execute(&mut admin)
            .await;
        if let Err(e) = locked {
            if crate::hint::sqlstate(&e).as_deref() != Some("55P03") {
                return Err(ctx("taking the template lock", e));
            }
            let holder: Option<String> = sqlx::query_scalar(
                "SELECT format('pid %s (application %L, from %s, connected since %s)', a.pid, \
                 a.application_name, coalesce(a.client_addr::text, 'a local socket'), \
                 a.backend_start) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                 AND ((l.classid::int8 << 32) | l.objid::int8) = $1 LIMIT 1",
            )
            .bind(lock_key)
            .fetch_optional(&mut admin)
            .await
            .ok()
            .flatten();
            return Err(format!(
                "db-test: waited {:?} for another test process to build the template of {source} \
                 on {}; the session building it is {}. It is stuck (a frozen or unreachable \
                 process holds the lock): end that session, and the next test builds the \
                 template.",
                crate::config::TEMPLATE_LOCK_WAIT,
                self.display_url,
                holder.unwrap_or_else(|| "gone now".to_string())
            ));
        }
        sqlx::raw_sql("RESET lock_timeout")
            .execute(&mut admin)
            .await
            .map_err(|e| ctx("taking the template lock", e))?;

        let prefix = naming::prefix(source, hash);
        let building = naming::name(&prefix, Kind::Building);
        let template = naming::name(&prefix, Kind::Template);
        let working = naming::name(&prefix, Kind::Working);
        let existing: Vec<String> = sqlx::query_scalar(
            "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)",
        )
        .bind(naming::under(source))
        .fetch_all(&mut admin)
        .await
        .map_err(|e| ctx("listing databases", e))?;
        let has = |n: &str| existing.iter().any(|e| e == n);

        if !has(&template) {
            if has(&building) {
                // A process was killed mid-migration: start over, if it was
                // db-test's (a database of that name without db-test's mark
                // is someone else's, and stays).
                let ours: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT {} FROM pg_database d WHERE d.datname = $1",
                    marked_sql("d.oid")
                )))
                .bind(&building)
                .fetch_optional(&mut admin)
                .await
                .map_err(|e| ctx("checking a half-built template", e))?
                .unwrap_or(false);
                if !ours {
                    return Err(format!(
                        "db-test: database {building} exists on {}, named as db-test names a \
                         template it is building, but db-test did not make it (it has no \
                         db-test mark); rename or drop it",
                        self.display_url
                    ));
                }
                tracing::info!(database = %building, "db-test: dropping half-built template");
                let drop = drop_database_sql(&admin, &building, true);
                Self::admin_exec(&mut admin, &drop)
                    .await
                    .map_err(|e| ctx("dropping a half-built template", e))?;
            }
            self.create_from_template1(&mut admin, &building).await?;
            // Marked before anything else: every clone copies the mark.
            // Unmarked, it is not db-test's for the next process: dropped
            // here, just made.
            if let Err(e) = mark(&mut admin, &building).await {
                let drop = drop_database_sql(&admin, &building, true);
                let _ = Self::admin_exec(&mut admin, &drop).await;
                return Err(ctx("marking the new template", e));
            }
            let mut conn = self
                .options_for(&building)
                .connect()
                .await
                .map_err(|e| ctx("connecting to the new template", e))?;
            if migrator.iter().next().is_some()
                && let Err(e) = migrator.run(&mut conn).await
            {
                // Nothing half-built left behind (best effort: a process
                // killed here leaves it to the next one, which starts over).
                let _ = conn.close().await;
                let drop = drop_database_sql(&admin, &building, true);
                let _ = Self::admin_exec(&mut admin, &drop).await;
                return Err(format!(
                    "db-test: migrations failed while building template {template}: {e}"
                ));
            }
            let _ = conn.close().await;
            Self::admin_exec(&mut admin, &rename_database_sql(&building, &template))
                .await
                .map_err(|e| ctx("renaming the template", e))?;
            // The label goes first in the database's comment, and the
            // migrations' own comment (`COMMENT ON DATABASE`) after it.
            let own: Option<String> = sqlx::query_scalar(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            )
            .bind(&template)
            .fetch_one(&mut admin)
            .await
            .map_err(|e| ctx("reading the template's comment", e))?;
            Self::admin_exec(
                &mut admin,
                &format!(
                    "COMMENT ON DATABASE {} IS {}",
                    quote_ident(&template),
                    quote_literal(&template_comment(own.as_deref()))
                ),
            )
            .await
            .map_err(|e| ctx("labelling the template", e))?;
            // Nobody may connect to a template: cloning needs it idle.
            Self::admin_exec(
                &mut admin,
                &format!(
                    "ALTER DATABASE {} ALLOW_CONNECTIONS false",
                    quote_ident(&template)
                ),
            )
            .await
            .map_err(|e| ctx("locking the template", e))?;
            tracing::info!(%template, elapsed_ms = t0.elapsed().as_millis() as u64, "db-test: template built");
        }
        if !has(&working) {
            Self::create_working(&mut admin, &working, &template)
                .await
                .map_err(|e| ctx("creating the working database", e))?;
        }
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(lock_key)
            .execute(&mut admin)
            .await;

        // After the build lock is released: other processes need not wait.
        self.sweep_outdated(&mut admin, source, hash).await;
        let _ = admin.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_is_the_whole_canonical_path() {
        let dir = std::env::temp_dir();
        assert_eq!(canonical(&dir.join(".")), canonical(&dir));
    }

    #[test]
    fn a_template_without_a_comment_is_old() {
        let now = unix_seconds();
        assert_eq!(built_at(Some(&format!("{BUILT_AT}{now}"))), now);
        assert_eq!(built_at(Some(&format!("{BUILT_AT}{now}\napp"))), now);
        assert_eq!(migrations_comment(&template_comment(None)), None);
        assert_eq!(
            migrations_comment(&template_comment(Some("app\ndatabase"))),
            Some("app\ndatabase")
        );
        assert_eq!(migrations_comment("their own"), Some("their own"));
        assert_eq!(built_at(Some("built by hand")), 0);
        assert_eq!(built_at(None), 0);
    }
}
