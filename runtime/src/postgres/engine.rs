//! Process-wide engine: which server, which template databases, which pools.
//!
//! Database names db-test generates (and the only ones it ever creates,
//! migrates or drops) look like `dbtest_<base>_<source>_<hash>_<kind>`:
//! `base` is the URL's database name, `source` a hash of the migrations
//! directory's whole canonical path (or of the migrator's crate and name),
//! `hash` a hash of the migrations' versions and checksums, and `kind` is
//! `b` (being built), `t` (template), `w` (working database for
//! transaction-mode tests), `d<owner>_<n>` (a per-test database),
//! `s<owner>_<n>` (a spare, see [`Engine::recycle_test_database`]) or
//! `k<owner>_<n>` (kept after a failure). Names stay within PostgreSQL's 63
//! bytes.
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

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor, PgConnection, PgPool, Row};
use tokio::sync::OnceCell;

use super::embedded;
use crate::config;
use crate::hint::sqlstate;

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

/// First key of the session advisory lock each process holds on its owner id
/// (the second key) for as long as it lives ("dbt" 1).
const OWNER_LOCK: i32 = 0x6462_7401;
/// First key of the shared advisory lock each process holds on every
/// template hash it uses (the second key: [`hash_lock_key`]), and that the
/// outdated-template sweep takes exclusively ("dbt" 2).
const HASH_LOCK: i32 = 0x6462_7402;

/// PostgreSQL's limit on identifiers (NAMEDATALEN - 1); longer names are
/// silently truncated, which would make two databases one.
const MAX_NAME_LEN: usize = 63;

/// A migrated template and the working database cloned from it.
pub(crate) struct Template {
    /// `dbtest_<base>_<source>_<hash>`: every database of this template's
    /// hash starts with it.
    pub(crate) prefix: String,
    pub(crate) template: String,
    pub(crate) working: String,
    pub(crate) pool: PgPool,
    /// `dbtest_<base>_<source>` and `<hash>`, to rebuild the template.
    source: String,
    hash: String,
    migrator: MigratorRef,
    leftovers_checked: OnceCell<()>,
    /// How to reset a per-test database to the template's state, if that is
    /// possible for this schema (see [`Engine::recycle_test_database`]).
    recycle: OnceCell<Option<Recycle>>,
}

/// How to bring a used per-test database back to the template's state.
#[derive(Debug, Clone)]
pub(crate) struct Recycle {
    /// Empties the tables and restarts the sequences: a `DO` block that
    /// truncates only the tables holding rows (a `TRUNCATE` costs a few ms
    /// per table, an emptiness check microseconds), or, where PL/pgSQL is
    /// not available, `TRUNCATE … RESTART IDENTITY CASCADE` of every table.
    reset: String,
    /// A query returning the schema fingerprint.
    fingerprint_sql: String,
    /// The template's fingerprint.
    fingerprint: String,
}

/// Catalog rows that make up a database's schema and server-side state,
/// hashed. Two databases with the same fingerprint and empty tables are
/// interchangeable for a test. `{extra}` adds per-schema parts.
const FINGERPRINT_SQL: &str = r#"
WITH ns AS (
    SELECT oid, nspname FROM pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema')
      AND nspname NOT LIKE 'pg\_toast%' AND nspname NOT LIKE 'pg\_temp%'
), rel AS (
    SELECT c.* FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
)
SELECT md5(coalesce(string_agg(x, '|' ORDER BY x), '')) FROM (
    SELECT 'n:' || nspname || ':' || coalesce(n.nspacl::text, '') FROM pg_namespace n WHERE n.oid IN (SELECT oid FROM ns)
    UNION ALL SELECT 'c:' || oid::regclass::text || ':' || relkind::text || ':' || relpersistence::text || ':' || coalesce(relacl::text, '') || ':' || relrowsecurity::text FROM rel
    UNION ALL SELECT 'a:' || a.attrelid::regclass::text || ':' || a.attname || ':' || format_type(a.atttypid, a.atttypmod) || ':' || a.attnotnull::text || ':' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
        FROM pg_attribute a JOIN rel ON rel.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attnum > 0 AND NOT a.attisdropped
    UNION ALL SELECT 'g:' || conrelid::regclass::text || ':' || conname || ':' || pg_get_constraintdef(oid) || ':' || condeferrable::text || condeferred::text FROM pg_constraint WHERE connamespace IN (SELECT oid FROM ns)
    UNION ALL SELECT 'i:' || pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid IN (SELECT oid FROM rel)
    UNION ALL SELECT 'p:' || p.oid::regprocedure::text || ':' || md5(coalesce(p.prosrc, '')) || ':' || coalesce(p.proacl::text, '') FROM pg_proc p WHERE p.pronamespace IN (SELECT oid FROM ns)
    UNION ALL SELECT 't:' || t.oid::regtype::text || ':' || t.typtype::text FROM pg_type t WHERE t.typnamespace IN (SELECT oid FROM ns) AND t.typtype <> 'b'
    UNION ALL SELECT 'e:' || enumtypid::regtype::text || ':' || enumlabel || ':' || enumsortorder FROM pg_enum
    UNION ALL SELECT 'x:' || extname || ':' || extversion FROM pg_extension
    UNION ALL SELECT 'r:' || tgrelid::regclass::text || ':' || tgname || ':' || tgenabled::text || ':' || pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL SELECT 'w:' || ev_class::regclass::text || ':' || rulename || ':' || md5(pg_get_ruledef(oid)) FROM pg_rewrite WHERE ev_class IN (SELECT oid FROM rel)
    UNION ALL SELECT 'o:' || polrelid::regclass::text || ':' || polname FROM pg_policy
    UNION ALL SELECT 'q:' || schemaname || '.' || sequencename || ':' || coalesce(last_value::text, '-') || ':' || increment_by FROM pg_sequences
    UNION ALL SELECT 'l:' || (SELECT count(*) FROM pg_largeobject_metadata)
    UNION ALL SELECT 'v:' || (SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database())
    UNION ALL SELECT 'd:' || coalesce((SELECT setconfig::text FROM pg_db_role_setting WHERE setrole = 0 AND setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())), '')
    UNION ALL SELECT 'ev:' || evtname FROM pg_event_trigger
    UNION ALL SELECT 'pub:' || pubname FROM pg_publication
    {extra}
) f(x)
"#;

