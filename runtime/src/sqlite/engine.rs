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
//! that `DB_TEST_SQLITE_URL` names (that file itself is never opened); else
//! `db-test-sqlite/` next to the test binary's directory
//! (`target/debug/db-test-sqlite`). A `sqlite:` `DATABASE_URL` (the app's
//! database, for sqlx's query macros) keeps that default, as under
//! `#[sqlx::test]`: db-test writes nothing next to the app's database. So
//! does a `sqlite::memory:` URL.
//!
//! Every file db-test makes there starts with `db-test-`, and every file
//! of a process carries its *owner id*, random per process (not its pid:
//! processes in two PID namespaces sharing the directory may have the same
//! pid): `db-test-<id>.lock`, held with `flock` while the process lives;
//! `db-test-<id>-<n>.sqlite`, a database-mode test's copy; and
//! `db-test-tmpl-<hash>.<id>.building`, a template being built. A process
//! removes only files of that exact form whose owner's lock it can take (an
//! `flock` held by a live process is seen by every process on the same
//! file system, whatever its PID namespace): never a file of another name.

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
    /// Whether the schema has deferred foreign keys, which a test in
    /// transaction mode then checks where production's `COMMIT` would.
    pub(crate) defers: bool,
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
        owner_lock(&dir)?;
        Ok(dir)
    })
    .clone()
}

/// `DB_TEST_SQLITE_URL` (an error if it is not a SQLite URL), else
/// `DATABASE_URL` if it is a `sqlite:` URL (another database's is not
/// read, as under `#[sqlx::test]`). With the variable it came from.
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
    // Only db-test's own variable names a directory for db-test's files: a
    // `DATABASE_URL` names the app's database, whose directory is the app's.
    if let Some((var, url)) = url()?
        && var != "DATABASE_URL"
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

/// The prefix of every file db-test makes in its SQLite directory.
const PREFIX: &str = "db-test-";

/// This process's owner id: 16 hex digits, random per process.
fn owner_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        use std::hash::BuildHasher;
        // The standard library's random hasher keys (from the OS's random
        // source), with the pid and the time.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let h = std::hash::RandomState::new().hash_one((std::process::id(), nanos));
        format!("{h:016x}")
    })
}

/// The lock file that says the owner `id` is alive.
fn lock_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{PREFIX}{id}.lock"))
}

/// The path of this process's lock file, for [`remove_owner_lock`].
static OWNER_LOCK: OnceLock<std::ffi::CString> = OnceLock::new();

/// Takes this process's lock, `db-test-<id>.lock`, held until the process
/// ends (its file is removed at a normal exit; a killed process's is
/// removed by the next sweep). It is locked before it gets its name, so a
/// sweep never finds it unlocked while this process lives.
fn owner_lock(dir: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    static FILE: OnceLock<std::fs::File> = OnceLock::new();
    let path = lock_path(dir, owner_id());
    let mut tmp = path.clone().into_os_string();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let mut attempt = 0;
    let file = loop {
        let file = flock(&tmp)?;
        match std::fs::rename(&tmp, &path) {
            Ok(()) => break file,
            // Another process's sweep took it between its creation and
            // its lock, and removed it: again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 3 => attempt += 1,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(format!(
                    "db-test: cannot create the lock {}: {e} (set DB_TEST_SQLITE_DIR to \
                     another directory)",
                    path.display()
                ));
            }
        }
    };
    let _ = FILE.set(file);
    if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) {
        let _ = OWNER_LOCK.set(c);
        // SAFETY: registers a plain function, run once at `exit`.
        unsafe { libc::atexit(remove_owner_lock) };
    }
    Ok(())
}

/// At a normal exit: removes this process's lock file (its copies are
/// gone by then; any left are removed by the next sweep, as a killed
/// process's are).
extern "C" fn remove_owner_lock() {
    if let Some(path) = OWNER_LOCK.get() {
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::unlink(path.as_ptr()) };
    }
}

/// The owner id in the name of a file of db-test's own that belongs to one
/// process, and whether it is that owner's lock file. `None` for any other
/// name: such a file is never removed.
fn owner_of(name: &str) -> Option<(&str, bool)> {
    fn is_id(s: &str) -> bool {
        s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }
    fn is_number(s: &str) -> bool {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
    }
    let rest = name.strip_prefix(PREFIX)?;
    // db-test-<id>.lock
    if let Some(id) = rest.strip_suffix(".lock")
        && is_id(id)
    {
        return Some((id, true));
    }
    // db-test-<id>.lock.new: a lock of a process that died before it
    // named it (removed only if it can be locked, see `sweep`).
    if let Some(id) = rest.strip_suffix(".lock.new")
        && is_id(id)
    {
        return Some((id, false));
    }
    // db-test-<id>-<n>.sqlite, and the files SQLite keeps next to it
    let base = ["-wal", "-shm", "-journal"]
        .iter()
        .find_map(|s| rest.strip_suffix(s))
        .unwrap_or(rest);
    if let Some(stem) = base.strip_suffix(".sqlite")
        && let Some((id, n)) = stem.split_once('-')
        && is_id(id)
        && is_number(n)
    {
        return Some((id, false));
    }
    // db-test-tmpl-<hash>.<id>.building (and the files next to it)
    if let Some(stem) = base
        .strip_prefix("tmpl-")
        .and_then(|r| r.strip_suffix(".building"))
        && let Some((hash, id)) = stem.rsplit_once('.')
        && !hash.is_empty()
        && hash.bytes().all(|b| b.is_ascii_alphanumeric())
        && is_id(id)
    {
        return Some((id, false));
    }
    None
}

