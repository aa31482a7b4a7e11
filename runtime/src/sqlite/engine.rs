//! SQLite's engine: a migrated template file per migrations hash, built
//! once (across processes, under a file lock), and each test's copy of it.
//!
//! - Transaction mode: the test's connection is to an in-memory copy of the
//!   template (`sqlite3_deserialize` of the template's bytes), inside a
//!   transaction rolled back at the end. Copies are pooled per template and
//!   reused by later tests, since the rollback leaves them as they came:
//!   after the first tests of a process no test copies anything.
//! - Database mode: the test gets a file copy of the template of its own,
//!   and a pool on it; real commits, several connections. The file is
//!   deleted at the end (kept with `DB_TEST_KEEP_FAILED=1` if the test
//!   failed).
//!
//! Where files go: `DB_TEST_SQLITE_DIR`; else the directory of the file
//! that `DB_TEST_SQLITE_URL` or a `sqlite:` `DATABASE_URL` names (that file
//! itself is never opened); else `db-test-sqlite/` next to the test
//! binary's directory (`target/debug/db-test-sqlite`). A `sqlite::memory:`
//! URL keeps that default. Files of a database-mode test are named
//! `db-<pid>-<n>.sqlite`; those of a process that died are removed by the
//! next process that uses the directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteOwnedBuf, SqlitePoolOptions};
use sqlx::{ConnectOptions, Connection, Sqlite};
use tokio::sync::OnceCell;

use crate::postgres::template::{MigratorRef, migrations_hash, migrations_key, resolve_migrations};
use crate::run::Migrations;
use crate::slots::Slots;

/// A migrated template file, and the pool of in-memory copies of it.
pub(crate) struct Template {
    /// The template file.
    pub(crate) path: PathBuf,
    /// Its bytes, what each in-memory copy starts from.
    bytes: Arc<Vec<u8>>,
    /// Connections to in-memory copies (transaction mode), a pool of one
    /// each (see [`crate::slots`]).
    pub(crate) slots: Slots<Sqlite>,
    /// Options to open another connection to an in-memory database.
    pub(crate) options: SqliteConnectOptions,
}

/// The templates of this process, by migrations source.
type Templates = Mutex<HashMap<String, Arc<OnceCell<Arc<Template>>>>>;

fn templates() -> &'static Templates {
    static T: OnceLock<Templates> = OnceLock::new();
    T.get_or_init(Default::default)
}

/// The directory of db-test's SQLite files (see the module docs).
pub(crate) fn dir() -> Result<PathBuf, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = choose_dir()?;
        std::fs::create_dir_all(&dir).map_err(|e| {
            format!(
                "db-test: cannot create the directory for SQLite test databases, {}: {e} \
                 (set DB_TEST_SQLITE_DIR to another one)",
                dir.display()
            )
        })?;
        sweep(&dir);
        Ok(dir)
    })
    .clone()
}

/// `DB_TEST_SQLITE_URL`, else `DATABASE_URL` if it is a `sqlite:` URL; an
/// error if `DATABASE_URL` names another database (even when
/// `DB_TEST_SQLITE_DIR` is set: a test must not seem to run where it does not).
pub(crate) fn url() -> Result<Option<(String, String)>, String> {
    static URL: OnceLock<Result<Option<(String, String)>, String>> = OnceLock::new();
    URL.get_or_init(|| crate::config::server_url(crate::Backend::Sqlite))
        .clone()
}

fn choose_dir() -> Result<PathBuf, String> {
    if let Ok(d) = std::env::var("DB_TEST_SQLITE_DIR")
        && !d.trim().is_empty()
    {
        return Ok(PathBuf::from(d));
    }
    if let Some((_, url)) = url()?
        && let Some(dir) = url_dir(&url)
    {
        return Ok(dir);
    }
    let exe = std::env::current_exe()
        .map_err(|e| format!("db-test: cannot find the test binary's path: {e}"))?;
    // target/debug/deps/<binary> -> target/debug/db-test-sqlite
    let base = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    Ok(base.join("db-test-sqlite"))
}