/// The `DO` block of [`Recycle::reset`] for these tables (`format('%I.%I')`
/// names): truncates those holding rows, and restarts every sequence that
/// was used. None if a name would break out of the block.
fn reset_block(tables: &[String]) -> Option<String> {
    const TAG: &str = "$db_test_reset$";
    if tables.iter().any(|t| t.contains(TAG)) {
        return None;
    }
    let list = tables
        .iter()
        .map(|t| quote_literal(t))
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "DO {TAG}
DECLARE
    t text;
    dirty text[] := '{{}}';
    found boolean;
BEGIN
    FOREACH t IN ARRAY ARRAY[{list}]::text[] LOOP
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM ' || t || ')' INTO found;
        IF found THEN
            dirty := dirty || t;
        END IF;
    END LOOP;
    IF cardinality(dirty) > 0 THEN
        EXECUTE 'TRUNCATE TABLE ' || array_to_string(dirty, ', ') || ' CASCADE';
    END IF;
    PERFORM pg_catalog.setval(s.seqrelid, s.seqstart, false)
        FROM pg_catalog.pg_sequence s
        WHERE pg_catalog.pg_sequence_last_value(s.seqrelid) IS NOT NULL;
END
{TAG}"
    ))
}

/// Counts the connections to the current database other than this one.
const OTHER_CONNECTIONS_SQL: &str = "SELECT count(*) FROM pg_catalog.pg_stat_activity \
     WHERE datname = current_database() AND pid <> pg_backend_pid()";

/// A database of one test's own (`isolation = "database"`).
pub(crate) struct TestDatabase {
    pub(crate) name: String,
    pub(crate) options: PgConnectOptions,
}

pub(crate) struct Engine {
    /// Options for the URL's own database: used only to create and drop
    /// databases whose names db-test generated. Never written to.
    admin: PgConnectOptions,
    base: String,
    pub(crate) display_url: String,
    templates: Mutex<HashMap<String, Arc<OnceCell<Arc<Template>>>>>,
    pub(crate) embedded: Option<embedded::Embedded>,
    /// A small pool on the URL's database for CREATE/DROP DATABASE of
    /// per-test databases. Never used to write into that database. It has a
    /// connection for each concurrent clone and two more.
    pub(super) admin_pool: PgPool,
    /// Bounds concurrent clones, so a large suite cannot exhaust the
    /// server's `max_connections`. A clone takes its permit before its
    /// admin connection.
    clones: tokio::sync::Semaphore,
    clone_counter: std::sync::atomic::AtomicU64,
    /// This process's owner id: part of the names of its per-test databases.
    owner: u32,
    /// The connection holding the owner lock and the hash locks, for the
    /// life of the process (reopened if the server dropped it).
    owner_conn: tokio::sync::Mutex<Option<PgConnection>>,
    /// Hash lock keys this process holds (taken again on a new owner
    /// connection).
    held_hashes: Mutex<Vec<u32>>,
}

/// Prefix of the comment db-test puts on a template: when it was built.
const BUILT_AT: &str = "db-test template built at ";

static ENGINE: OnceCell<Result<Engine, String>> = OnceCell::const_new();

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

/// Reads `DATABASE_URL` from the environment, then from a `.env` file in the
/// current directory or one of its parents.
fn database_url() -> Option<String> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !url.trim().is_empty() {
            return Some(url);
        }
        return None;
    }
    let mut dir = std::env::current_dir().ok();
    while let Some(d) = dir {
        if let Ok(text) = std::fs::read_to_string(d.join(".env")) {
            for line in text.lines() {
                let line = line.trim().trim_start_matches("export ").trim();
                if let Some(v) = line.strip_prefix("DATABASE_URL=") {
                    let v = v.trim().trim_matches('"').trim_matches('\'');
                    if !v.is_empty() {
                        return Some(v.to_string());
                    }
                }
            }
        }
        dir = d.parent().map(PathBuf::from);
    }
    None
}

fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(16)
        .collect();
    if s.is_empty() { "db".into() } else { s }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An SQL string literal (standard_conforming_strings, the default since 9.1).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
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

/// The second key of a template hash's [`HASH_LOCK`]: from
/// `dbtest_<base>_<source>_<hash>`.
fn hash_lock_key(prefix_and_hash: &str) -> u32 {
    let h = embedded::short_hash(prefix_and_hash.as_bytes());
    u32::from_str_radix(&h[..8], 16).expect("hex")
}