/// Removes the files of owners that are gone: files of db-test's own
/// naming scheme (see the module docs) whose owner's lock can be taken, or
/// that have no lock file any more. A live owner holds its lock, in
/// whichever PID namespace or container it runs.
fn sweep(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut owners: HashMap<String, Vec<PathBuf>> = HashMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some((id, is_lock)) = owner_of(name)
            && id != owner_id()
        {
            let files = owners.entry(id.to_string()).or_default();
            if !is_lock {
                files.push(entry.path());
            }
        }
    }
    for (id, files) in owners {
        let path = lock_path(dir, &id);
        let held = match std::fs::File::open(&path) {
            Ok(file) => match try_flock(&file) {
                Ok(true) => Some(file),
                // Held by a live process, or cannot tell: left alone.
                Ok(false) | Err(_) => continue,
            },
            // Removed by an earlier sweep that stopped halfway.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(_) => continue,
        };
        for f in files {
            if f.extension().is_some_and(|e| e == "new") {
                // Its owner may have created it and not locked it yet.
                match std::fs::File::open(&f).map(|file| try_flock(&file)) {
                    Ok(Ok(true)) => {}
                    _ => continue,
                }
            }
            let _ = std::fs::remove_file(f);
        }
        if held.is_some() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Takes an exclusive `flock` on `file` if no one holds one.
fn try_flock(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor; the lock goes with the file.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Connect options of db-test's SQLite connections to a file: those
/// `#[sqlx::test]` gives a test (`create_if_missing(true)`, sqlx's default
/// foreign keys on), so that options derived from them (another file's, a
/// tenant's) create a missing database as they would there.
fn file_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
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
    let path = dir.join(format!("{PREFIX}tmpl-{hash}.sqlite"));
    if !path.exists() {
        let lock_path = dir.join(format!("{PREFIX}tmpl-{hash}.lock"));
        let lock = crate::run::spawn_blocking_uncaptured(move || flock(&lock_path))
            .await
            .map_err(|e| format!("db-test: the template lock task failed: {e}"))??;
        if !path.exists() {
            let building = dir.join(format!("{PREFIX}tmpl-{hash}.{}.building", owner_id()));
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
    let mut bytes = std::fs::read(&path).map_err(|e| {
        format!(
            "db-test: cannot read the SQLite template {}: {e}",
            path.display()
        )
    })?;
    // Migrations that turned on WAL (a `-- no-transaction` `PRAGMA
    // journal_mode = WAL`) leave the file's header saying so (bytes 18 and
    // 19 = 2), which an in-memory copy cannot open. The copies say
    // "rollback journal" (1) instead; the file, and database mode's file
    // copies, stay in WAL as the migrations left them.
    if bytes.len() >= 100 && bytes[18] == 2 && bytes[19] == 2 {
        bytes[18] = 1;
        bytes[19] = 1;
    }
    let bytes = Arc::new(bytes);
    let options = SqliteConnectOptions::from_str("sqlite::memory:")
        .expect("a valid URL")
        .foreign_keys(true);
    let (baseline, defers) = fk_baseline(&path, &bytes, &options).await?;
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
                        conn.deserialize(None, buf, false).await?;
                        sqlx::raw_sql(baseline).execute(&mut *conn).await?;
                        Ok(())
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
        defers,
    })
}

/// The statement, run on each in-memory copy as it opens (before any
/// test's transaction), that records the template's own foreign key
/// violations in `temp.db_test_fk_baseline`: rows the migrations left
/// (imported with foreign keys off, say). The end-of-test check (the
/// `CHECK_CONSTRAINTS` of `Sqlite`'s `Dialect`) reports only violations
/// not among them: those the test introduced. Computed once per template:
/// most have none, and their copies then only create the empty table.
/// Also says whether the schema has deferred foreign keys.
async fn fk_baseline(
    path: &Path,
    bytes: &[u8],
    options: &SqliteConnectOptions,
) -> Result<(&'static str, bool), String> {
    const EMPTY: &str = "CREATE TEMP TABLE db_test_fk_baseline (tbl, row_id, parent, fkid)";
    const FILLED: &str = "CREATE TEMP TABLE db_test_fk_baseline (tbl, row_id, parent, fkid); \
         INSERT INTO temp.db_test_fk_baseline SELECT * FROM pragma_foreign_key_check";
    let fail = |e: sqlx::Error| {
        format!(
            "db-test: cannot check the foreign keys of the SQLite template {}: {e}",
            path.display()
        )
    };
    let mut conn = options.connect().await.map_err(fail)?;
    let buf = SqliteOwnedBuf::try_from(bytes).map_err(fail)?;
    conn.deserialize(None, buf, false).await.map_err(fail)?;
    let any: Option<i64> = sqlx::query_scalar("SELECT 1 FROM pragma_foreign_key_check LIMIT 1")
        .fetch_optional(&mut conn)
        .await
        .map_err(fail)?;
    // `INITIALLY DEFERRED` in a table's SQL (SQLite keeps it as written).
    let defers: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND sql LIKE '%DEFERRED%')",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(fail)?;
    let _ = conn.close().await;
    Ok((if any.is_some() { FILLED } else { EMPTY }, defers))
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
            "{PREFIX}{}-{}.sqlite",
            owner_id(),
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
    /// name that no sweep removes (`kept-db-test-<id>-<n>.sqlite`): the
    /// next test process sweeps the files of processes that are gone, this
    /// one included once it exits. Returns the path it is kept at.
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
