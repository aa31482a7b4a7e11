//! The process-wide engine: which server, the admin pool, this process's
//! owner lock, and the glue the rest of the PostgreSQL backend shares (admin
//! connections, DDL, advisory locks).
//!
//! The work itself is split by concept:
//! - [`naming`]: every database name db-test generates,
//!   formatted and parsed in one place (`dbtest_<base>_<source>_<hash>_<kind>`),
//! - [`template`](super::template): the migrated template of a migrator hash,
//! - [`working`](super::working): the working database transaction-mode
//!   tests share, and its pool,
//! - [`recycle`](super::recycle): per-test databases (clones, spares, drops,
//!   kept databases),
//! - [`sweep`](super::sweep): leftovers of killed runs and outdated
//!   templates.
//!
//! Ownership lives on the server, never in the local process table: each
//! process picks a random 32-bit `owner` id and holds a session advisory
//! lock on it ([`OWNER_LOCK`]) on a connection it keeps for its lifetime.
//! A per-test database whose owner's lock is gone and that nobody is
//! connected to is a leftover of a killed run, whichever host or PID
//! namespace it came from. Likewise each process holds a shared advisory
//! lock on every template hash it uses ([`HASH_LOCK`]); the sweep of
//! outdated templates takes it exclusively, so it never drops a template
//! whose working database, spares or clones are in use.

use crate::Backend;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection, PgPool};
use tokio::sync::OnceCell;

pub use super::template::Migrations;
pub(crate) use super::template::Template;
use super::{embedded, naming};
use crate::config;
use crate::hint::sqlstate;

/// First key of the session advisory lock each process holds on its owner id
/// (the second key) for as long as it lives ("dbt" 1).
pub(super) const OWNER_LOCK: i32 = 0x6462_7401;
/// First key of the shared advisory lock each process holds on every
/// template hash it uses (the second key: from the hash's prefix), and that
/// the outdated-template sweep takes exclusively ("dbt" 2).
pub(super) const HASH_LOCK: i32 = 0x6462_7402;

/// One of db-test's two-key session advisory locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AdvisoryLock {
    /// [`OWNER_LOCK`] or [`HASH_LOCK`].
    pub(super) class: i32,
    pub(super) key: u32,
}

impl AdvisoryLock {
    /// The lock a process holds on its owner id.
    pub(super) fn owner(id: u32) -> Self {
        Self {
            class: OWNER_LOCK,
            key: id,
        }
    }

    /// The lock on a template hash, from its prefix
    /// (`dbtest_<base>_<source>_<hash>`).
    pub(super) fn hash(prefix: &str) -> Self {
        let h = embedded::short_hash(prefix.as_bytes());
        Self {
            class: HASH_LOCK,
            key: u32::from_str_radix(&h[..8], 16).expect("hex"),
        }
    }

    /// Takes it exclusively if nobody holds it; whether it did.
    pub(super) async fn try_lock(self, conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(self.class)
            .bind(self.key as i32)
            .fetch_one(conn)
            .await
    }

    /// Takes it shared, waiting while someone holds it exclusively.
    pub(super) async fn lock_shared(self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_lock_shared($1, $2)")
            .bind(self.class)
            .bind(self.key as i32)
            .execute(conn)
            .await
            .map(|_| ())
    }

    /// Releases an exclusive hold. A failure is not worth reporting: the
    /// lock goes with the session at the latest.
    pub(super) async fn unlock(self, conn: &mut PgConnection) {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
            .bind(self.class)
            .bind(self.key as i32)
            .execute(conn)
            .await;
    }
}

pub(crate) struct Engine {
    /// Options for the URL's own database: used only to create and drop
    /// databases whose names db-test generated. Never written to.
    admin: PgConnectOptions,
    /// The `base` part of every database name ([`naming::base`]).
    pub(super) base: String,
    pub(crate) display_url: String,
    /// Templates by migrations source, each built once per process.
    pub(super) templates: Mutex<HashMap<String, Arc<OnceCell<Arc<Template>>>>>,
    pub(crate) embedded: Option<embedded::Embedded>,
    /// A small pool on the URL's database for CREATE/DROP DATABASE of
    /// per-test databases. Never used to write into that database. It has a
    /// connection for each concurrent clone and two more.
    pub(super) admin_pool: PgPool,
    /// Bounds concurrent clones, so a large suite cannot exhaust the
    /// server's `max_connections`. A clone takes its permit before its
    /// admin connection.
    pub(super) clones: tokio::sync::Semaphore,
    pub(super) clone_counter: std::sync::atomic::AtomicU64,
    /// This process's owner id: part of the names of its per-test databases.
    pub(super) owner: u32,
    /// The connection holding the owner lock and the hash locks, for the
    /// life of the process (reopened if the server dropped it).
    owner_conn: tokio::sync::Mutex<Option<PgConnection>>,
    /// Hash locks this process holds (taken again on a new owner
    /// connection).
    held_hashes: Mutex<Vec<AdvisoryLock>>,
}

