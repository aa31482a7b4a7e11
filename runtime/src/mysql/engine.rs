//! The MySQL/MariaDB engine of the process: its server (a URL or the
//! embedded one), admin connections, the owner lock, the names of what it
//! creates, and `KILL`.
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
//! The template and working database of each migrations hash are in
//! [`super::template`], per-test databases in [`super::databases`].

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::{Connection, Executor, Row};
use tokio::sync::OnceCell;

use super::embedded;
use super::template::Template;
use crate::config;
use crate::postgres::engine::redact;

/// The engine of the process: one server.
pub(crate) struct Engine {
    /// The server, password removed, for messages.
    pub(crate) display_url: String,
    /// Options to the server, without a database.
    pub(super) server: MySqlConnectOptions,
    /// A URL for the server, for tools (`mysql`, a benchmark).
    pub(crate) url: String,
    /// Admin connections (creating, cloning, dropping databases).
    pub(super) admin: MySqlPool,
    /// This process's owner id (`dbtest_owner_<id>`, held by `owner_conn`).
    pub(super) owner: u32,
    pub(super) owner_conn: Mutex<Option<MySqlConnection>>,
    /// A connection to the server opened at the start, beside the others:
    /// the first template's keeper (see `Template::_keeper`).
    pub(super) spare: Mutex<Option<MySqlConnection>>,
    pub(super) counter: AtomicU64,
    pub(super) templates: Mutex<HashMap<String, Arc<OnceCell<Arc<Template>>>>>,
}

/// MySQL's limit on a database name.
pub(super) const MAX_NAME_LEN: usize = 64;

/// Keeps an idle session of the engine's open for the process's life: a
/// server's short `wait_timeout` must not end it (the owner lock, the
/// working database's keeper).
pub(super) const LIFELONG_SESSION: &str = "SET SESSION wait_timeout = 31536000";

static ENGINE: OnceCell<Result<Engine, String>> = OnceCell::const_new();

/// Whether the server writes a statement-based binary log (`log_bin` on,
/// `binlog_format = STATEMENT`), read when the engine starts.
static STATEMENT_BINLOG: AtomicBool = AtomicBool::new(false);

/// See [`STATEMENT_BINLOG`].
pub(crate) fn statement_binlog() -> bool {
    STATEMENT_BINLOG.load(Ordering::Relaxed)
}

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

/// The engine if it started (or failed to), without waiting.
pub(crate) fn started() -> Option<Result<&'static Engine, String>> {
    ENGINE
        .get()
        .map(|started| started.as_ref().map_err(Clone::clone))
}

/// A name in backticks.
pub(crate) fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A string literal.
pub(super) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