/// The directory a `sqlite:` URL names: the URL's directory, or the
/// directory of its file. `None` for an in-memory URL.
pub(crate) fn url_dir(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or("");
    if path.is_empty() || path == ":memory:" || url.contains("mode=memory") {
        return None;
    }
    let path = PathBuf::from(path);
    if path.is_dir() || rest.ends_with('/') {
        return Some(path);
    }
    Some(match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    })
}

/// Removes database-mode files left by processes that died.
fn sweep(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let pid = name
            .strip_prefix("db-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
            .or_else(|| {
                // A template build a killed process left: tmpl-<hash>.<pid>.building
                name.strip_suffix(".building")
                    .and_then(|r| r.rsplit('.').next())
                    .and_then(|p| p.parse::<i32>().ok())
            });
        // This process's own pid too: `dir()` sweeps before this process
        // makes any file, so one with its pid is a dead process's that had
        // the same pid (a container restarted with the same `target/`).
        if let Some(pid) = pid
            && (pid == std::process::id() as i32 || !alive(pid))
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Connect options of db-test's SQLite connections to a file.
fn file_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .foreign_keys(true)
}

/// The template for these migrations, built if no process built it yet.
pub(crate) async fn template(
    migrations: Migrations,
    manifest_dir: &'static str,
) -> Result<Arc<Template>, String> {
    url()?;
    let key = migrations_key(migrations, manifest_dir)?;
    let cell = templates()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default()
        .clone();
    cell.get_or_try_init(|| async move {
        let (_, migrator) = resolve_migrations(migrations, manifest_dir).await?;
        build(migrator).await.map(Arc::new)
    })
    .await
    .cloned()
}

async fn build(migrator: MigratorRef) -> Result<Template, String> {
    let dir = dir()?;
    let hash = migrations_hash(migrator.get());
    let path = dir.join(format!("tmpl-{hash}.sqlite"));
    if !path.exists() {
        let lock_path = dir.join(format!("tmpl-{hash}.lock"));
        let lock = tokio::task::spawn_blocking(move || flock(&lock_path))
            .await
            .map_err(|e| format!("db-test: the template lock task failed: {e}"))??;
        if !path.exists() {
            let building = dir.join(format!("tmpl-{hash}.{}.building", std::process::id()));
            let _ = std::fs::remove_file(&building);
            let result = migrate_into(&building, migrator.get()).await;
            let result = result.and_then(|()| {
                std::fs::rename(&building, &path).map_err(|e| {
                    format!(
                        "db-test: cannot move the SQLite template into place at {}: {e}",
                        path.display()
                    )
                })
            });
            if result.is_err() {
                let _ = std::fs::remove_file(&building);
            }
            result?;
        }
        drop(lock);
    }
    let bytes = std::fs::read(&path).map_err(|e| {
        format!(
            "db-test: cannot read the SQLite template {}: {e}",
            path.display()
        )
    })?;
    let bytes = Arc::new(bytes);
    let options = SqliteConnectOptions::from_str("sqlite::memory:")
        .expect("a valid URL")
        .foreign_keys(true);
    let (for_copies, for_slots) = (bytes.clone(), options.clone());
    let slots = Slots::new(
        crate::config::pool_size(),
        crate::config::acquire_timeout(),
        move |_| {
            let for_copies = for_copies.clone();
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(0)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(crate::config::acquire_timeout())
                .test_before_acquire(false)
                .after_connect(move |conn, _| {
                    let bytes = for_copies.clone();
                    Box::pin(async move {
                        let buf = SqliteOwnedBuf::try_from(&bytes[..])?;
                        conn.deserialize(None, buf, false).await
                    })
                })
                .connect_lazy_with(for_slots.clone())
        },
    );
    Ok(Template {
        path,
        bytes,
        slots,
        options,
    })
}

/// Holds an exclusive `flock` on `path` until dropped.
fn flock(path: &Path) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("db-test: cannot open the lock {}: {e}", path.display()))?;
    // SAFETY: a valid open descriptor; the lock goes with the file.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "db-test: cannot lock {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(file)
}