static ENGINE: OnceCell<Result<Engine, String>> = OnceCell::const_new();

/// The engine if it started (or failed to), without waiting.
pub(crate) fn started() -> Option<Result<&'static Engine, String>> {
    ENGINE
        .get()
        .map(|started| started.as_ref().map_err(Clone::clone))
}

/// The process-wide engine, started on first use.
pub(crate) async fn engine() -> Result<&'static Engine, String> {
    ENGINE
        .get_or_init(Engine::start)
        .await
        .as_ref()
        .map_err(Clone::clone)
}

/// Removes passwords from a URL for messages: the one in the user info
/// (`postgres://user:secret@host`), and the value of any query parameter
/// whose name holds `password`, in any case and even percent-encoded
/// (`?password=secret`, `&PassWord=secret`, `&sslpassword=secret`). A
/// fragment is dropped: a `#` in an unencoded password starts one.
pub(crate) fn redact(url: &str) -> String {
    if !url.contains("://") {
        return redact_key_values(url);
    }
    let url = match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
            _ => url.to_string(),
        },
    };
    let url = url.split('#').next().unwrap_or_default();
    let Some((head, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| {
            let secret = url::form_urlencoded::parse(pair.as_bytes())
                .next()
                .is_some_and(|(key, _)| key.to_ascii_lowercase().contains("password"));
            match pair.split_once('=') {
                Some((key, _)) if secret => format!("{key}=***"),
                _ => pair.to_string(),
            }
        })
        .collect();
    format!("{head}?{}", query.join("&"))
}

/// A libpq `key=value` connection string (`host=h password=secret`), as
/// someone may put in `DATABASE_URL`, with the value of every key whose
/// name holds `password` replaced, quoted (`'a b'`) or not.
fn redact_key_values(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let Some(eq) = text[i..].find('=').map(|p| i + p) else {
            out.push_str(&text[i..]);
            break;
        };
        let key_start = text[..eq]
            .trim_end()
            .rfind(char::is_whitespace)
            .map_or(i, |p| p + 1);
        let key = text[key_start..eq].trim();
        out.push_str(&text[i..=eq]);
        let mut j = eq + 1;
        while j < b.len() && b[j] == b' ' {
            out.push(' ');
            j += 1;
        }
        // The value: quoted (a backslash escapes), or up to whitespace.
        let start = j;
        if b.get(j) == Some(&b'\'') {
            j += 1;
            while j < b.len() && b[j] != b'\'' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            j = (j + 1).min(b.len());
        } else {
            while j < b.len() && !b[j].is_ascii_whitespace() {
                j += 1;
            }
        }
        if key.to_ascii_lowercase().contains("password") {
            out.push_str("***");
        } else {
            out.push_str(&text[start..j]);
        }
        i = j;
    }
    out
}