/// The name of a database owned by a process: `<prefix>_<kind><owner>_<n>`.
fn owned_name(prefix: &str, kind: char, owner: u32, n: u64) -> String {
    format!("{prefix}_{kind}{owner:08x}_{n}")
}

/// The owner id in what follows `<prefix>_<kind>` in an [`owned_name`].
fn parse_owner(rest: &str) -> Option<u32> {
    let (owner, n) = rest.split_once('_')?;
    if owner.len() != 8 || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    u32::from_str_radix(owner, 16).ok()
}

/// A path with symlinks and `..` resolved, as text; the path itself if it
/// cannot be resolved.
fn canonical(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Names the migrations' source in database names: a hash of the whole
/// canonical path (or of the migrator's crate directory and name), so two
/// checkouts never share (or sweep) each other's templates.
fn source_id(source_key: &str) -> String {
    embedded::short_hash(source_key.as_bytes())[..8].to_string()
}

impl Engine {
    async fn start() -> Result<Engine, String> {
        let (admin, display_url, embedded) = match database_url() {
            Some(url) => {
                let display = redact(&url);
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(format!(
                        "db-test: DATABASE_URL={display} is not a PostgreSQL URL. db-test needs \
                         `postgres://user:password@host:port/database`, or leave DATABASE_URL unset \
                         to use the embedded server."
                    ));
                }
                let opts = PgConnectOptions::from_str(&url)
                    .map_err(|e| format!("db-test: cannot parse DATABASE_URL={display}: {e}"))?;
                (opts, display, None)
            }
            None => {
                let emb = tokio::task::spawn_blocking(embedded::ensure_started)
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
        let base = sanitize(admin.get_database().unwrap_or("postgres"));
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
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(OWNER_LOCK)
                .bind(owner as i32)
                .fetch_one(&mut conn)
                .await
                .map_err(ctx)?;
            if !locked {
                continue;
            }
            // A database named after this id (left by a dead process that
            // drew the same id) would collide with ours.
            let used: bool = sqlx::query_scalar(
                "SELECT exists(SELECT 1 FROM pg_database WHERE starts_with(datname, 'dbtest_') \
                 AND datname ~ ('_[dsk]' || $1 || '_[0-9]+$'))",
            )
            .bind(format!("{owner:08x}"))
            .fetch_one(&mut conn)
            .await
            .map_err(ctx)?;
            if !used {
                return Ok((owner, conn));
            }
            let _ = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(OWNER_LOCK)
                .bind(owner as i32)
                .execute(&mut conn)
                .await;
        }
        Err(format!(
            "db-test: found no free owner id on {} after 16 tries",
            self.display_url
        ))
    }

    /// Makes sure the owner connection is alive and holds the owner lock and
    /// every hash lock this process took, reopening it if the server dropped
    /// it (a restart, a terminated backend). Then runs `then` on it.
    async fn with_owner_conn<T>(
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
            while !sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1, $2)")
                .bind(OWNER_LOCK)
                .bind(self.owner as i32)
                .fetch_one(&mut conn)
                .await
                .map_err(|e| format!("db-test: cannot take the owner lock again: {e}"))?
            {
                tries += 1;
                if tries == 100 {
                    return Err(format!(
                        "db-test: another session still holds this process's owner lock {:08x} \
                         on {} after 10 s",
                        self.owner, self.display_url
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let held = self.held_hashes.lock().unwrap().clone();
            for key in held {
                sqlx::query("SELECT pg_advisory_lock_shared($1, $2)")
                    .bind(HASH_LOCK)
                    .bind(key as i32)
                    .execute(&mut conn)
                    .await
                    .map_err(|e| format!("db-test: cannot take a template lock again: {e}"))?;
            }
            tracing::info!(owner = %format!("{:08x}", self.owner), "db-test: reopened the owner connection");
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
    async fn hold_hash(&self, key: u32) -> Result<(), String> {
        if self.held_hashes.lock().unwrap().contains(&key) {
            return Ok(());
        }
        self.with_owner_conn(async |conn| {
            sqlx::query("SELECT pg_advisory_lock_shared($1, $2)")
                .bind(HASH_LOCK)
                .bind(key as i32)
                .execute(conn)
                .await
                .map(|_| ())
        })
        .await?;
        self.held_hashes.lock().unwrap().push(key);
        Ok(())
    }

    async fn admin_connect(&self) -> Result<PgConnection, String> {
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
            None => database_url().unwrap_or_default(),
        }
    }

    /// Connect options for one of our own databases.
    pub(crate) fn options_for(&self, database: &str) -> PgConnectOptions {
        self.admin
            .clone()
            .database(database)
            .options([("lock_timeout", config::lock_timeout())])
    }

    /// The template (and working database and pool) for these migrations.
    pub(crate) async fn template(
        &'static self,
        migrations: Migrations,
        manifest_dir: &'static str,
    ) -> Result<Arc<Template>, String> {
        let (key, source) = match migrations {
            Migrations::Default => {
                let dir = PathBuf::from(manifest_dir).join("migrations");
                if dir.is_dir() {
                    (dir.display().to_string(), Some(dir))
                } else {
                    ("none".to_string(), None)
                }
            }
            Migrations::Path(p) => {
                let dir = PathBuf::from(manifest_dir).join(p);
                if !dir.is_dir() {
                    return Err(format!(
                        "db-test: migrations directory {} does not exist (from `migrations = \"{p}\"`, \
                         relative to {manifest_dir})",
                        dir.display()
                    ));
                }
                (dir.display().to_string(), Some(dir))
            }
            Migrations::None => ("none".to_string(), None),
            Migrations::Migrator(_, name) => (format!("{manifest_dir}::{name}"), None),
        };
        let cell = {
            let mut map = self.templates.lock().unwrap();
            map.entry(key.clone()).or_default().clone()
        };
        cell.get_or_try_init(|| async move {
            // The whole canonical path: two checkouts whose migrations
            // directories end alike still get templates of their own.
            let source_key = match (migrations, &source) {
                (Migrations::Migrator(_, name), _) => {
                    format!("{}::{name}", canonical(Path::new(manifest_dir)))
                }
                (_, Some(dir)) => canonical(dir),
                (_, None) => key.clone(),
            };
            let migrator = match (migrations, source) {
                (Migrations::Migrator(m, _), _) => MigratorRef::Static(m()),
                (_, Some(dir)) => {
                    MigratorRef::Owned(Migrator::new(dir.clone()).await.map_err(|e| {
                        format!("db-test: cannot read migrations in {}: {e}", dir.display())
                    })?)
                }
                (_, None) => MigratorRef::Owned(Migrator::with_migrations(Vec::new())),
            };
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
        // Bump TEMPLATE_FORMAT when the way templates are built changes, so
        // that old templates are rebuilt (and dropped as outdated).
        const TEMPLATE_FORMAT: &[u8] = b"db-test template v2";
        let mut hasher_input = TEMPLATE_FORMAT.to_vec();
        for m in migrator.get().iter() {
            hasher_input.extend_from_slice(&m.version.to_le_bytes());
            hasher_input.extend_from_slice(&m.checksum);
            hasher_input.push(m.migration_type.is_down_migration() as u8);
        }
        let hash = embedded::short_hash(&hasher_input)[..10].to_string();
        let source = format!("dbtest_{}_{}", self.base, source_id(source_key));
        let prefix = format!("{source}_{hash}");
        let template = format!("{prefix}_t");
        let working = format!("{prefix}_w");

        // Held until the process ends: the outdated-template sweep of a
        // process running newer migrations leaves this hash alone.
        self.hold_hash(hash_lock_key(&prefix)).await?;

        // Fast path: the working database exists, so the template is complete.
        // Otherwise build it. Retried, in case someone dropped it meanwhile.
        let mut attempt = 0;
        let pool = loop {
            attempt += 1;
            match self.connect_pool(&working).await {
                Ok(pool) => break pool,
                Err(e) if sqlstate(&e).as_deref() == Some("3D000") && attempt <= 3 => {
                    self.create_template(migrator.get(), &source, &hash).await?;
                }
                Err(e) => {
                    return Err(format!(
                        "db-test: cannot connect to working database {working} on {}: {e}",
                        self.display_url
                    ));
                }
            }
        };
        tracing::debug!(%working, "db-test: pool ready");
        Ok(Template {
            prefix,
            template,
            working,
            pool,
            source,
            hash,
            migrator,
            leftovers_checked: OnceCell::new(),
            recycle: OnceCell::new(),
        })
    }

    async fn connect_pool(&self, database: &str) -> Result<PgPool, sqlx::Error> {
        let opts = self.options_for(database);
        let pool = PgPoolOptions::new()
            .max_connections(config::pool_size())
            .min_connections(0)
            .acquire_timeout(config::acquire_timeout())
            .test_before_acquire(false)
            .connect_lazy_with(opts);
        // Connect once now, so that a missing database is reported here.
        match tokio::time::timeout(config::connect_timeout(), pool.acquire()).await {
            Ok(Ok(conn)) => drop(conn),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(sqlx::Error::PoolTimedOut),
        }
        Ok(pool)
    }

    /// Runs `sql` on the admin connection, retrying while another session is
    /// still leaving the database (55006 "being accessed by other users").
    async fn admin_exec(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
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

    /// Builds `<prefix>_<hash>_t` and `_w` under a cluster-wide advisory lock,
    /// so parallel test processes build it exactly once.
    async fn create_template(
        &self,
        migrator: &Migrator,
        prefix: &str,
        hash: &str,
    ) -> Result<(), String> {
        let t0 = std::time::Instant::now();
        let ctx =
            |what: &str, e: sqlx::Error| format!("db-test: {what} on {}: {e}", self.display_url);
        let mut admin = self.admin_connect().await?;
        let lock_key = i64::from_le_bytes(
            embedded::short_hash(format!("db-test:{prefix}").as_bytes()).as_bytes()[..8]
                .try_into()
                .unwrap(),
        );
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(lock_key)
            .execute(&mut admin)
            .await
            .map_err(|e| ctx("taking the template lock", e))?;

        let building = format!("{prefix}_{hash}_b");
        let template = format!("{prefix}_{hash}_t");
        let working = format!("{prefix}_{hash}_w");
        let existing: Vec<String> = sqlx::query_scalar(
            "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)",
        )
        .bind(format!("{prefix}_"))
        .fetch_all(&mut admin)
        .await
        .map_err(|e| ctx("listing databases", e))?;
        let has = |n: &str| existing.iter().any(|e| e == n);
        let force = if admin.server_version_num().unwrap_or(0) >= 130000 {
            " WITH (FORCE)"
        } else {
            ""
        };

        if !has(&template) {
            if has(&building) {
                // A process was killed mid-migration: start over.
                tracing::info!(database = %building, "db-test: dropping half-built template");
                Self::admin_exec(
                    &mut admin,
                    &format!("DROP DATABASE IF EXISTS {}{force}", quote_ident(&building)),
                )
                .await
                .map_err(|e| ctx("dropping a half-built template", e))?;
            }
            Self::admin_exec(
                &mut admin,
                &format!("CREATE DATABASE {}", quote_ident(&building)),
            )
            .await
            .map_err(|e| ctx("creating the template database", e))?;
            let mut conn = self
                .options_for(&building)
                .connect()
                .await
                .map_err(|e| ctx("connecting to the new template", e))?;
            if migrator.iter().next().is_some() {
                migrator.run(&mut conn).await.map_err(|e| {
                    format!("db-test: migrations failed while building template {template}: {e}")
                })?;
            }
            let _ = conn.close().await;
            Self::admin_exec(
                &mut admin,
                &format!(
                    "ALTER DATABASE {} RENAME TO {}",
                    quote_ident(&building),
                    quote_ident(&template)
                ),
            )
            .await
            .map_err(|e| ctx("renaming the template", e))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            Self::admin_exec(
                &mut admin,
                &format!(
                    "COMMENT ON DATABASE {} IS '{BUILT_AT}{now}'",
                    quote_ident(&template)
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
            Self::admin_exec(
                &mut admin,
                &format!(
                    "CREATE DATABASE {} TEMPLATE {}",
                    quote_ident(&working),
                    quote_ident(&template)
                ),
            )
            .await
            .map_err(|e| ctx("creating the working database", e))?;
        }
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(lock_key)
            .execute(&mut admin)
            .await;

        // After the build lock is released: other processes need not wait.
        self.sweep_outdated(&mut admin, prefix, hash).await;
        let _ = admin.close().await;
        Ok(())
    }

    /// Drops the databases of outdated migrations of this same source
    /// (`prefix` is `dbtest_<base>_<source>`), one hash at a time, and only
    /// a hash
    /// - whose template was built more than DB_TEST_OUTDATED_AFTER ago
    ///   (another checkout may still be running the older migrations) or is
    ///   gone (an orphaned working database, a half-built template),
    /// - whose hash lock ([`HASH_LOCK`]) nobody holds: every process using a
    ///   hash holds it shared for its lifetime, and this sweep holds it
    ///   exclusively while it drops, so nobody starts using it meanwhile,
    /// - none of whose databases has a connection or a live owner.
    ///
    /// The template goes last, so it is never gone while its working
    /// database or a clone of it remains.
    async fn sweep_outdated(&self, admin: &mut PgConnection, prefix: &str, current_hash: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let grace = config::outdated_after().as_secs() as i64;
        let all: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT datname::text, shobj_description(oid, 'pg_database') FROM pg_database \
             WHERE starts_with(datname, $1)",
        )
        .bind(format!("{prefix}_"))
        .fetch_all(&mut *admin)
        .await
        .unwrap_or_default();
        // hash -> (its databases, whether it is outdated)
        let mut hashes: HashMap<&str, (Vec<&str>, bool)> = HashMap::new();
        for (name, comment) in &all {
            let Some((hash, kind)) = name[prefix.len() + 1..].split_once('_') else {
                continue;
            };
            if hash == current_hash || hash.len() != 10 || kind.is_empty() {
                continue;
            }
            let entry = hashes.entry(hash).or_insert((Vec::new(), true));
            entry.0.push(name);
            if kind == "t" {
                let at = comment
                    .as_deref()
                    .and_then(|c| c.strip_prefix(BUILT_AT))
                    .and_then(|t| t.trim().parse::<i64>().ok())
                    .unwrap_or(0);
                entry.1 = now - at >= grace;
            }
        }
        for (hash, (mut names, outdated)) in hashes {
            if !outdated {
                continue;
            }
            let hash_prefix = format!("{prefix}_{hash}");
            let key = hash_lock_key(&hash_prefix) as i32;
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(HASH_LOCK)
                .bind(key)
                .fetch_one(&mut *admin)
                .await
                .unwrap_or(false);
            if !locked {
                continue; // in use
            }
            // In use all the same: a holder in another database (advisory
            // locks are per database), a connection (a user of an older
            // db-test, psql), or a per-test database whose owner lives.
            let busy: bool = sqlx::query_scalar(
                "SELECT exists(SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
                   AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 2 \
                   AND pid <> pg_backend_pid()) \
                 OR exists(SELECT 1 FROM pg_stat_activity WHERE starts_with(datname, $3))",
            )
            .bind(HASH_LOCK as i64)
            .bind(key as u32 as i64)
            .bind(format!("{hash_prefix}_"))
            .fetch_one(&mut *admin)
            .await
            .unwrap_or(true);
            let owners_alive = match Self::live_owners(admin).await {
                Ok(live) => names.iter().any(|n| {
                    n.strip_prefix(&format!("{hash_prefix}_d"))
                        .and_then(parse_owner)
                        .is_some_and(|o| live.contains(&o))
                }),
                Err(_) => true,
            };
            if !busy && !owners_alive {
                // The template last.
                names.sort_by_key(|n| n.ends_with("_t"));
                for name in names {
                    tracing::info!(database = %name, "db-test: dropping a database of outdated migrations");
                    if Self::drop_quietly(admin, name).await.is_err() {
                        break;
                    }
                }
            }
            let _ = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(HASH_LOCK)
                .bind(key)
                .execute(&mut *admin)
                .await;
        }
    }

    /// Owner ids whose process holds its owner lock, on any host.
    async fn live_owners(conn: &mut PgConnection) -> Result<HashSet<u32>, sqlx::Error> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' \
             AND classid = $1::bigint::oid AND objsubid = 2",
        )
        .bind(OWNER_LOCK as i64)
        .fetch_all(&mut *conn)
        .await?;
        Ok(ids.into_iter().map(|id| id as u32).collect())
    }

    /// Drops one of our databases without waiting for anyone: the callers
    /// checked that nobody is connected, and ignore a failure.
    async fn drop_quietly(admin: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {}",
                quote_ident(name)
            )))
            .await
            .map(|_| ())
    }
}

impl Engine {
    /// Gives one test a database of its own: a used one recycled to the
    /// template's state if there is one (see `recycle_test_database`),
    /// otherwise a fresh clone of the template. The template itself is never
    /// connected to: cloning needs it idle.
    pub(crate) async fn create_test_database(
        &self,
        template: &Template,
    ) -> Result<TestDatabase, String> {
        template
            .leftovers_checked
            .get_or_init(|| self.drop_leftovers(&template.prefix))
            .await;
        // The owner lock must be held before a database carries our id.
        self.with_owner_conn(async |_| Ok(())).await?;
        let name = self.owned_name(template, 'd')?;
        let mut conn = self.admin_pool.acquire().await.map_err(|e| {
            format!(
                "db-test: cannot connect to {} to create a test database: {e}",
                self.display_url
            )
        })?;
        // A spare is claimed by renaming it; of two processes racing for
        // one, the second finds it gone and tries the next.
        let mut spares: Vec<String> = sqlx::query_scalar(
            "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1) LIMIT 8",
        )
        .bind(format!("{}_s", template.prefix))
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_default();
        // Threads of one process start at different spares.
        if !spares.is_empty() {
            let n = self
                .clone_counter
                .load(std::sync::atomic::Ordering::Relaxed);
            let start = n as usize % spares.len();
            spares.rotate_left(start);
        }
        for spare in spares {
            let claim = format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote_ident(&spare),
                quote_ident(&name)
            );
            if conn.execute(sqlx::AssertSqlSafe(claim)).await.is_ok() {
                drop(conn);
                self.recycle_plan(template, &name).await;
                return Ok(TestDatabase {
                    options: self.options_for(&name),
                    name,
                });
            }
        }
        drop(conn);
        // The permit first, then the connection: a clone waiting for its
        // permit holds no admin connection, so DB_TEST_MAX_DATABASES clones
        // run at once.
        let _permit = self.clones.acquire().await.expect("semaphore never closed");
        let mut conn = self.admin_pool.acquire().await.map_err(|e| {
            format!(
                "db-test: cannot connect to {} to create a test database: {e}",
                self.display_url
            )
        })?;
        let sql = format!(
            "CREATE DATABASE {} TEMPLATE {}",
            quote_ident(&name),
            quote_ident(&template.template)
        );
        let mut rebuilt = false;
        loop {
            match Self::admin_exec(&mut conn, &sql).await {
                Ok(()) => break,
                // The template is gone (dropped by hand, or swept while this
                // process's owner connection was down): build it again, then
                // clone.
                Err(e) if sqlstate(&e).as_deref() == Some("3D000") && !rebuilt => {
                    tracing::info!(template = %template.template, "db-test: the template is gone; building it again");
                    self.create_template(template.migrator.get(), &template.source, &template.hash)
                        .await?;
                    rebuilt = true;
                }
                Err(e) => {
                    return Err(format!(
                        "db-test: cannot create test database {name} on {}: {e}",
                        self.display_url
                    ));
                }
            }
        }
        drop(conn);
        self.recycle_plan(template, &name).await;
        Ok(TestDatabase {
            options: self.options_for(&name),
            name,
        })
    }

    /// A new name for a database of this process's: `kind` `d` (a test's)
    /// or `s` (a spare).
    fn owned_name(&self, template: &Template, kind: char) -> Result<String, String> {
        let n = self
            .clone_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = owned_name(&template.prefix, kind, self.owner, n);
        if name.len() > MAX_NAME_LEN {
            return Err(format!(
                "db-test: database name {name} is longer than PostgreSQL's {MAX_NAME_LEN} bytes"
            ));
        }
        Ok(name)
    }

    /// How to reset a used per-test database, worked out once per template
    /// and process on a database just cloned (or a spare just claimed), so in
    /// the template's exact state. None when the template holds rows (seed
    /// data), materialized views or foreign tables: those databases are
    /// dropped, never recycled.
    async fn recycle_plan(&self, template: &Template, fresh: &str) -> Option<Recycle> {
        template
            .recycle
            .get_or_init(|| async {
                let mut conn = self.options_for(fresh).connect().await.ok()?;
                let tables: Vec<(String, String, i64)> = sqlx::query_as(
                    "SELECT format('%I.%I', n.nspname, c.relname), c.relkind::text, \
                     (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text::bigint \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE c.relkind IN ('r', 'p', 'm', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'",
                )
                .fetch_all(&mut conn)
                .await
                .ok()?;
                let mut truncate = Vec::new();
                let mut extra = String::new();
                for (table, kind, rows) in &tables {
                    if table.ends_with("._sqlx_migrations") {
                        // Kept, and checked unchanged.
                        extra.push_str(&format!(
                            "UNION ALL SELECT 'm:' || (SELECT count(*) || ':' || coalesce(max(version), 0) FROM {table})\n"
                        ));
                        continue;
                    }
                    if kind == "m" || kind == "f" || *rows > 0 {
                        return None;
                    }
                    truncate.push(table.clone());
                }
                // Tried once here, on a database in the template's state,
                // where it has nothing to do.
                let reset = match reset_block(&truncate) {
                    Some(block) if conn.execute(sqlx::AssertSqlSafe(block.clone())).await.is_ok() => block,
                    _ if truncate.is_empty() => String::new(),
                    _ => format!("TRUNCATE TABLE {} RESTART IDENTITY CASCADE", truncate.join(", ")),
                };
                let fingerprint_sql = FINGERPRINT_SQL.replace("{extra}", &extra);
                let fingerprint: String = sqlx::query_scalar(sqlx::AssertSqlSafe(fingerprint_sql.clone()))
                    .fetch_one(&mut conn)
                    .await
                    .ok()?;
                let _ = conn.close().await;
                Some(Recycle { reset, fingerprint_sql, fingerprint })
            })
            .await
            .clone()
    }

    /// Puts a used per-test database back as a spare for the next test,
    /// instead of dropping it: its tables are emptied (sequences restarted)
    /// and, only if its schema and server-side state then match the
    /// template's exactly and nobody else is connected, it is renamed to a
    /// spare. `CREATE DATABASE` costs 100-350 ms on a small machine; this
    /// costs a few. Anything unexpected: the database is dropped instead.
    ///
    /// `reuse` is a connection the test already opened to the database (its
    /// pool's, detached), and whether the pool's other connections are still
    /// on their way out; without one a new connection is made.
    pub(crate) async fn recycle_test_database(
        &self,
        template: &Template,
        name: &str,
        reuse: Option<(PgConnection, bool)>,
    ) -> Result<(), String> {
        match self.try_recycle(template, name, reuse).await {
            Ok(()) => Ok(()),
            Err(why) => {
                tracing::debug!(database = %name, why, "db-test: dropping a test database instead of recycling it");
                self.drop_test_database(name).await
            }
        }
    }

    async fn try_recycle(
        &self,
        template: &Template,
        name: &str,
        reuse: Option<(PgConnection, bool)>,
    ) -> Result<(), &'static str> {
        let plan = template.recycle.get().cloned().flatten().ok_or(
            "this template cannot be recycled (rows, materialized views or foreign tables)",
        )?;
        let mut conn = match reuse {
            Some((mut conn, others_closing)) => {
                if others_closing && !Self::wait_until_zero(&mut conn, OTHER_CONNECTIONS_SQL).await
                {
                    return Err("the test left connections open");
                }
                conn
            }
            None => {
                tokio::time::timeout(config::connect_timeout(), self.options_for(name).connect())
                    .await
                    .map_err(|_| "connect timed out")?
                    .map_err(|_| "cannot connect")?
            }
        };
        // One round trip. `now() = statement_timestamp()` holds only outside
        // a transaction block: a transaction the test left open on this
        // connection would swallow the reset (and roll it back on close).
        // `RESET ALL` undoes session settings that change how the
        // fingerprint prints names (search_path).
        let sql = format!(
            "SELECT now() = statement_timestamp(), ({OTHER_CONNECTIONS_SQL}); RESET ALL; {}; {}",
            plan.reset, plan.fingerprint_sql
        );
        for attempt in 0..2 {
            let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                .fetch_all(&mut conn)
                .await
                .map_err(|_| "emptying the tables failed")?;
            let [first, last] = &rows[..] else {
                return Err("unexpected result from the reset");
            };
            if !first.try_get::<bool, _>(0).unwrap_or(false) {
                return Err("the test left a transaction open");
            }
            if last.try_get::<String, _>(0).ok().as_deref() != Some(plan.fingerprint.as_str()) {
                return Err("the test changed the schema");
            }
            if first.try_get::<i64, _>(1).unwrap_or(1) == 0 {
                break;
            }
            // Other connections were still there: closing ones from the
            // test's pool, or one the test leaked. Wait for them, then reset
            // again, in case one wrote after the reset.
            if attempt == 1 || !Self::wait_until_zero(&mut conn, OTHER_CONNECTIONS_SQL).await {
                return Err("the test left connections open");
            }
        }
        let _ = conn.close().await;
        let spare = self
            .owned_name(template, 's')
            .map_err(|_| "spare name too long")?;
        let mut admin = self
            .admin_pool
            .acquire()
            .await
            .map_err(|_| "no admin connection")?;
        // A rename waits in steps of 100 ms for backends still on their way
        // out (including the one just closed); polling here takes ~1 ms.
        let gone = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = {}",
            quote_literal(name)
        );
        if !Self::wait_until_zero(&mut admin, &gone).await {
            return Err("connections stayed open");
        }
        Self::admin_exec(
            &mut admin,
            &format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote_ident(name),
                quote_ident(&spare)
            ),
        )
        .await
        .map_err(|_| "rename failed")
    }

    /// Polls a `count(*)` query until it returns 0, for up to 2 s.
    async fn wait_until_zero(conn: &mut PgConnection, count_sql: &str) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            let n: i64 = match sqlx::query_scalar(sqlx::AssertSqlSafe(count_sql.to_owned()))
                .fetch_one(&mut *conn)
                .await
            {
                Ok(n) => n,
                Err(_) => return false,
            };
            if n == 0 {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Drops a test's database (and any connection the test left open to it).
    pub(crate) async fn drop_test_database(&self, name: &str) -> Result<(), String> {
        let mut conn = self.admin_pool.acquire().await.map_err(|e| e.to_string())?;
        let force = if conn.server_version_num().unwrap_or(0) >= 130000 {
            " WITH (FORCE)"
        } else {
            ""
        };
        Self::admin_exec(
            &mut conn,
            &format!("DROP DATABASE IF EXISTS {}{force}", quote_ident(name)),
        )
        .await
        .map_err(|e| format!("db-test: cannot drop test database {name}: {e}"))
    }

    /// Keeps a failed test's database under a name the leftover sweep skips.
    pub(crate) async fn keep_test_database(&self, name: &str) -> Result<String, String> {
        let kept = match name.rfind("_d") {
            Some(i) => format!("{}_k{}", &name[..i], &name[i + 2..]),
            None => format!("{name}_k"),
        };
        let mut conn = self.admin_pool.acquire().await.map_err(|e| e.to_string())?;
        Self::admin_exec(
            &mut conn,
            &format!(
                "ALTER DATABASE {} RENAME TO {}",
                quote_ident(name),
                quote_ident(&kept)
            ),
        )
        .await
        .map_err(|e| format!("db-test: cannot keep test database {name}: {e}"))?;
        Ok(kept)
    }

    /// Removes per-test databases left by killed runs: nobody is connected
    /// to them and their owner's lock is gone from the server, so their
    /// process is dead, whichever host or PID namespace it ran in.
    async fn drop_leftovers(&self, prefix: &str) {
        let Ok(mut conn) = self.admin_pool.acquire().await else {
            return;
        };
        let test_prefix = format!("{prefix}_d");
        let unconnected: Vec<String> = match sqlx::query_scalar(
            "SELECT d.datname::text FROM pg_database d WHERE starts_with(d.datname, $1) \
             AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datid = d.oid)",
        )
        .bind(&test_prefix)
        .fetch_all(&mut *conn)
        .await
        {
            Ok(rows) => rows,
            Err(_) => return,
        };
        if unconnected.is_empty() {
            return;
        }
        // Read after the list: an owner alive when the list was taken, and
        // so holding its lock since before it created the database, is in it.
        let Ok(live) = Self::live_owners(&mut conn).await else {
            return;
        };
        for name in unconnected {
            let Some(owner) = name.strip_prefix(&test_prefix).and_then(parse_owner) else {
                continue;
            };
            if owner == self.owner || live.contains(&owner) {
                continue;
            }
            tracing::info!(database = %name, "db-test: dropping a leftover test database");
            let _ = Self::drop_quietly(&mut conn, &name).await;
        }
    }
}

