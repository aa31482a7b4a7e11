//! The embedded MariaDB/MySQL server: a private server started from the
//! system's binaries when no URL names one (`DB_TEST_MYSQL_URL`, or a
//! `mysql://`/`mariadb://` `DATABASE_URL`).
//!
//! It follows the embedded PostgreSQL's rules (see `postgres/embedded/`):
//!
//! - Binaries: `DB_TEST_MYSQL_BIN` (the server binary, or a directory
//!   holding it), else `mariadbd` or `mysqld` in `PATH`, `/usr/sbin`,
//!   `/usr/libexec`, `/usr/local/sbin`, `/usr/local/mysql/bin`. The data
//!   directory is initialised with `mariadb-install-db` (MariaDB) or
//!   `mysqld --initialize-insecure` (MySQL).
//! - Data: `<root>/mariadb-<version>-v<LAYOUT_VERSION>/data`, where `<root>`
//!   is `DB_TEST_MYSQL_DATA_DIR` if set, else `/dev/shm/db-test-<uid>` (in memory:
//!   see [`server_root`]) if `/dev/shm` has 1 GiB free, else the embedded
//!   PostgreSQL's base directory (the cache directory, or
//!   `/var/tmp/db-test-root` as root).
//! - Unix socket only (`skip-networking`), in a short private directory
//!   (`/tmp/dbtm-<uid>-<hash>`, mode 0700: root@localhost has no password,
//!   so only the socket's owner may reach it).
//! - Its own temporary directory, `<root>/…/tmp`: a starting server deletes
//!   every `#sql*` file in its tmpdir, which broke the statements of another
//!   server sharing `/tmp`.
//! - Tuned for tests: no doublewrite buffer, no flush at commit, no binary
//!   log, no performance schema, a small buffer pool. `DB_TEST_MYSQL_OPTIONS`
//!   adds server options (`--name=value ...`).
//! - As root it runs with `--user=root` (the server refuses root otherwise);
//!   its directories are root's, mode 0700.
//! - Shared by every test process: `start.lock` serialises start-up, and each
//!   test process holds a shared lock on `users.lock` while it lives. A
//!   detached reaper (a fork of the process that started it) stops the
//!   server after `DB_TEST_MYSQL_IDLE_SECS` (default 600) without users
//!   (test processes, or, on Linux, clients connected to its socket).

use std::ffi::{CStr, CString};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod process;
use crate::postgres::embedded::{errno, euid, flock};
use process::{ServerId, ensure_reaper};

/// Names the server directory. Bumped when the layout or its rules change.
const LAYOUT_VERSION: u32 = 2;

/// The names of the server binary, in order of preference.
const SERVER_NAMES: [&str; 2] = ["mariadbd", "mysqld"];

/// Where the server binary is searched after `PATH`.
const SYSTEM_DIRS: [&str; 5] = [
    "/usr/sbin",
    "/usr/libexec",
    "/usr/local/sbin",
    "/usr/local/mysql/bin",
    "/usr/local/bin",
];

/// A running embedded server.
#[derive(Debug, Clone)]
pub(crate) struct Embedded {
    /// The server's Unix socket.
    pub(crate) socket: PathBuf,
    /// Whether this process started it (false: reused a running one).
    #[allow(dead_code)]
    pub(crate) started_here: bool,
}

struct Layout {
    server: PathBuf,
    flavor: Flavor,
    root: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
}

impl Layout {
    fn socket(&self) -> PathBuf {
        self.socket_dir.join("mysqld.sock")
    }

    fn pid_file(&self) -> PathBuf {
        self.data.join("db-test-server.pid")
    }

    /// The server's own temporary directory. Not the shared `/tmp`: a
    /// starting MariaDB/MySQL deletes every `#sql*` file in its tmpdir, so a
    /// second server (another data directory, another user's run) starting
    /// while this one sorts or reads `information_schema` made its statement
    /// fail with "Error on delete of '/tmp/#sql-temptable-…'".
    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
}

/// Which server the binary is: they initialise a data directory differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    MariaDb,
    MySql,
}