/// An SQL identifier, quoted.
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An SQL string literal (standard_conforming_strings, the default since 9.1).
pub(super) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `text` as an `E'..'` literal (for a test's session, which may have
/// turned `standard_conforming_strings` off), which reads the same whatever
/// `standard_conforming_strings` says; `None` as a text `NULL`.
pub(crate) fn quote_literal_e(text: Option<&str>) -> String {
    match text {
        Some(t) => format!("E'{}'::text", t.replace('\\', "\\\\").replace('\'', "\\'")),
        None => "NULL::text".to_string(),
    }
}

/// `CREATE DATABASE <name>`, as a clone of `template` if given.
pub(super) fn create_database_sql(name: &str, template: Option<&str>) -> String {
    match template {
        Some(template) => format!(
            "CREATE DATABASE {} TEMPLATE {}",
            quote_ident(name),
            quote_ident(template)
        ),
        None => format!("CREATE DATABASE {}", quote_ident(name)),
    }
}

/// sqlx's own statement logging, as on any connection sqlx opens (each
/// statement at DEBUG, one slower than 1 s at WARN): a test's connections
/// log what they run, as under `#[sqlx::test]`; db-test's own (the admin
/// connection) do not.
fn with_sqlx_logging(options: PgConnectOptions) -> PgConnectOptions {
    use sqlx::ConnectOptions;
    let defaults = sqlx_core::connection::LogSettings::default();
    options
        .log_statements(defaults.statements_level)
        .log_slow_statements(
            defaults.slow_statements_level,
            defaults.slow_statements_duration,
        )
}

/// Gives a clone the template's per-database settings (`ALTER DATABASE ..
/// SET`, `ALTER ROLE .. IN DATABASE .. SET`, which a migration may run),
/// and the database's own comment, privileges (`GRANT`/`REVOKE .. ON
/// DATABASE`) and connection limit: `CREATE DATABASE .. TEMPLATE` copies
/// the data, not these. Every template has one setting, db-test's mark
/// ([`MARK`]): three round trips when it has nothing else.
pub(super) async fn copy_database_settings(
    admin: &mut PgConnection,
    template: &str,
    clone: &str,
) -> Result<(), sqlx::Error> {
    copy_database_properties(admin, template, clone).await?;
    let settings: Vec<(Option<String>, String)> = sqlx::query_as(
        "SELECT r.rolname::text, unnest(s.setconfig) FROM pg_db_role_setting s \
         LEFT JOIN pg_roles r ON r.oid = s.setrole \
         WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = $1)",
    )
    .bind(template)
    .fetch_all(&mut *admin)
    .await?;
    for (role, setting) in settings {
        if setting == MARK || setting == MARK_UNPRIVILEGED {
            // The template's form of the mark (one its role could set), for
            // db-test's role here, whichever role marked the template.
            mark_as(admin, clone, &setting).await?;
            continue;
        }
        let Some((name, value)) = setting.split_once('=') else {
            continue;
        };
        // The value as the catalog holds it, read the way a configuration
        // file is (lists such as search_path stay lists), then stored
        // `FROM CURRENT`.
        let target = match &role {
            Some(role) => format!(
                "ROLE {} IN DATABASE {}",
                quote_ident(role),
                quote_ident(clone)
            ),
            None => format!("DATABASE {}", quote_ident(clone)),
        };
        sqlx::query("SELECT set_config($1, $2, false)")
            .bind(name)
            .bind(value)
            .execute(&mut *admin)
            .await?;
        let name = quote_ident(name);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER {target} SET {name} FROM CURRENT; RESET {name}"
        )))
        .execute(&mut *admin)
        .await?;
    }
    Ok(())
}

/// The part of [`copy_database_settings`] that lives in `pg_database` and
/// `pg_shdescription`: the comment, the privileges (each of the template's
/// grants given again, after the defaults are revoked, grantee by
/// grantee), the connection limit.
async fn copy_database_properties(
    admin: &mut PgConnection,
    template: &str,
    clone: &str,
) -> Result<(), sqlx::Error> {
    let clone_ident = quote_ident(clone);
    // Each grant names the clone (`format` cannot take it as a parameter of
    // the query it is built in: it is put in after).
    let (comment, limit, owner, grants): (Option<String>, i32, String, Option<Vec<String>>) =
        sqlx::query_as(
            "SELECT shobj_description(d.oid, 'pg_database'), d.datconnlimit, \
             d.datdba::regrole::text, \
             (SELECT array_agg(format('GRANT %s ON DATABASE {clone} TO %s%s', a.privilege_type, \
                 CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END, \
                 CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)) \
              FROM aclexplode(d.datacl) a) \
             FROM pg_database d WHERE d.datname = $1",
        )
        .bind(template)
        .fetch_one(&mut *admin)
        .await?;
    let mut sql = Vec::new();
    if let Some(comment) = comment
        .as_deref()
        .and_then(super::template::migrations_comment)
    {
        sql.push(format!(
            "COMMENT ON DATABASE {clone_ident} IS {}",
            quote_literal(comment)
        ));
    }
    if limit != -1 {
        sql.push(format!(
            "ALTER DATABASE {clone_ident} CONNECTION LIMIT {limit}"
        ));
    }
    // NULL privileges are the defaults, which the clone has too.
    if let Some(grants) = grants {
        sql.push(format!(
            "REVOKE ALL ON DATABASE {clone_ident} FROM PUBLIC, {owner}"
        ));
        sql.extend(grants.iter().map(|g| g.replace("{clone}", &clone_ident)));
    }
    if !sql.is_empty() {
        Engine::admin_exec(admin, &sql.join("; ")).await?;
    }
    Ok(())
}