async fn migrate_into(path: &Path, migrator: &sqlx::migrate::Migrator) -> Result<(), String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        format!(
            "db-test: cannot build the SQLite template {} ({what}): {e}",
            path.display()
        )
    };
    // A rollback journal, not WAL: the template is then one file, which
    // `sqlite3_deserialize` can read.
    let mut conn = file_options(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Delete)
        .connect()
        .await
        .map_err(|e| fail("connecting", &e))?;
    // No migrations (`migrations = false`): an empty database, as
    // `#[sqlx::test]` gives, without sqlx's `_sqlx_migrations` table.
    if migrator.iter().next().is_some() {
        migrator
            .run(&mut conn)
            .await
            .map_err(|e| fail("running migrations", &e))?;
    } else {
        // Still a database file (SQLite writes none until something is
        // written): its in-memory copies are deserialized from it.
        sqlx::raw_sql("CREATE TABLE db_test_empty (a); DROP TABLE db_test_empty")
            .execute(&mut conn)
            .await
            .map_err(|e| fail("writing an empty database", &e))?;
    }
    conn.close().await.map_err(|e| fail("closing", &e))
}

/// A file copy of the template for one test in database mode.
pub(crate) struct FileCopy {
    pub(crate) path: PathBuf,
}

impl FileCopy {
    pub(crate) fn new(template: &Template) -> Result<FileCopy, String> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = dir()?;
        let path = dir.join(format!(
            "db-{}-{}.sqlite",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::copy(&template.path, &path).map_err(|e| {
            format!(
                "db-test: cannot copy the SQLite template {} to {}: {e}",
                template.path.display(),
                path.display()
            )
        })?;
        Ok(FileCopy { path })
    }

    pub(crate) fn options(&self) -> SqliteConnectOptions {
        file_options(&self.path)
    }

    /// Removes the file and those SQLite keeps next to it.
    pub(crate) fn remove(&self) -> Result<(), String> {
        let mut first_error = None;
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_error.get_or_insert(format!(
                        "db-test: cannot remove {}: {e}",
                        PathBuf::from(p).display()
                    ));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Keeps the file of a failed test (`DB_TEST_KEEP_FAILED`) under a
    /// name that no sweep removes (`kept-db-<pid>-<n>.sqlite`): the next
    /// test process sweeps the files of processes that are gone, this one
    /// included once it exits. Returns the path it is kept at.
    pub(crate) fn keep(&self) -> Result<PathBuf, String> {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kept = self.path.with_file_name(format!("kept-{name}"));
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let (mut from, mut to) = (
                self.path.clone().into_os_string(),
                kept.clone().into_os_string(),
            );
            from.push(suffix);
            to.push(suffix);
            match std::fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !suffix.is_empty() => {}
                Err(e) => {
                    return Err(format!(
                        "db-test: cannot keep {} as {}: {e}",
                        PathBuf::from(from).display(),
                        PathBuf::from(to).display()
                    ));
                }
            }
        }
        Ok(kept)
    }
}

impl Template {
    /// The template's size, for messages and measurements.
    #[allow(dead_code)]
    pub(crate) fn size(&self) -> usize {
        self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::url_dir;
    use std::path::PathBuf;

    #[test]
    fn a_url_names_the_directory_of_the_copies() {
        assert_eq!(url_dir("sqlite::memory:"), None);
        assert_eq!(url_dir("sqlite://:memory:"), None);
        assert_eq!(url_dir("sqlite:file:x?mode=memory&cache=shared"), None);
        assert_eq!(
            url_dir("sqlite:///var/data/app.db?mode=rwc"),
            Some(PathBuf::from("/var/data"))
        );
        assert_eq!(url_dir("sqlite:data/app.db"), Some(PathBuf::from("data")));
        assert_eq!(url_dir("sqlite:app.db"), Some(PathBuf::from(".")));
        assert_eq!(
            url_dir("sqlite:///tmp/copies/"),
            Some(PathBuf::from("/tmp/copies/"))
        );
    }
}