/// The search for the server binary: `explicit` (`DB_TEST_MYSQL_BIN`, a
/// binary or a directory) if given, and only it; otherwise `mariadbd` then
/// `mysqld` in the directories of `path`, then [`SYSTEM_DIRS`]. On failure,
/// the message lists what was searched and how to fix it.
fn search_server(
    explicit: Option<std::ffi::OsString>,
    path: Option<std::ffi::OsString>,
) -> Result<PathBuf, String> {
    let how = "Install the server binaries (`apt-get install mariadb-server`, or run \
               scripts/ensure-mariadb.sh; the system service need not run), point \
               DB_TEST_MYSQL_BIN at a `mariadbd`/`mysqld` binary or its directory, or set \
               DB_TEST_MYSQL_URL (or DATABASE_URL) to a running server, e.g. \
               mysql://root@127.0.0.1:3306/test";
    if let Some(explicit) = explicit {
        let p = PathBuf::from(&explicit);
        if p.is_file() {
            return Ok(p);
        }
        for name in SERVER_NAMES {
            if p.join(name).is_file() {
                return Ok(p.join(name));
            }
        }
        return Err(format!(
            "db-test: DB_TEST_MYSQL_BIN={} is neither a `mariadbd`/`mysqld` binary nor a \
             directory holding one. {how}",
            p.display()
        ));
    }
    let mut dirs: Vec<PathBuf> = path
        .as_deref()
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    dirs.extend(SYSTEM_DIRS.iter().map(PathBuf::from));
    for name in SERVER_NAMES {
        for dir in &dirs {
            if dir.join(name).is_file() {
                return Ok(dir.join(name));
            }
        }
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(format!(
        "db-test: no MySQL/MariaDB server binary found for the embedded server: searched \
         `mariadbd` and `mysqld` in PATH and {} ({} directories: {}). {how}",
        SYSTEM_DIRS.join(", "),
        searched.len(),
        searched.join(":")
    ))
}

/// The server's flavour and version (`mariadb-10.11`), from `--version`.
fn server_version(server: &Path) -> Result<(Flavor, String), String> {
    let out = Command::new(server)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("db-test: cannot run `{} --version`: {e}", server.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let flavor = if text.contains("MariaDB") {
        Flavor::MariaDb
    } else {
        Flavor::MySql
    };
    let version = text
        .split_whitespace()
        .skip_while(|w| *w != "Ver")
        .nth(1)
        .map(|v| v.split(['.', '-']).take(2).collect::<Vec<_>>().join("."))
        .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| {
            format!(
                "db-test: cannot parse `{} --version` output: {text}",
                server.display()
            )
        })?;
    let name = match flavor {
        Flavor::MariaDb => "mariadb",
        Flavor::MySql => "mysql",
    };
    Ok((flavor, format!("{name}-{version}")))
}

/// The base directory: the embedded PostgreSQL's.
fn base_dir() -> PathBuf {
    let uid = euid();
    if let Some(dir) = std::env::var_os("DB_TEST_DATA_DIR") {
        PathBuf::from(dir)
    } else if uid == 0 {
        PathBuf::from("/var/tmp/db-test-root")
    } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(dir).join("db-test")
    } else if let Some(home) = std::env::var_os("HOME") {
        PathBuf::from(home).join(".cache/db-test")
    } else {
        PathBuf::from(format!("/tmp/db-test-{uid}"))
    }
}

/// Creates `path` (mode `mode`) unless it exists, then checks, without
/// following a symbolic link, that it is a directory of ours that nobody
/// else may write (`forbidden` mode bits).
fn ensure_dir(path: &Path, mode: u32, forbidden: u32, what: &str) -> Result<(), String> {
    match DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(format!(
                "db-test: cannot create the {what} {}: {e}",
                path.display()
            ));
        }
    }
    let meta = fs::symlink_metadata(path)
        .map_err(|e| format!("db-test: cannot inspect the {what} {}: {e}", path.display()))?;
    let problem = if !meta.file_type().is_dir() {
        Some("it is not a directory (or is a symbolic link)".to_string())
    } else if meta.uid() != euid() {
        Some(format!("it belongs to uid {}, not to us", meta.uid()))
    } else if meta.mode() & forbidden != 0 {
        Some(format!("its mode is {:o}", meta.mode() & 0o7777))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(format!(
            "db-test: refusing the {what} {} of the embedded MySQL/MariaDB: {p}. Remove it \
             (db-test recreates it) or set DB_TEST_MYSQL_DATA_DIR.",
            path.display()
        )),
    }
}