/// db-test's mark on every database it makes, as `pg_db_role_setting`
/// holds it: a setting of db-test's role in that database (see [`mark`]),
/// copied to each clone with the template's settings
/// ([`copy_database_settings`]) and kept by a rename. A database named
/// like db-test's but without it is someone else's: it is never claimed as
/// a spare, swept as a leftover or dropped as outdated. A placeholder
/// setting (no server module reads it), which `SHOW ALL` and `pg_settings`
/// do not list: a test sees it only if it asks for it.
const MARK: &str = "db_test.made_by=db-test";

/// The mark of a role that may not store a placeholder setting (a role
/// that is not a superuser, PostgreSQL 15 and later): the role's
/// `application_name` in that database, which db-test's own connections
/// override with theirs.
const MARK_UNPRIVILEGED: &str = "application_name=db-test";

/// Marks `database` as made by db-test ([`MARK`], or
/// [`MARK_UNPRIVILEGED`] where the role may not set the first).
pub(super) async fn mark(admin: &mut PgConnection, database: &str) -> Result<(), sqlx::Error> {
    match mark_as(admin, database, MARK).await {
        Err(e) if sqlstate(&e).as_deref() == Some("42501") => {
            mark_as(admin, database, MARK_UNPRIVILEGED).await
        }
        other => other,
    }
}

/// Marks `database` with `mark` ([`MARK`] or [`MARK_UNPRIVILEGED`]), for
/// db-test's role.
async fn mark_as(admin: &mut PgConnection, database: &str, mark: &str) -> Result<(), sqlx::Error> {
    let (name, value) = mark.split_once('=').expect("a mark is name=value");
    Engine::admin_exec(
        admin,
        &format!(
            "ALTER ROLE CURRENT_USER IN DATABASE {} SET {name} = {}",
            quote_ident(database),
            quote_literal(value)
        ),
    )
    .await
}

/// A condition that holds when the database whose oid `oid` gives has
/// db-test's mark ([`MARK`] or [`MARK_UNPRIVILEGED`]).
pub(super) fn marked_sql(oid: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM pg_catalog.pg_db_role_setting m \
         WHERE m.setdatabase = {oid} \
         AND m.setconfig && ARRAY['{MARK}', '{MARK_UNPRIVILEGED}']::text[])"
    )
}

/// `ALTER DATABASE <from> RENAME TO <to>`.
pub(super) fn rename_database_sql(from: &str, to: &str) -> String {
    format!(
        "ALTER DATABASE {} RENAME TO {}",
        quote_ident(from),
        quote_ident(to)
    )
}

/// `DROP DATABASE IF EXISTS <name>`; with `force`, ending the sessions still
/// connected to it where the server can (`WITH (FORCE)`, PostgreSQL 13+).
pub(super) fn drop_database_sql(conn: &PgConnection, name: &str, force: bool) -> String {
    let force = if force && conn.server_version_num().unwrap_or(0) >= 130000 {
        " WITH (FORCE)"
    } else {
        ""
    };
    format!("DROP DATABASE IF EXISTS {}{force}", quote_ident(name))
}

/// Admin connections: one for each clone allowed at once
/// (`DB_TEST_MAX_DATABASES`), so that clones waiting for a connection never
/// cap the limit, and two for claims, renames, drops and sweeps.
fn admin_pool_size(max_databases: usize) -> u32 {
    u32::try_from(max_databases)
        .unwrap_or(u32::MAX)
        .saturating_add(2)
}

/// A random owner id: the standard library's per-process random hasher
/// keys, the pid, the time and the attempt.
fn random_owner_id(attempt: u32) -> u32 {
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let h = std::hash::RandomState::new().hash_one((std::process::id(), nanos, attempt));
    (h ^ (h >> 32)) as u32
}