enum MigratorRef {
    Static(&'static Migrator),
    Owned(Migrator),
}

impl MigratorRef {
    fn get(&self) -> &Migrator {
        match self {
            MigratorRef::Static(m) => m,
            MigratorRef::Owned(m) => m,
        }
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
    fn the_longest_generated_names_fit_in_63_bytes() {
        let base = sanitize("a_very_long_database_name_indeed");
        assert_eq!(base.len(), 16);
        let source = format!(
            "dbtest_{base}_{}",
            source_id("/some/checkout/server/migrations")
        );
        let prefix = format!("{source}_{}", &embedded::short_hash(b"migrations")[..10]);
        for kind in ['d', 's'] {
            let name = owned_name(&prefix, kind, u32::MAX, 999_999_999);
            assert!(name.len() <= MAX_NAME_LEN, "{name}: {}", name.len());
        }
        assert!(format!("{prefix}_b").len() <= MAX_NAME_LEN);
    }

    #[test]
    fn owner_ids_round_trip_through_names() {
        let name = owned_name("dbtest_x_0123abcd_0123456789", 'd', 0x00ab_cdef, 42);
        assert_eq!(name, "dbtest_x_0123abcd_0123456789_d00abcdef_42");
        let rest = name.strip_prefix("dbtest_x_0123abcd_0123456789_d").unwrap();
        assert_eq!(parse_owner(rest), Some(0x00ab_cdef));
        // Names of the older scheme (`d<pid>x<n>`) are nobody's here.
        assert_eq!(parse_owner("12345x0"), None);
        assert_eq!(parse_owner("12345678_"), None);
        assert_eq!(parse_owner("1234567_0"), None);
    }

    #[test]
    fn the_source_is_the_whole_canonical_path() {
        let a = source_id("/work/a/server/migrations");
        let b = source_id("/work/b/server/migrations");
        assert_ne!(a, b);
        assert_eq!(a.len(), 8);
        let dir = std::env::temp_dir();
        assert_eq!(canonical(&dir.join(".")), canonical(&dir));
    }

    #[test]
    fn the_admin_pool_fits_every_concurrent_clone() {
        assert_eq!(admin_pool_size(4), 6);
        assert_eq!(admin_pool_size(1), 3);
        assert_eq!(admin_pool_size(usize::MAX), u32::MAX);
    }
}