fn open_private_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn short_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// The binary and its flavour and version, remembered in
/// `base/mysql-bin-<key>.cache`, a file per `DB_TEST_MYSQL_BIN` and `PATH`
/// (finding them spawns `--version`, which every nextest process would pay;
/// one file for all made runs with two `PATH`s, a shell's and cargo's,
/// spawn it in every process).
fn binaries(base: &Path) -> Result<(PathBuf, Flavor, String), String> {
    let explicit = std::env::var_os("DB_TEST_MYSQL_BIN").filter(|v| !v.is_empty());
    let path = std::env::var_os("PATH");
    let key = short_hash(
        format!(
            "{}|{}",
            explicit
                .as_deref()
                .map(|v| v.to_string_lossy())
                .unwrap_or_default(),
            path.as_deref()
                .map(|v| v.to_string_lossy())
                .unwrap_or_default()
        )
        .as_bytes(),
    );
    let cache = base.join(format!("mysql-bin-{key}.cache"));
    if let Ok(text) = fs::read_to_string(&cache)
        && let [k, bin, flavor, version] = text.lines().collect::<Vec<_>>()[..]
        && k == key
        && Path::new(bin).is_file()
    {
        let flavor = if flavor == "mariadb" {
            Flavor::MariaDb
        } else {
            Flavor::MySql
        };
        return Ok((PathBuf::from(bin), flavor, version.to_string()));
    }
    let server = search_server(explicit, path)?;
    let (flavor, version) = server_version(&server)?;
    let name = if flavor == Flavor::MariaDb {
        "mariadb"
    } else {
        "mysql"
    };
    let _ = fs::write(
        &cache,
        format!("{key}\n{}\n{name}\n{version}\n", server.display()),
    );
    Ok((server, flavor, version))
}

fn layout() -> Result<Layout, String> {
    let base = base_dir();
    if let Some(parent) = base.parent() {
        let _ = fs::create_dir_all(parent);
    }
    // As the embedded PostgreSQL wants it: 0755 as root (its server user
    // passes through), 0700 otherwise; writable by nobody else.
    let base_mode = if euid() == 0 { 0o755 } else { 0o700 };
    ensure_dir(&base, base_mode, 0o022, "base directory")?;
    let (server, flavor, version) = binaries(&base)?;
    let root = server_root(&base, &format!("{version}-v{LAYOUT_VERSION}"));
    let tag = short_hash(root.as_os_str().as_bytes());
    Ok(Layout {
        server,
        flavor,
        data: root.join("data"),
        socket_dir: PathBuf::from(format!("/tmp/dbtm-{}-{tag}", euid())),
        root,
    })
}

/// Where the server's directory (`name`) goes. MariaDB/MySQL sync every
/// file of a `CREATE TABLE`/`DROP DATABASE` to disk (this is no setting),
/// which made a per-test database cost ~200 ms on a disk and ~20 ms in
/// memory: so, unless `DB_TEST_MYSQL_DATA_DIR` says where, it goes to
/// `/dev/shm/db-test-<uid>` (a private directory on tmpfs) when there is one
/// with room for it ([`SHM_MIN_FREE`]; a container's `/dev/shm` is often
/// 64 MiB, less than a server's files), else next to the embedded
/// PostgreSQL's. A server already made in memory stays there. Its data is
/// test data only; lost at reboot, it is initialised again (a few seconds).
fn server_root(base: &Path, name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("DB_TEST_MYSQL_DATA_DIR") {
        // Created like the base directory; checked with the server's.
        let dir = PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        return dir.join(name);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        let dir = shm.join(format!("db-test-{}", euid()));
        let made = dir.join(name).join("data").is_dir();
        if use_memory(made, free_bytes(shm))
            && ensure_dir(&dir, 0o700, 0o077, "memory directory").is_ok()
        {
            return dir.join(name);
        }
    }
    base.join(name)
}

/// The free space `/dev/shm` needs for a new server to be put there: the
/// server's own files take about 50 MiB, and each database of a test run a
/// few MiB more.
const SHM_MIN_FREE: u64 = 1 << 30;