impl Engine {
    async fn start() -> Result<Engine, String> {
        let (admin, display_url, embedded) = match crate::config::server_url(Backend::Postgres)? {
            Some((var, url)) => {
                let display = redact(&url);
                let opts = PgConnectOptions::from_str(&url)
                    .map_err(|e| format!("db-test: cannot parse {var}={display}: {e}"))?;
                (opts, display, None)
            }
            None => {
                let emb = crate::run::spawn_blocking_uncaptured(embedded::ensure_started)
                    .await
                    .map_err(|e| format!("db-test: embedded server start panicked: {e}"))??;
                if !emb.started_here {
                    tracing::debug!(socket_dir = %emb.socket_dir.display(), "db-test: reusing the running embedded PostgreSQL");
                }
                let opts = PgConnectOptions::new()
                    .socket(&emb.socket_dir)
                    .port(embedded::PORT)
                    .username("postgres")
                    .database("postgres");
                let display = format!(
                    "embedded PostgreSQL (socket {}, data {})",
                    emb.socket_dir.display(),
                    emb.data_dir.display()
                );
                (opts, display, Some(emb))
            }
        };
        // The pid tells this process's connections apart from those of other
        // test processes sharing the server (pg_stat_activity, server logs).
        let admin = admin
            .application_name(&format!("db-test {}", std::process::id()))
            .disable_statement_logging();
        if admin.get_database() == Some("template1") {
            // Every CREATE DATABASE copies template1, and waits while any
            // session is connected to it: db-test's own would block its
            // template builds (and everyone else's) for minutes.
            return Err(format!(
                "db-test: {display_url} names the database template1. db-test stays connected to \
                 the database the URL names, and a session in template1 blocks every CREATE \
                 DATABASE on the server (its source). Name another database, such as postgres."
            ));
        }
        let base = naming::base(admin.get_database().unwrap_or("postgres"));
        let admin_pool = PgPoolOptions::new()
            .max_connections(admin_pool_size(config::max_databases()))
            .min_connections(0)
            .acquire_timeout(config::acquire_timeout())
            .connect_lazy_with(admin.clone());
        let mut engine = Engine {
            admin,
            base,
            display_url,
            templates: Mutex::new(HashMap::new()),
            embedded,
            admin_pool,
            clones: tokio::sync::Semaphore::new(config::max_databases()),
            clone_counter: std::sync::atomic::AtomicU64::new(0),
            owner: 0,
            owner_conn: tokio::sync::Mutex::new(None),
            held_hashes: Mutex::new(Vec::new()),
        };
        // Fails fast, with a clear message, if the server is unreachable.
        let (owner, conn) = engine.claim_owner_id().await?;
        engine.owner = owner;
        *engine.owner_conn.get_mut() = Some(conn);
        Ok(engine)
    }

    /// Picks a random owner id that no live process holds and no database
    /// carries, and locks it on a new owner connection.
    async fn claim_owner_id(&self) -> Result<(u32, PgConnection), String> {
        let mut conn = self.admin_connect_as("owner").await?;
        let ctx = |e: sqlx::Error| {
            format!(
                "db-test: cannot take this process's owner lock on {}: {e}",
                self.display_url
            )
        };
        for attempt in 0..16u32 {
            let owner = random_owner_id(attempt);
            let lock = AdvisoryLock::owner(owner);
            if !lock.try_lock(&mut conn).await.map_err(ctx)? {
                continue;
            }
            // A database named after this id (left by a dead process that
            // drew the same id) would collide with ours.
            let candidates: Vec<String> = sqlx::query_scalar(
                "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1) \
                 AND strpos(datname, $2) > 0",
            )
            .bind(naming::ROOT)
            .bind(naming::owner_text(owner))
            .fetch_all(&mut conn)
            .await
            .map_err(ctx)?;
            let used = candidates.iter().any(|name| {
                naming::parse(name)
                    .and_then(|p| p.kind?.owner())
                    .is_some_and(|o| o.id == owner)
            });
            if !used {
                return Ok((owner, conn));
            }
            lock.unlock(&mut conn).await;
        }
        Err(format!(
            "db-test: found no free owner id on {} after 16 tries",
            self.display_url
        ))
    }