pub(super) fn hex8(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// Whether `name` is a per-test database, and its owner id: exactly the
/// form db-test gives one, `dbtest_<source: 8 hex>_<hash: up to 10
/// hex>_d<owner: 8 hex>_<n>`.
pub(super) fn test_database_owner(name: &str) -> Option<u32> {
    let hex = |s: &str, len: std::ops::RangeInclusive<usize>| {
        len.contains(&s.len()) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let rest = name.strip_prefix("dbtest_")?;
    let mut parts = rest.split('_');
    let (source, hash, kind, n) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || !hex(source, 8..=8)
        || !hex(hash, 1..=10)
        || n.is_empty()
        || !n.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let owner = kind.strip_prefix('d')?;
    hex(owner, 8..=8)
        .then(|| u32::from_str_radix(owner, 16).ok())
        .flatten()
}

pub(super) fn owner_lock(owner: u32) -> String {
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
                let embedded = crate::run::spawn_blocking_uncaptured(embedded::ensure_started)
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
                    // sessions still in it: never forever. Fingerprints
                    // concatenate a whole schema. MySQL 8 caches the
                    // AUTO_INCREMENT it reports (MariaDB has no such
                    // setting: its "unknown system variable" is expected).
                    // One round trip.
                    match sqlx::raw_sql(
                        "SET SESSION lock_wait_timeout = 30, group_concat_max_len = 67108864; \
                         SET SESSION information_schema_stats_expiry = 0",
                    )
                    .execute(&mut *conn)
                    .await
                    {
                        Err(e) if !unknown_variable(&e) => Err(e),
                        _ => Ok(()),
                    }
                })
            })
            .connect_lazy_with(server.clone());
        // A wrong URL: a clear error within the connect timeout. The
        // template's setup needs an admin connection next: opened meanwhile.
        let warm_admin = async {
            if let Ok(conn) = admin.acquire().await {
                drop(conn);
            }
        };
        let (owner_conn, (), spare) = tokio::join!(
            connect(&server, &display_url),
            warm_admin,
            connect(&server, &display_url)
        );
        let mut owner_conn = owner_conn?;
        let mut owner = None;
        for attempt in 0..16u32 {
            // 32 bits of a digest of the pid, the time and the attempt.
            let digest =
                hex8(format!("{}:{:?}:{attempt}", std::process::id(), Instant::now()).as_bytes());
            let candidate = u32::from_str_radix(&digest, 16).unwrap_or(attempt);
            // The owner lock lives as long as this session: a server's short
            // `wait_timeout` must not end it while the process is idle
            // (another process would then take this one's databases for a
            // dead one's). Set in the same round trip as the first try.
            let setup = if attempt == 0 {
                format!("{LIFELONG_SESSION}; ")
            } else {
                String::new()
            };
            let got: Option<i64> = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "{setup}SELECT GET_LOCK({}, 0)",
                literal(&owner_lock(candidate))
            )))
            .fetch_one(&mut owner_conn)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|e| format!("db-test: taking the owner lock on {display_url}: {e}"))?;
            if got == Some(1) {
                owner = Some(candidate);
                break;
            }
        }
        // Before any test's transaction: how it may begin (see `BEGIN_TEST`).
        // A server without these variables has no such log.
        let statement_log: Option<i64> =
            sqlx::query_scalar("SELECT @@log_bin = 1 AND @@binlog_format = 'STATEMENT'")
                .fetch_one(&mut owner_conn)
                .await
                .unwrap_or(Some(0));
        STATEMENT_BINLOG.store(statement_log == Some(1), Ordering::Relaxed);
        let Some(owner) = owner else {
            return Err(format!(
                "db-test: no free owner lock on {display_url} after 16 tries; \
                 another process holds every one tried (is something holding db-test's locks?)"
            ));
        };
        Ok(Engine {
            display_url,
            url,
            server,
            admin,
            owner,
            owner_conn: Mutex::new(Some(owner_conn)),
            spare: Mutex::new(spare.ok()),
            counter: AtomicU64::new(0),
            templates: Mutex::new(HashMap::new()),
        })
    }

    /// Options to `database` on this server.
    pub(crate) fn options_for(&self, database: &str) -> MySqlConnectOptions {
        self.server.clone().database(database)
    }

    /// An admin connection.
    pub(super) async fn admin(&self) -> Result<sqlx::pool::PoolConnection<sqlx::MySql>, String> {
        self.admin.acquire().await.map_err(|e| {
            format!(
                "db-test: cannot connect to {} (DB_TEST_CONNECT_TIMEOUT={:?}): {e}",
                self.display_url,
                config::connect_timeout()
            )
        })
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

    /// Releases the owner lock (tests only use it through process exit).
    #[allow(dead_code)]
    pub(crate) fn owner_id(&self) -> u32 {
        let _ = &self.owner_conn;
        self.owner
    }
}

/// Whether `e` is the server's "unknown system variable" (a setting of
/// MySQL that MariaDB lacks, or the other way round).
fn unknown_variable(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
        .is_some_and(|d| d.number() == 1193)
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
        // Not db-test's form: a made-up source or hash, an owner that is
        // not hex, a count that is not a number.
        assert_eq!(test_database_owner("dbtest_foo_bar_d1234abcd_1"), None);
        assert_eq!(
            test_database_owner("dbtest_deadbeef_0123456789_d1234abcg_1"),
            None
        );
        assert_eq!(
            test_database_owner("dbtest_deadbeef_0123456789_d1234abcd_x"),
            None
        );
        assert_eq!(
            test_database_owner("dbtest_deadbeef_0123456789ab_d1234abcd_1"),
            None
        );
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