/// Whether the server goes to `/dev/shm`: it is there already, or there is
/// room for it.
fn use_memory(made: bool, free: Option<u64>) -> bool {
    made || free.is_some_and(|free| free >= SHM_MIN_FREE)
}

/// The bytes free to this user on the file system holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a valid C string and a zeroed struct for statvfs to fill.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Whether a server answers on the socket: it sends its handshake first.
fn answers(socket: &Path) -> bool {
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut first = [0u8; 5];
    // A handshake packet: 3 bytes of length, sequence 0, protocol 10.
    stream.read_exact(&mut first).is_ok() && first[3] == 0 && first[4] == 10
}

/// Held for the life of the process: tells the reaper the server is in use.
static USERS_LOCK: OnceLock<File> = OnceLock::new();

/// Starts the embedded server, or finds the one already running. Blocking.
pub(crate) fn ensure_started() -> Result<Embedded, String> {
    let layout = layout()?;
    ensure_dir(&layout.root, 0o700, 0o077, "server directory")?;
    let open = |name: &str| {
        let path = layout.root.join(name);
        open_private_file(&path)
            .map_err(|e| format!("db-test: cannot open lock file {}: {e}", path.display()))
    };
    if USERS_LOCK.get().is_none() {
        let users = open("users.lock")?;
        flock(&users, libc::LOCK_SH)
            .map_err(|e| format!("db-test: cannot lock users.lock: {e}"))?;
        let _ = USERS_LOCK.set(users);
    }
    let start_lock = open("start.lock")?;
    flock(&start_lock, libc::LOCK_EX)
        .map_err(|e| format!("db-test: cannot lock start.lock: {e}"))?;
    ensure_dir(&layout.socket_dir, 0o700, 0o077, "socket directory")?;
    let id = ServerId::new(&layout);
    if id.running_pid().is_some() && answers(&layout.socket()) {
        ensure_reaper(&layout, &id);
        return Ok(Embedded {
            socket: layout.socket(),
            started_here: false,
        });
    }
    let t0 = Instant::now();
    if !layout.data.join("db-test-initialised").exists() {
        init_data(&layout)?;
    }
    let _ = fs::remove_file(layout.socket());
    ensure_dir(&layout.tmp_dir(), 0o700, 0o077, "temporary directory")?;
    let log = layout.root.join("server.log");
    let mut cmd = Command::new(&layout.server);
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", layout.data.display()))
        .arg(format!("--socket={}", layout.socket().display()))
        .arg(format!("--pid-file={}", layout.pid_file().display()))
        .arg(format!("--log-error={}", log.display()))
        .arg(format!("--tmpdir={}", layout.tmp_dir().display()))
        .args([
            "--skip-networking",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--sync-binlog=0",
            "--innodb-doublewrite=0",
            "--innodb-flush-log-at-trx-commit=0",
            "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=16M",
            "--innodb-fast-shutdown=1",
            "--performance-schema=0",
            "--max-connections=1000",
            "--character-set-server=utf8mb4",
            "--local-infile=0",
        ]);
    if layout.flavor == Flavor::MySql {
        cmd.arg("--mysqlx=0");
    }
    if euid() == 0 {
        cmd.arg("--user=root");
    }
    if let Ok(extra) = std::env::var("DB_TEST_MYSQL_OPTIONS") {
        cmd.args(extra.split_whitespace());
    }
    cmd.current_dir(&layout.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C of the test run does not stop the
        // server other test processes share.
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "db-test: cannot start the embedded server {}: {e}",
            layout.server.display()
        )
    })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if answers(&layout.socket()) {
            break;
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() > deadline {
            if exited.is_none() {
                let _ = child.kill();
            }
            return Err(format!(
                "db-test: the embedded MySQL/MariaDB ({}) failed to start (data in {}{}).\n\
                 server log (last lines):\n{}",
                layout.server.display(),
                layout.data.display(),
                exited
                    .map(|s| format!(", it exited with {s}"))
                    .unwrap_or_else(|| ", it did not answer within 60s".into()),
                log_tail(&log)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Not waited for: it outlives this process (the reaper stops it).
    drop(child);
    tracing::info!(
        data_dir = %layout.data.display(),
        socket = %layout.socket().display(),
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "db-test: embedded MySQL/MariaDB started"
    );
    ensure_reaper(&layout, &ServerId::new(&layout));
    Ok(Embedded {
        socket: layout.socket(),
        started_here: true,
    })
}

fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Initialises the data directory into a scratch directory renamed into
/// place, so a killed initialisation never leaves a half-made one.
fn init_data(layout: &Layout) -> Result<(), String> {
    let scratch = layout.root.join("data.init");
    let _ = fs::remove_dir_all(&scratch);
    let _ = fs::remove_dir_all(&layout.data);
    let mut cmd = match layout.flavor {
        Flavor::MariaDb => {
            let dir = layout.server.parent().unwrap_or(Path::new("/"));
            let candidates = [
                dir.join("mariadb-install-db"),
                dir.join("../bin/mariadb-install-db"),
                dir.join("mysql_install_db"),
                dir.join("../bin/mysql_install_db"),
                dir.join("../scripts/mariadb-install-db"),
                PathBuf::from("/usr/bin/mariadb-install-db"),
                PathBuf::from("/usr/bin/mysql_install_db"),
            ];
            let Some(install) = candidates.iter().find(|p| p.is_file()) else {
                return Err(format!(
                    "db-test: found the MariaDB server {} but not `mariadb-install-db` next to \
                     it or in /usr/bin (install the full server package: `apt-get install \
                     mariadb-server`)",
                    layout.server.display()
                ));
            };
            let mut cmd = Command::new(install);
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", scratch.display()))
                .args([
                    "--innodb-log-file-size=16M",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--skip-name-resolve",
                ]);
            if let Some(basedir) = layout.server.parent().and_then(Path::parent) {
                cmd.arg(format!("--basedir={}", basedir.display()));
            }
            if euid() == 0 {
                cmd.arg("--user=root");
            }
            cmd
        }
        Flavor::MySql => {
            let mut cmd = Command::new(&layout.server);
            cmd.arg("--no-defaults")
                .arg("--initialize-insecure")
                .arg(format!("--datadir={}", scratch.display()));
            if euid() == 0 {
                cmd.arg("--user=root");
            }
            cmd
        }
    };
    let out = cmd
        .current_dir(&layout.root)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("db-test: cannot initialise the embedded MySQL/MariaDB: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "db-test: initialising the embedded MySQL/MariaDB data directory in {} failed:\n{}{}",
            scratch.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    fs::write(scratch.join("db-test-initialised"), b"")
        .map_err(|e| format!("db-test: cannot mark the new data directory: {e}"))?;
    fs::rename(&scratch, &layout.data)
        .map_err(|e| format!("db-test: cannot move the new data directory into place: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_dev_shm_is_not_used_for_a_new_server() {
        // Docker's default /dev/shm: 64 MiB.
        assert!(!use_memory(false, Some(64 << 20)));
        assert!(!use_memory(false, None));
        assert!(use_memory(false, Some(8 << 30)));
        // A server already there stays there, whatever is free now.
        assert!(use_memory(true, Some(0)));
        // statvfs on a real file system: what df shows, never more than its size.
        let dir = std::env::temp_dir();
        let free = free_bytes(&dir).expect("statvfs of the temporary directory");
        let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut stat) }, 0);
        assert!(free <= stat.f_blocks * stat.f_frsize);
    }

    #[test]
    fn no_binary_names_what_was_searched_and_the_fixes() {
        let empty = std::env::temp_dir().join(format!("dbtm-empty-{}", std::process::id()));
        let _ = fs::create_dir_all(&empty);
        let err = search_server(Some(empty.clone().into_os_string()), None).unwrap_err();
        assert!(err.contains("DB_TEST_MYSQL_BIN"), "{err}");
        assert!(err.contains("apt-get install mariadb-server"), "{err}");
        let _ = fs::remove_dir_all(&empty);
    }

    #[test]
    fn a_directory_with_mariadbd_is_found() {
        let dir = std::env::temp_dir().join(format!("dbtm-bin-{}", std::process::id()));
        let _ = fs::create_dir_all(&dir);
        fs::write(dir.join("mariadbd"), "").unwrap();
        assert_eq!(
            search_server(Some(dir.clone().into_os_string()), None).unwrap(),
            dir.join("mariadbd")
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