    /// Makes sure the owner connection is alive and holds the owner lock and
    /// every hash lock this process took, reopening it if the server dropped
    /// it (a restart, a terminated backend). Then runs `then` on it.
    pub(super) async fn with_owner_conn<T>(
        &self,
        then: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, String> {
        let mut guard = self.owner_conn.lock().await;
        let alive = match guard.as_mut() {
            Some(conn) => conn.ping().await.is_ok(),
            None => false,
        };
        if !alive {
            *guard = None;
            let mut conn = self.admin_connect_as("owner").await?;
            // The old session may take a moment to leave the server.
            let mut tries = 0;
            while !AdvisoryLock::owner(self.owner)
                .try_lock(&mut conn)
                .await
                .map_err(|e| format!("db-test: cannot take the owner lock again: {e}"))?
            {
                tries += 1;
                if tries == 100 {
                    return Err(format!(
                        "db-test: another session still holds this process's owner lock {} \
                         on {} after 10 s",
                        naming::owner_text(self.owner),
                        self.display_url
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let held = self.held_hashes.lock().unwrap().clone();
            for lock in held {
                lock.lock_shared(&mut conn)
                    .await
                    .map_err(|e| format!("db-test: cannot take a template lock again: {e}"))?;
            }
            tracing::info!(owner = %naming::owner_text(self.owner), "db-test: reopened the owner connection");
            *guard = Some(conn);
        }
        let conn = guard.as_mut().expect("just set");
        then(conn).await.map_err(|e| {
            format!(
                "db-test: owner connection to {} failed: {e}",
                self.display_url
            )
        })
    }

    /// Holds a shared lock on a template hash for the rest of the process,
    /// so the outdated-template sweep leaves its databases alone. Waits
    /// while a sweep is dropping them.
    pub(super) async fn hold_hash(&self, lock: AdvisoryLock) -> Result<(), String> {
        if self.held_hashes.lock().unwrap().contains(&lock) {
            return Ok(());
        }
        self.with_owner_conn(async |conn| lock.lock_shared(conn).await)
            .await?;
        self.held_hashes.lock().unwrap().push(lock);
        Ok(())
    }

    pub(super) async fn admin_connect(&self) -> Result<PgConnection, String> {
        self.admin_connect_with(self.admin.clone()).await
    }

    /// An admin connection named `db-test <pid> <role>` (pg_stat_activity).
    async fn admin_connect_as(&self, role: &str) -> Result<PgConnection, String> {
        self.admin_connect_with(
            self.admin
                .clone()
                .application_name(&format!("db-test {} {role}", std::process::id())),
        )
        .await
    }

    async fn admin_connect_with(&self, opts: PgConnectOptions) -> Result<PgConnection, String> {
        let timeout = config::connect_timeout();
        let hint = |e: &sqlx::Error| -> &'static str {
            match sqlstate(e).as_deref() {
                Some("28P01") | Some("28000") => {
                    "Check the user name and password in DATABASE_URL."
                }
                Some("3D000") => {
                    "The database named in DATABASE_URL must exist: db-test connects to it only to \
                     create and drop its own databases, and never writes to it."
                }
                _ if matches!(e, sqlx::Error::Tls(_)) || e.to_string().contains("TLS") => {
                    "The URL asks for TLS (`sslmode`): enable one of sqlx's TLS features in the \
                     crate's dev-dependencies, or leave `sslmode` out of DATABASE_URL."
                }
                _ => {
                    "Check that the server is running and that DATABASE_URL's host and port are right."
                }
            }
        };
        match tokio::time::timeout(timeout, opts.connect()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(format!(
                "db-test: cannot connect to {}: {e}. {}",
                self.display_url,
                hint(&e)
            )),
            Err(_) => Err(format!(
                "db-test: connecting to {} timed out after {timeout:?} (DB_TEST_CONNECT_TIMEOUT). \
                 Check that the host is reachable and the server is running.",
                self.display_url
            )),
        }
    }

    /// A URL for the server (the URL's own database), for tools like psql.
    pub(crate) fn server_url(&self) -> String {
        match &self.embedded {
            Some(emb) => format!(
                "postgres://postgres@localhost/postgres?host={}&port={}",
                emb.socket_dir.display(),
                embedded::PORT
            ),
            None => crate::config::server_url(Backend::Postgres)
                .ok()
                .flatten()
                .map(|(_, url)| url)
                .unwrap_or_default(),
        }
    }

    /// Connect options for a test's own database (database mode): the
    /// server's session defaults, as `#[sqlx::test]` gives.
    pub(crate) fn own_database_options(&self, database: &str) -> PgConnectOptions {
        with_sqlx_logging(self.admin.clone().database(database))
    }

    /// Connect options for one of our own databases, where a lock wait may
    /// be another test's doing (`lock_timeout`).
    pub(crate) fn options_for(&self, database: &str) -> PgConnectOptions {
        with_sqlx_logging(
            self.admin
                .clone()
                .database(database)
                .options([("lock_timeout", config::lock_timeout())]),
        )
    }

    /// Creates `name` as `CREATE DATABASE` does, from template1. The server
    /// waits 5 s for sessions connected to template1 to leave before it
    /// gives up (55006); after three such waits, the error names them.
    pub(super) async fn create_from_template1(
        &self,
        admin: &mut PgConnection,
        name: &str,
    ) -> Result<(), String> {
        let sql = create_database_sql(name, None);
        let mut last = None;
        for _ in 0..3 {
            match admin.execute(sqlx::AssertSqlSafe(sql.clone())).await {
                Ok(_) => return Ok(()),
                Err(e) if sqlstate(&e).as_deref() == Some("55006") => last = Some(e),
                Err(e) => {
                    return Err(format!(
                        "db-test: creating the template database on {}: {e}",
                        self.display_url
                    ));
                }
            }
        }
        let sessions: Vec<String> = sqlx::query_scalar(
            "SELECT format('pid %s (%s, application %L, from %s)', pid, usename, \
             application_name, coalesce(client_addr::text, 'a local socket')) \
             FROM pg_stat_activity WHERE datname = 'template1'",
        )
        .fetch_all(&mut *admin)
        .await
        .unwrap_or_default();
        Err(format!(
            "db-test: creating the template database on {} failed: {}. db-test creates its \
             templates from template1, as CREATE DATABASE does, and the server refuses while \
             another session is connected to template1: {}. End those sessions (or connect \
             them to another database).",
            self.display_url,
            last.map(|e| e.to_string()).unwrap_or_default(),
            if sessions.is_empty() {
                "none is left now".to_string()
            } else {
                sessions.join("; ")
            }
        ))
    }

    /// Runs `sql` on the admin connection, retrying while another session is
    /// still leaving the database (55006 "being accessed by other users").
    pub(super) async fn admin_exec(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
        let mut delay = Duration::from_millis(5);
        for _ in 0..40 {
            match conn.execute(sqlx::AssertSqlSafe(sql.to_string())).await {
                Err(e) if sqlstate(&e).as_deref() == Some("55006") => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(250));
                }
                other => return other.map(|_| ()),
            }
        }
        conn.execute(sqlx::AssertSqlSafe(sql.to_string()))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact;

    #[test]
    fn passwords_in_the_user_info_and_the_query_are_redacted() {
        for (url, want) in [
            (
                "postgres://u:s3cret@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            (
                "postgres://u@h/db?password=s3cret",
                "postgres://u@h/db?password=***",
            ),
            (
                "postgres://u@h/db?sslmode=disable&password=s3cret&application_name=x",
                "postgres://u@h/db?sslmode=disable&password=***&application_name=x",
            ),
            (
                "postgres://u@h/db?PassWord=s3cret",
                "postgres://u@h/db?PassWord=***",
            ),
            (
                "postgres://u@h/db?%70assword=s3cret",
                "postgres://u@h/db?%70assword=***",
            ),
            (
                "postgres://u@h/db?sslpassword=s3cret&host=/tmp",
                "postgres://u@h/db?sslpassword=***&host=/tmp",
            ),
            (
                "postgres://u:s3cret@h/db?password=s3cret#s3cret",
                "postgres://u:***@h/db?password=***",
            ),
            // Not parseable as a URL: still no password.
            (
                "postgres://u:s3cret@h:notaport/db?password=s3cret",
                "postgres://***@h:notaport/db?password=***",
            ),
            ("postgres://u@h/db?host=/tmp", "postgres://u@h/db?host=/tmp"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            // A libpq key=value string in DATABASE_URL.
            (
                "host=127.0.0.1 user=postgres password=s3cret dbname=db",
                "host=127.0.0.1 user=postgres password=*** dbname=db",
            ),
            (
                "host=h password = 's3cret with \\' space' sslpassword=s3cret",
                "host=h password = *** sslpassword=***",
            ),
        ] {
            let got = redact(url);
            assert_eq!(got, want, "{url}");
            assert!(!got.contains("s3cret"), "{got}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_pool_fits_every_concurrent_clone() {
        assert_eq!(admin_pool_size(4), 6);
        assert_eq!(admin_pool_size(1), 3);
        assert_eq!(admin_pool_size(usize::MAX), u32::MAX);
    }
}
