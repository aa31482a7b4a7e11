//! The embedded PostgreSQL server: a private cluster started from the
//! system's binaries when `DATABASE_URL` is unset.
//!
//! - Binaries: `DB_TEST_PG_BIN`, `pg_config --bindir`, `PATH`, then
//!   `/usr/lib/postgresql/*/bin`, newest first.
//! - Data: `DB_TEST_DATA_DIR`, else `$XDG_CACHE_HOME/db-test` or
//!   `~/.cache/db-test` (as root: `/var/tmp/db-test-root`, because the server
//!   runs as an unprivileged user who cannot enter `/root`).
//! - Socket only (no TCP), in a short directory under `/tmp`.
//! - `DB_TEST_PG_OPTIONS` adds server options when the server starts, such
//!   as `-c log_statement=ddl`.
//! - Shared by every test process: a lock file serialises start-up, and each
//!   test process holds a shared lock on `users.lock` while it lives. A small
//!   detached reaper (a fork of the process that started it) stops the server
//!   after `DB_TEST_PG_IDLE_SECS` (default 600) without users.
//!
//! # Who may reach the server
//!
//! The cluster trusts every connection on its socket, as superuser (and a
//! superuser can run programs with `COPY ... TO PROGRAM`). So only its owner
//! may reach the socket:
//!
//! - The socket and data directories belong to the server user (we, or as
//!   root the unprivileged user the server runs as) with mode 0700, and the
//!   socket itself is 0700 (`unix_socket_permissions`). Root still connects,
//!   as root bypasses file permissions.
//! - Every directory is checked before use, with `symlink_metadata` (a
//!   symbolic link is refused, never followed): owner, mode, type. One that
//!   another user could have prepared (wrong owner, open mode, a link) is an
//!   error that says what is wrong and how to fix it, never silently used.
//! - Modes and owners are changed only through a descriptor opened with
//!   `O_NOFOLLOW` (`fchmod`/`fchown`), and only on what we just created.
//! - The reaper drops root for the server user, and signals a pid only after
//!   checking that it is the postmaster of this data directory: a live
//!   `postgres` process of the server user whose working directory is the
//!   data directory. It stops the server holding the start lock and waits
//!   until it is gone, so a process arriving meanwhile waits, then starts a
//!   new server, instead of reaching one that is shutting down (`57P03`).

use std::ffi::{CStr, CString};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The port number only names the socket file; nothing listens on TCP.
pub(crate) const PORT: u16 = 5432;

/// Names the cluster directory (`pg16-v2`). Bumped when the layout or its
/// rules change, so that a new db-test never adopts, or fights over, a server
/// that an older one started under other rules (version 1 had a world-writable
/// socket and a shell reaper that used `flock(1)`).
const LAYOUT_VERSION: u32 = 2;

/// A running embedded server.
#[derive(Debug, Clone)]
pub(crate) struct Embedded {
    pub(crate) socket_dir: PathBuf,
    pub(crate) data_dir: PathBuf,
    /// Whether this process started it (false: reused a running one).
    pub(crate) started_here: bool,
}

struct Layout {
    bin: PathBuf,
    root: PathBuf,
    data: PathBuf,
    socket: PathBuf,
    /// When we are root: the unprivileged user (uid, gid) the server runs as.
    run_as: Option<(u32, u32)>,
}

impl Layout {
    /// The user (uid, gid) that owns the server's directories and processes.
    fn server_user(&self) -> (u32, u32) {
        self.run_as.unwrap_or_else(|| (euid(), egid()))
    }

    /// The socket directory: the server user's alone.
    fn socket_rule(&self) -> DirRule {
        DirRule::private("socket directory", self.server_user())
    }

    /// The data directory: the server user's alone.
    fn data_rule(&self, what: &'static str) -> DirRule {
        DirRule::private(what, self.server_user())
    }
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

fn egid() -> u32 {
    // SAFETY: getegid has no preconditions.
    unsafe { libc::getegid() }
}

const SERVER_BINARIES: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

fn has_server_binaries(dir: &Path) -> bool {
    SERVER_BINARIES.iter().all(|b| dir.join(b).is_file())
}

/// Finds a directory holding `initdb`, `pg_ctl` and `postgres`.
fn find_bin_dir() -> Result<PathBuf, String> {
    search_bin_dir(
        std::env::var_os("DB_TEST_PG_BIN").filter(|v| !v.is_empty()),
        std::env::var_os("PATH"),
        Path::new("/usr/lib/postgresql"),
    )
}

/// The search behind [`find_bin_dir`]: `explicit` (`DB_TEST_PG_BIN`) if
/// given, and only it; otherwise `pg_config --bindir` (the first `pg_config`
/// on `path`), the directories of `path`, then `versions/*/bin`, newest
/// major version first.
fn search_bin_dir(
    explicit: Option<std::ffi::OsString>,
    path: Option<std::ffi::OsString>,
    versions: &Path,
) -> Result<PathBuf, String> {
    if let Some(dir) = explicit {
        let dir = PathBuf::from(dir);
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        let missing: Vec<&str> = SERVER_BINARIES
            .into_iter()
            .filter(|b| !dir.join(b).is_file())
            .collect();
        return Err(format!(
            "db-test: DB_TEST_PG_BIN={} does not hold the PostgreSQL server binaries \
             (missing: {}). Fix: point DB_TEST_PG_BIN at the bin directory of a PostgreSQL \
             installation (the output of `pg_config --bindir`, e.g. /usr/lib/postgresql/16/bin), \
             or unset it to search pg_config, PATH and /usr/lib/postgresql/*/bin.",
            dir.display(),
            missing.join(", ")
        ));
    }
    let mut searched = Vec::new();
    let path_dirs: Vec<PathBuf> = path
        .as_deref()
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    match path_dirs
        .iter()
        .map(|d| d.join("pg_config"))
        .find(|p| p.is_file())
    {
        Some(pg_config) => match Command::new(&pg_config)
            .arg("--bindir")
            .stderr(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if has_server_binaries(&dir) {
                    return Ok(dir);
                }
                searched.push(format!("pg_config --bindir ({})", dir.display()));
            }
            _ => searched.push(format!("{} --bindir (failed)", pg_config.display())),
        },
        None => searched.push("pg_config --bindir (no pg_config on PATH)".into()),
    }
    if let Some(dir) = path_dirs.iter().find(|d| has_server_binaries(d)) {
        return Ok(dir.clone());
    }
    searched.push("PATH".into());
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir(versions)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    found.sort_by_key(|v| std::cmp::Reverse(v.0));
    if let Some((_, dir)) = found.into_iter().find(|(_, d)| has_server_binaries(d)) {
        return Ok(dir);
    }
    searched.push(format!("{}/*/bin", versions.display()));
    Err(format!(
        "db-test: DATABASE_URL is not set, so db-test wants to start an embedded PostgreSQL, \
         but found no PostgreSQL server binaries (initdb, pg_ctl, postgres). Searched: {}. \
         Fix: install PostgreSQL (e.g. `apt-get install postgresql`, `brew install postgresql`), \
         or point DB_TEST_PG_BIN at its bin directory, or set DATABASE_URL to a running server.",
        searched.join(", ")
    ))
}

fn major_version(bin: &Path) -> Result<String, String> {
    let out = Command::new(bin.join("postgres"))
        .arg("--version")
        .output()
        .map_err(|e| {
            format!(
                "db-test: cannot run {}: {e}",
                bin.join("postgres").display()
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "postgres (PostgreSQL) 15.4 (Debian ...)"
    text.split_whitespace()
        .find_map(|w| {
            w.split('.')
                .next()
                .filter(|m| m.chars().all(|c| c.is_ascii_digit()) && !m.is_empty())
        })
        .map(str::to_owned)
        .ok_or_else(|| format!("db-test: cannot parse `postgres --version` output: {text}"))
}

/// The unprivileged user to run the server as, when we are root.
fn unprivileged_user() -> (u32, u32) {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let find = |name: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
    };
    find("postgres")
        .or_else(|| find("nobody"))
        .unwrap_or((65534, 65534))
}

/// `name (uid N)` for messages, or `uid N` for a uid without a name.
fn user_label(uid: u32) -> String {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
    });
    match name {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// What a directory of the embedded server must look like.
#[derive(Debug, Clone, Copy)]
struct DirRule {
    /// What to call it in messages, such as "socket directory".
    what: &'static str,
    /// The owner (uid, gid) it must have, and gets when db-test creates it.
    owner: (u32, u32),
    /// Its mode when db-test creates it.
    mode: u32,
    /// Permission bits it must not have.
    forbidden: u32,
    /// The server user must be able to pass through it (as root).
    traverse: bool,
}

impl DirRule {
    /// Only `owner` may enter it: mode 0700, nothing for group and others.
    fn private(what: &'static str, owner: (u32, u32)) -> DirRule {
        DirRule {
            what,
            owner,
            mode: 0o700,
            forbidden: 0o077,
            traverse: false,
        }
    }

    /// Ours and writable by nobody else; as root (`traverse`), 0755 so that
    /// the unprivileged server user can pass through to its own directories.
    fn ours(what: &'static str, traverse: bool) -> DirRule {
        DirRule {
            what,
            owner: (euid(), egid()),
            mode: if traverse { 0o755 } else { 0o700 },
            forbidden: 0o022,
            traverse,
        }
    }
}

/// Checks, without following a symbolic link, that `path` is a directory
/// owned by `rule.owner` without any of the `rule.forbidden` mode bits.
/// The error says what is wrong, with which path, and how to fix it.
fn check_dir(path: &Path, rule: &DirRule) -> Result<(), String> {
    let meta = fs::symlink_metadata(path).map_err(|e| {
        format!(
            "db-test: cannot inspect the embedded PostgreSQL's {} {}: {e}",
            rule.what,
            path.display()
        )
    })?;
    let mut wrong = Vec::new();
    if meta.file_type().is_symlink() {
        let target = fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".into());
        wrong.push(format!("a symbolic link (to {target})"));
    } else if !meta.is_dir() {
        wrong.push("not a directory".to_string());
    } else {
        if meta.uid() != rule.owner.0 {
            wrong.push(format!(
                "owned by {}, not by {}",
                user_label(meta.uid()),
                user_label(rule.owner.0)
            ));
        }
        let mode = meta.mode() & 0o7777;
        if mode & rule.forbidden != 0 {
            wrong.push(format!(
                "mode {mode:04o}, which lets other users {} it",
                if mode & rule.forbidden & 0o022 != 0 {
                    "write into"
                } else {
                    "look into"
                }
            ));
        }
    }
    if wrong.is_empty() {
        return Ok(());
    }
    Err(format!(
        "db-test: refusing to use {} as the embedded PostgreSQL's {}: it is {}. The embedded \
         server lets whoever reaches its socket in as superuser, so db-test only uses a {} that \
         is a real directory (not a symbolic link), owned by {}, with mode {:04o} or stricter; \
         this one may have been prepared by another local user to get into the server. \
         Fix: look at it (`ls -ld {}`); if you did not make it so, remove it (`rm -rf {}`) and \
         run again, or set DB_TEST_DATA_DIR to a directory of your own.",
        path.display(),
        rule.what,
        wrong.join(" and "),
        rule.what,
        user_label(rule.owner.0),
        0o777 & !rule.forbidden,
        path.display(),
        path.display(),
    ))
}

/// Creates the directory `path` as `rule` says unless it exists, then checks
/// it with [`check_dir`].
///
/// Mode and owner are only ever changed through a descriptor opened with
/// `O_NOFOLLOW` (never through a symbolic link), and only on a directory that
/// the effective user owns: the one just created, or one that an earlier run
/// created as root and did not get to hand over to the server user.
fn ensure_dir(path: &Path, rule: &DirRule) -> Result<(), String> {
    let created = match DirBuilder::new().mode(rule.mode).create(path) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
        Err(e) => {
            return Err(format!(
                "db-test: cannot create the embedded PostgreSQL's {} {}: {e}",
                rule.what,
                path.display()
            ));
        }
    };
    if let Ok(meta) = fs::symlink_metadata(path) {
        let mode = meta.mode() & 0o7777;
        // `is_dir` of symlink_metadata is false for a symbolic link.
        let ours = meta.is_dir() && meta.uid() == euid() && (created || mode & rule.forbidden == 0);
        let new_mode = if created {
            // The umask may have taken bits off (or there may be a default ACL).
            Some(rule.mode)
        } else if rule.traverse && mode & 0o011 != 0o011 {
            Some(mode | 0o011)
        } else {
            None
        };
        if ours && (created || new_mode.is_some() || meta.uid() != rule.owner.0) {
            adopt(path, &meta, new_mode, rule)?;
        }
    }
    check_dir(path, rule)
}

/// Sets the mode and owner of a directory we own, through a descriptor
/// opened without following links, after checking that it is still the
/// directory `before` describes.
fn adopt(
    path: &Path,
    before: &fs::Metadata,
    mode: Option<u32>,
    rule: &DirRule,
) -> Result<(), String> {
    let fail = |e: std::io::Error| {
        format!(
            "db-test: cannot set up the embedded PostgreSQL's {} {}: {e}",
            rule.what,
            path.display()
        )
    };
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(fail)?;
    let now = dir.metadata().map_err(fail)?;
    if (now.dev(), now.ino(), now.uid()) != (before.dev(), before.ino(), before.uid()) {
        return Err(fail(std::io::Error::other(
            "it was replaced while db-test was setting it up",
        )));
    }
    if let Some(mode) = mode {
        dir.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(fail)?;
    }
    if now.uid() != rule.owner.0 {
        std::os::unix::fs::fchown(&dir, Some(rule.owner.0), Some(rule.owner.1)).map_err(fail)?;
    }
    Ok(())
}

/// The directory that holds everything of the embedded server. It must be
/// ours and writable by nobody else, since db-test keeps its lock files and
/// the cluster in it. A symbolic link that we (or root) made, to keep the
/// cache elsewhere, is followed; one that another user made is refused.
fn ensure_base(base: &Path, traverse: bool) -> Result<(), String> {
    let rule = DirRule::ours("base directory (DB_TEST_DATA_DIR or its default)", traverse);
    if let Ok(link) = fs::symlink_metadata(base)
        && link.file_type().is_symlink()
    {
        if link.uid() != euid() && link.uid() != 0 {
            return check_dir(base, &rule);
        }
        let target = fs::canonicalize(base).map_err(|e| {
            format!(
                "db-test: cannot follow {} (DB_TEST_DATA_DIR or the cache directory): {e}",
                base.display()
            )
        })?;
        return ensure_dir(&target, &rule);
    }
    if let Some(parent) = base.parent() {
        let _ = fs::create_dir_all(parent);
    }
    ensure_dir(base, &rule)
}

/// Opens (creating it 0600) a lock or log file in a directory checked by
/// [`ensure_dir`], never through a symbolic link.
fn open_private_file(path: &Path, append: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(!append)
        .append(append)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// The binaries and their major version, remembered in `base/bin.cache`
/// keyed by `DB_TEST_PG_BIN` and `PATH`: finding them spawns `pg_config`
/// and `postgres --version`, 10-20 ms that every nextest process would pay.
fn binaries(base: &Path) -> Result<(PathBuf, String), String> {
    let key = format!(
        "{}|{}",
        std::env::var("DB_TEST_PG_BIN").unwrap_or_default(),
        std::env::var("PATH").unwrap_or_default()
    );
    let key = short_hash(key.as_bytes());
    let cache = base.join("bin.cache");
    if let Ok(text) = fs::read_to_string(&cache) {
        let lines: Vec<&str> = text.lines().collect();
        if let [k, bin, major] = lines[..] {
            let bin = PathBuf::from(bin);
            if k == key && bin.join("postgres").is_file() && bin.join("initdb").is_file() {
                return Ok((bin, major.to_string()));
            }
        }
    }
    let bin = find_bin_dir()?;
    let major = major_version(&bin)?;
    let _ = fs::write(&cache, format!("{key}\n{}\n{major}\n", bin.display()));
    Ok((bin, major))
}

/// Where everything lives. Creates and checks the base directory (it holds
/// the binaries cache), not the others.
fn layout() -> Result<Layout, String> {
    let uid = euid();
    let base = if let Some(dir) = std::env::var_os("DB_TEST_DATA_DIR") {
        PathBuf::from(dir)
    } else if uid == 0 {
        PathBuf::from("/var/tmp/db-test-root")
    } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(dir).join("db-test")
    } else if let Some(home) = std::env::var_os("HOME") {
        PathBuf::from(home).join(".cache/db-test")
    } else {
        PathBuf::from(format!("/tmp/db-test-{uid}"))
    };
    let run_as = (uid == 0).then(unprivileged_user);
    ensure_base(&base, run_as.is_some())?;
    let (bin, major) = binaries(&base)?;
    let root = base.join(format!("pg{major}-v{LAYOUT_VERSION}"));
    // Socket paths are limited to 107 bytes: keep the directory short, and
    // distinct per data directory. Its name is predictable, so it is checked
    // before every use (see `ensure_dir`).
    let tag = short_hash(root.to_string_lossy().as_bytes());
    let socket = PathBuf::from(format!("/tmp/dbt-{uid}-{}", &tag[..8]));
    Ok(Layout {
        bin,
        data: root.join("data"),
        root,
        socket,
        run_as,
    })
}

pub(crate) fn short_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn command(layout: &Layout, program: &str) -> Command {
    let mut cmd = Command::new(layout.bin.join(program));
    cmd.current_dir(&layout.root).stdin(Stdio::null());
    if let Some((uid, gid)) = layout.run_as {
        cmd.uid(uid).gid(gid);
        // pg_ctl and initdb look at HOME only for .pgpass-like files; keep it harmless.
        cmd.env("HOME", &layout.root);
    }
    cmd
}

fn server_running(layout: &Layout) -> bool {
    ServerId::new(layout).is_some_and(|id| id.running_pid().is_some())
        && layout.socket.join(format!(".s.PGSQL.{PORT}")).exists()
}

/// Held for the life of the process: tells the reaper the server is in use.
static USERS_LOCK: OnceLock<File> = OnceLock::new();

/// Starts the embedded server, or finds the one already running. Blocking.
pub(crate) fn ensure_started() -> Result<Embedded, String> {
    let layout = layout()?;
    ensure_dir(
        &layout.root,
        &DirRule::ours("cluster directory", layout.run_as.is_some()),
    )?;
    let open = |name: &str| {
        open_private_file(&layout.root.join(name), false).map_err(|e| {
            format!(
                "db-test: cannot open lock file {}: {e}",
                layout.root.join(name).display()
            )
        })
    };
    // Announce ourselves as a user before anything else, so the reaper never
    // stops a server that we are about to use.
    if USERS_LOCK.get().is_none() {
        let users = open("users.lock")?;
        flock(&users, libc::LOCK_SH)
            .map_err(|e| format!("db-test: cannot lock users.lock: {e}"))?;
        let _ = USERS_LOCK.set(users);
    }
    let start_lock = open("start.lock")?;
    flock(&start_lock, libc::LOCK_EX)
        .map_err(|e| format!("db-test: cannot lock start.lock: {e}"))?;

    // Never connect through, nor start a server in, a directory that another
    // user could have prepared.
    ensure_dir(&layout.socket, &layout.socket_rule())?;
    if server_running(&layout) {
        check_dir(&layout.data, &layout.data_rule("data directory"))?;
        ensure_reaper(&layout);
        return Ok(Embedded {
            socket_dir: layout.socket.clone(),
            data_dir: layout.data.clone(),
            started_here: false,
        });
    }

    let t0 = Instant::now();
    if !layout.data.join("PG_VERSION").exists() {
        init_cluster(&layout)?;
    }
    check_dir(&layout.data, &layout.data_rule("data directory"))?;
    let _ = fs::remove_file(layout.socket.join(format!(".s.PGSQL.{PORT}.lock")));

    // The server (as root: the server user) appends to the log.
    let log = layout.root.join("server.log");
    let log_file = open_private_file(&log, true)
        .map_err(|e| format!("db-test: cannot open {}: {e}", log.display()))?;
    let (uid, gid) = layout.server_user();
    if log_file.metadata().is_ok_and(|m| m.uid() != uid) {
        std::os::unix::fs::fchown(&log_file, Some(uid), Some(gid))
            .map_err(|e| format!("db-test: cannot hand {} to uid {uid}: {e}", log.display()))?;
    }
    drop(log_file);
    let options = format!(
        "-k {} -p {PORT} -c listen_addresses='' -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=300 -c shared_buffers=128MB \
         -c unix_socket_permissions=0700 {}",
        layout.socket.display(),
        std::env::var("DB_TEST_PG_OPTIONS").unwrap_or_default()
    );
    let out = command(&layout, "pg_ctl")
        .args(["start", "-w", "-t", "60", "-s", "-D"])
        .arg(&layout.data)
        .arg("-l")
        .arg(&log)
        .arg("-o")
        .arg(&options)
        .output()
        .map_err(|e| format!("db-test: cannot run pg_ctl: {e}"))?;
    if !out.status.success() {
        let tail = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = tail
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(format!(
            "db-test: the embedded PostgreSQL failed to start (data in {}).\npg_ctl said: {}{}\nserver log (last lines):\n{}",
            layout.data.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail.join("\n")
        ));
    }
    tracing::info!(
        data_dir = %layout.data.display(),
        socket_dir = %layout.socket.display(),
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "db-test: embedded PostgreSQL started"
    );
    ensure_reaper(&layout);
    Ok(Embedded {
        socket_dir: layout.socket.clone(),
        data_dir: layout.data.clone(),
        started_here: true,
    })
}

fn init_cluster(layout: &Layout) -> Result<(), String> {
    // initdb into a scratch directory and rename, so a killed initdb never
    // leaves a half-made cluster under the real name.
    let scratch = layout.root.join("data.init");
    // remove_dir_all does not follow symbolic links.
    let _ = fs::remove_dir_all(&scratch);
    let _ = fs::remove_dir_all(&layout.data);
    ensure_dir(&scratch, &layout.data_rule("new data directory"))?;
    let out = command(layout, "initdb")
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "-D",
        ])
        .arg(&scratch)
        .output()
        .map_err(|e| format!("db-test: cannot run initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "db-test: initdb failed for the embedded PostgreSQL in {}:\n{}{}",
            scratch.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    fs::rename(&scratch, &layout.data)
        .map_err(|e| format!("db-test: cannot move the new cluster into place: {e}"))?;
    Ok(())
}

/// Whether this system lets db-test check that a pid is its postmaster.
/// Elsewhere no reaper is started (nothing is ever signalled), and the server
/// runs until it is stopped by hand.
const CAN_VERIFY: bool = cfg!(any(target_os = "linux", target_os = "macos"));

/// What recognises our postmaster, prepared up front: the reaper uses it in
/// a forked child, where it must not allocate.
struct ServerId {
    /// `data/postmaster.pid`.
    pid_file: CString,
    /// The server user.
    uid: u32,
    /// The data directory, canonical: the postmaster's working directory.
    data: Vec<u8>,
}

impl ServerId {
    /// `None` while there is no data directory.
    fn new(layout: &Layout) -> Option<ServerId> {
        let data = fs::canonicalize(&layout.data).ok()?;
        Some(ServerId {
            pid_file: CString::new(layout.data.join("postmaster.pid").as_os_str().as_bytes())
                .ok()?,
            uid: layout.server_user().0,
            data: data.as_os_str().as_bytes().to_vec(),
        })
    }

    /// The pid that `postmaster.pid` names, if that process verifiably is our
    /// postmaster: the file is the server user's, so anything could be written
    /// in it. Allocation-free.
    fn running_pid(&self) -> Option<libc::pid_t> {
        let mut buf = [0u8; 256];
        let pid = parse_pid(read_into(&self.pid_file, &mut buf)?)?;
        is_our_postmaster(pid, self.uid, &self.data).then_some(pid)
    }
}

/// A decimal number of at most 18 digits, nothing else.
fn parse_number(text: &[u8]) -> Option<i64> {
    if text.is_empty() || text.len() > 18 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(text.iter().fold(0, |n, &d| n * 10 + i64::from(d - b'0')))
}

/// The first line of `postmaster.pid` as a pid. 0, 1 and negative numbers
/// (which `kill` takes for process groups, or for every process) are refused.
fn parse_pid(text: &[u8]) -> Option<libc::pid_t> {
    let pid = parse_number(text.split(|&b| b == b'\n').next()?.trim_ascii())?;
    (pid > 1 && pid <= i64::from(libc::pid_t::MAX)).then_some(pid as libc::pid_t)
}

fn errno() -> Option<i32> {
    std::io::Error::last_os_error().raw_os_error()
}

/// Reads the start of a file (up to `buf.len()` bytes) without allocating
/// and without following a symbolic link.
fn read_into<'a>(path: &CStr, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    // SAFETY: plain system calls on a NUL-terminated path and our own buffer.
    unsafe {
        let fd = libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        );
        if fd < 0 {
            return None;
        }
        let mut n = 0;
        while n < buf.len() {
            let r = libc::read(fd, buf[n..].as_mut_ptr().cast(), buf.len() - n);
            if r < 0 && errno() == Some(libc::EINTR) {
                continue;
            }
            if r <= 0 {
                break;
            }
            n += r as usize;
        }
        libc::close(fd);
        Some(&buf[..n])
    }
}

fn basename(path: &[u8]) -> &[u8] {
    path.rsplit(|&b| b == b'/').next().unwrap_or(path)
}

/// `/proc/<pid>/<leaf>`, built in `buf` without allocating.
#[cfg(target_os = "linux")]
fn proc_path<'a>(buf: &'a mut [u8; 64], pid: libc::pid_t, leaf: &[u8]) -> &'a CStr {
    let mut digits = [0u8; 12];
    let mut n = pid.unsigned_abs();
    let mut d = digits.len();
    loop {
        d -= 1;
        digits[d] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut len = 0;
    for part in [&b"/proc/"[..], &digits[d..], b"/", leaf] {
        let take = part.len().min(buf.len() - 1 - len);
        buf[len..len + take].copy_from_slice(&part[..take]);
        len += take;
    }
    buf[len] = 0;
    CStr::from_bytes_until_nul(&buf[..=len]).unwrap_or(c"/proc/0/x")
}

/// The target of a symbolic link, without allocating.
#[cfg(target_os = "linux")]
fn readlink_into<'a>(path: &CStr, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    // SAFETY: readlink writes at most buf.len() bytes into our buffer.
    let n = unsafe { libc::readlink(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0 && (n as usize) < buf.len()).then(|| &buf[..n as usize])
}

/// Whether `pid` is the postmaster of the cluster in `data`, run by `uid`:
/// both its real and effective uid are `uid`; its executable is `postgres`
/// and so is its `argv[0]` (its children rewrite theirs to `postgres: ...`);
/// its working directory is the data directory (the postmaster works there).
/// Allocation-free.
#[cfg(target_os = "linux")]
fn is_our_postmaster(pid: libc::pid_t, uid: u32, data: &[u8]) -> bool {
    let mut path = [0u8; 64];
    let mut buf = [0u8; 4096];
    let Some(status) = read_into(proc_path(&mut path, pid, b"status"), &mut buf) else {
        return false;
    };
    let Some(uids) = status
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"Uid:"))
    else {
        return false;
    };
    let mut uids = uids
        .split(u8::is_ascii_whitespace)
        .filter(|s| !s.is_empty())
        .map(|s| parse_number(s).and_then(|n| u32::try_from(n).ok()));
    if uids.next() != Some(Some(uid)) || uids.next() != Some(Some(uid)) {
        return false;
    }
    let Some(cmdline) = read_into(proc_path(&mut path, pid, b"cmdline"), &mut buf) else {
        return false;
    };
    if basename(cmdline.split(|&b| b == 0).next().unwrap_or_default()) != b"postgres" {
        return false;
    }
    let Some(exe) = readlink_into(proc_path(&mut path, pid, b"exe"), &mut buf) else {
        return false;
    };
    // A binary replaced by a package upgrade while it runs.
    let exe = exe.strip_suffix(b" (deleted)").unwrap_or(exe);
    if basename(exe) != b"postgres" {
        return false;
    }
    readlink_into(proc_path(&mut path, pid, b"cwd"), &mut buf) == Some(data)
}

/// As on Linux, from `proc_pidinfo`: the postmaster is a `postgres` process
/// of `uid` whose parent is not one (its children keep the name on macOS),
/// and whose working directory is the data directory.
#[cfg(target_os = "macos")]
fn is_our_postmaster(pid: libc::pid_t, uid: u32, data: &[u8]) -> bool {
    fn info<T>(pid: libc::pid_t, flavor: libc::c_int) -> Option<T> {
        // SAFETY: proc_pidinfo fills at most `size` bytes of a zeroed plain C struct.
        unsafe {
            let mut out: T = std::mem::zeroed();
            let size = std::mem::size_of::<T>() as libc::c_int;
            let n = libc::proc_pidinfo(pid, flavor, 0, (&mut out as *mut T).cast(), size);
            (n == size).then_some(out)
        }
    }
    fn cstr_bytes(raw: &[u8]) -> &[u8] {
        &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())]
    }
    let is_postgres = |p: &libc::proc_bsdinfo| {
        // SAFETY: c_char and u8 have the same layout.
        let comm: &[u8] =
            unsafe { std::slice::from_raw_parts(p.pbi_comm.as_ptr().cast(), p.pbi_comm.len()) };
        cstr_bytes(comm) == b"postgres" && p.pbi_uid == uid && p.pbi_ruid == uid
    };
    let Some(me) = info::<libc::proc_bsdinfo>(pid, libc::PROC_PIDTBSDINFO) else {
        return false;
    };
    if !is_postgres(&me) {
        return false;
    }
    if info::<libc::proc_bsdinfo>(me.pbi_ppid as libc::pid_t, libc::PROC_PIDTBSDINFO)
        .is_some_and(|parent| is_postgres(&parent))
    {
        return false;
    }
    let mut exe = [0u8; libc::PROC_PIDPATHINFO_MAXSIZE as usize];
    // SAFETY: proc_pidpath writes at most exe.len() bytes.
    let n = unsafe { libc::proc_pidpath(pid, exe.as_mut_ptr().cast(), exe.len() as u32) };
    if n <= 0 || basename(&exe[..n as usize]) != b"postgres" {
        return false;
    }
    let Some(paths) = info::<libc::proc_vnodepathinfo>(pid, libc::PROC_PIDVNODEPATHINFO) else {
        return false;
    };
    let cwd = &paths.pvi_cdir.vip_path;
    // SAFETY: a [[c_char; 32]; 32] is 1024 contiguous bytes.
    let cwd: &[u8] = unsafe { std::slice::from_raw_parts(cwd.as_ptr().cast(), 32 * 32) };
    cstr_bytes(cwd) == data
}

/// Elsewhere only liveness can be checked; no reaper runs there (see
/// [`CAN_VERIFY`]), so this answer never leads to a signal.
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn is_our_postmaster(pid: libc::pid_t, _uid: u32, _data: &[u8]) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Stops our server (fast shutdown, then immediate after a minute) and waits
/// until it is gone. Only a pid verified by [`ServerId::running_pid`] right
/// before is ever signalled. Returns whether the server is gone.
/// Allocation-free (the reaper calls it).
fn stop_server(id: &ServerId) -> bool {
    let Some(pid) = id.running_pid() else {
        return true;
    };
    for (signal, wait) in [
        (libc::SIGINT, Duration::from_secs(60)),
        (libc::SIGQUIT, Duration::from_secs(10)),
    ] {
        if id.running_pid() != Some(pid) {
            return true;
        }
        // SAFETY: `pid` was verified to be our postmaster just above.
        unsafe { libc::kill(pid, signal) };
        let t0 = Instant::now();
        while t0.elapsed() < wait {
            // postmaster.pid goes once every child is gone and shared memory
            // is released; an unreaped (zombie) postmaster no longer verifies.
            if id.running_pid() != Some(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    false
}

/// Everything the reaper needs, prepared before the fork.
struct ReaperPlan {
    id: ServerId,
    root: CString,
    users: CString,
    start: CString,
    /// As root: the server user (uid, gid) the reaper becomes.
    drop_to: Option<(u32, u32)>,
    idle: Duration,
    /// `reaper.lock`, locked: the reaper holds it for its whole life, which
    /// is how others know it is alive (no pid file to trust).
    lock_fd: RawFd,
}

/// Starts the idle reaper unless one is alive. Called with `start.lock`
/// held; the reaper takes it too before it exits, so a running server always
/// has a reaper.
fn ensure_reaper(layout: &Layout) {
    if let Err(e) = try_ensure_reaper(layout) {
        tracing::warn!(
            "db-test: cannot start the idle reaper of the embedded PostgreSQL ({e}); the server \
             keeps running until stopped by hand (`pg_ctl stop -D {}`)",
            layout.data.display()
        );
    }
}

fn try_ensure_reaper(layout: &Layout) -> Result<(), String> {
    if !CAN_VERIFY {
        return Ok(());
    }
    let path = layout.root.join("reaper.lock");
    let lock = open_private_file(&path, false)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match flock(&lock, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
        Err(e) => return Err(format!("cannot lock {}: {e}", path.display())),
    }
    let cstring =
        |p: PathBuf| CString::new(p.into_os_string().into_vec()).map_err(|e| e.to_string());
    let idle = std::env::var("DB_TEST_PG_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let plan = ReaperPlan {
        id: ServerId::new(layout).ok_or("no data directory")?,
        root: cstring(layout.root.clone())?,
        users: cstring(layout.root.join("users.lock"))?,
        start: cstring(layout.root.join("start.lock"))?,
        drop_to: layout.run_as,
        idle: Duration::from_secs(idle),
        lock_fd: lock.as_raw_fd(),
    };
    spawn_reaper(&plan)
    // `lock` closes here; the reaper's copy keeps the lock.
}

/// Forks twice: the grandchild runs [`reaper_main`] in a session of its own
/// (so it outlives the test process and its process group), adopted by init
/// once the child exits (so it is nobody's zombie).
fn spawn_reaper(plan: &ReaperPlan) -> Result<(), String> {
    // SAFETY: the children make only async-signal-safe calls until they exit
    // (see reaper_main).
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
        0 => unsafe {
            libc::setsid();
            if libc::fork() == 0 {
                reaper_main(plan);
            }
            libc::_exit(0)
        },
        child => {
            let mut status = 0;
            // SAFETY: waits for the child just forked.
            while unsafe { libc::waitpid(child, &mut status, 0) } == -1
                && errno() == Some(libc::EINTR)
            {}
            Ok(())
        }
    }
}

/// Closes every descriptor from `first` on.
///
/// # Safety
/// Only for a process that owns all its descriptors (the reaper).
unsafe fn close_from(first: libc::c_int) {
    #[cfg(target_os = "linux")]
    // SAFETY: close_range has no memory effects.
    if unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0,
        )
    } == 0
    {
        return;
    }
    // SAFETY: plain system calls.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
            && limit.rlim_cur != libc::RLIM_INFINITY
        {
            limit.rlim_cur.min(1 << 20) as libc::c_int
        } else {
            1 << 16
        };
        for fd in first..max {
            libc::close(fd);
        }
    }
}

/// The reaper process: sets itself up, then [`reap`]s.
///
/// It runs in a fork of a multi-threaded test process, so it makes only
/// plain system calls and never allocates: another thread may have held the
/// allocator's (or any other) lock at the time of the fork.
fn reaper_main(plan: &ReaperPlan) -> ! {
    // SAFETY: plain system calls on descriptors and NUL-terminated paths we own.
    unsafe {
        #[cfg(target_os = "linux")]
        libc::prctl(libc::PR_SET_NAME, c"db-test-reaper".as_ptr());
        // Handlers of the test process (tokio's) would write to its descriptors.
        for signal in 1..65 {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // Keep only reaper.lock (as fd 3): an inherited users.lock would count
        // as a user forever, an inherited pipe would keep a test harness
        // waiting for output, an inherited socket would keep a connection.
        if plan.lock_fd != 3 && libc::dup2(plan.lock_fd, 3) != 3 {
            libc::_exit(1);
        }
        close_from(4);
        for fd in 0..3 {
            libc::close(fd);
        }
        if libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) == 0 {
            libc::dup2(0, 1);
            libc::dup2(0, 2);
        }
        libc::chdir(plan.root.as_ptr());
        let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
        let users = libc::open(plan.users.as_ptr(), flags);
        let start = libc::open(plan.start.as_ptr(), flags);
        if users < 0 || start < 0 {
            libc::_exit(1);
        }
        // As root: become the server user. The lock files stay open; the
        // server's files and processes are that user's.
        if let Some((uid, gid)) = plan.drop_to
            && (libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
                || libc::getuid() != uid
                || libc::geteuid() != uid)
        {
            libc::_exit(1);
        }
        reap(plan, users, start)
    }
}

/// Waits until the server is gone (then exits), or has had no user for
/// `plan.idle` (then stops it and exits).
fn reap(plan: &ReaperPlan, users: libc::c_int, start: libc::c_int) -> ! {
    let lock = |fd: libc::c_int, op: libc::c_int| loop {
        // SAFETY: flock on a descriptor we opened.
        if unsafe { libc::flock(fd, op) } == 0 {
            return true;
        }
        if errno() != Some(libc::EINTR) {
            return false;
        }
    };
    // Releases reaper.lock before the start lock (released at exit), so a
    // process that gets the start lock next sees no reaper and starts one.
    let exit = || -> ! {
        // SAFETY: closing our own descriptor, then exiting without running
        // the test process's exit handlers.
        unsafe {
            libc::close(3);
            libc::_exit(0)
        }
    };
    let mut idle_since: Option<Instant> = None;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        if plan.id.running_pid().is_none() {
            // Stopped, killed, or not ours. Decide under the start lock, so
            // that a process starting a server meanwhile either finds this
            // reaper gone, or is found by it.
            lock(start, libc::LOCK_EX);
            if plan.id.running_pid().is_none() {
                exit();
            }
            lock(start, libc::LOCK_UN);
            idle_since = None;
            continue;
        }
        if !lock(users, libc::LOCK_EX | libc::LOCK_NB) {
            idle_since = None;
            continue;
        }
        lock(users, libc::LOCK_UN);
        if idle_since.get_or_insert_with(Instant::now).elapsed() < plan.idle {
            continue;
        }
        lock(start, libc::LOCK_EX);
        // Still no user: stop the server and wait until it is gone, holding
        // both locks, so that a process arriving meanwhile waits and then
        // starts a new server instead of reaching one that is shutting down.
        if lock(users, libc::LOCK_EX | libc::LOCK_NB) {
            stop_server(&plan.id);
            exit();
        }
        lock(start, libc::LOCK_UN);
        idle_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh, empty directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("db-test-bins-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A directory that looks like a PostgreSQL bin directory to the search
    /// (it only checks that the three files exist).
    fn bin_dir(dir: &Path) -> PathBuf {
        fs::create_dir_all(dir).unwrap();
        for b in SERVER_BINARIES {
            fs::write(dir.join(b), "").unwrap();
        }
        dir.to_path_buf()
    }

    #[test]
    fn nothing_found_says_what_was_searched_and_how_to_fix_it() {
        let root = scratch("none");
        let empty_path = root.join("path");
        fs::create_dir_all(&empty_path).unwrap();
        let err = search_bin_dir(
            None,
            Some(empty_path.clone().into_os_string()),
            &root.join("no-such-dir"),
        )
        .unwrap_err();
        assert!(err.contains("DATABASE_URL is not set"), "{err}");
        assert!(err.contains("no pg_config on PATH"), "{err}");
        assert!(err.contains("PATH"), "{err}");
        assert!(
            err.contains(&format!("{}/*/bin", root.join("no-such-dir").display())),
            "{err}"
        );
        assert!(err.contains("install PostgreSQL"), "{err}");
        assert!(err.contains("DB_TEST_PG_BIN"), "{err}");
        assert!(err.contains("set DATABASE_URL"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_explicit_dir_without_binaries_is_an_error_not_a_fallback() {
        let root = scratch("explicit");
        let half = root.join("half");
        fs::create_dir_all(&half).unwrap();
        fs::write(half.join("postgres"), "").unwrap();
        // A usable directory on PATH must not be picked instead.
        let on_path = bin_dir(&root.join("on-path"));
        let err = search_bin_dir(
            Some(half.clone().into_os_string()),
            Some(on_path.into_os_string()),
            &root,
        )
        .unwrap_err();
        assert!(
            err.contains(&format!("DB_TEST_PG_BIN={}", half.display())),
            "{err}"
        );
        assert!(err.contains("missing: initdb, pg_ctl"), "{err}");
        let good = bin_dir(&root.join("good"));
        assert_eq!(
            search_bin_dir(Some(good.clone().into_os_string()), None, &root).unwrap(),
            good
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn path_comes_before_versioned_dirs_and_the_newest_version_wins() {
        let root = scratch("order");
        let versions = root.join("postgresql");
        bin_dir(&versions.join("9.6/bin"));
        let v17 = bin_dir(&versions.join("17/bin"));
        bin_dir(&versions.join("16/bin"));
        fs::create_dir_all(versions.join("not-a-version/bin")).unwrap();
        let empty = root.join("empty");
        fs::create_dir_all(&empty).unwrap();
        assert_eq!(
            search_bin_dir(None, Some(empty.clone().into_os_string()), &versions).unwrap(),
            v17
        );
        let on_path = bin_dir(&root.join("on-path"));
        let path = std::env::join_paths([empty, on_path.clone()]).unwrap();
        assert_eq!(
            search_bin_dir(None, Some(path), &versions).unwrap(),
            on_path
        );
        fs::remove_dir_all(&root).unwrap();
    }
}

#[cfg(test)]
mod safety_tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fresh, empty directory for one test (0755, ours).
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("db-test-safety-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn me() -> (u32, u32) {
        (euid(), egid())
    }

    #[test]
    fn a_socket_dir_open_to_other_users_is_refused_not_fixed() {
        let root = scratch("open");
        let dir = root.join("dbt-sock");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure_dir(&dir, &DirRule::private("socket directory", me())).unwrap_err();
        assert!(
            err.contains(&format!("refusing to use {}", dir.display())),
            "{err}"
        );
        assert!(err.contains("socket directory"), "{err}");
        assert!(
            err.contains("mode 0777, which lets other users write into it"),
            "{err}"
        );
        assert!(err.contains("with mode 0700 or stricter"), "{err}");
        assert!(err.contains(&format!("rm -rf {}", dir.display())), "{err}");
        assert_eq!(
            mode(&dir),
            0o777,
            "a dir we did not create is never chmod-ed"
        );
        // Readable by others is refused as well.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let err = ensure_dir(&dir, &DirRule::private("socket directory", me())).unwrap_err();
        assert!(
            err.contains("mode 0755, which lets other users look into it"),
            "{err}"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_symlink_is_refused_and_never_followed_by_chmod_or_chown() {
        let root = scratch("link");
        let target = root.join("elsewhere");
        fs::create_dir(&target).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o700)).unwrap();
        let link = root.join("dbt-sock");
        symlink(&target, &link).unwrap();
        // As root the rule hands the directory to another user: the old code
        // chowned (and chmod-ed) through the link.
        let owner = if euid() == 0 { (65534, 65534) } else { me() };
        for rule in [
            DirRule::private("socket directory", owner),
            DirRule::ours("cluster directory", true),
        ] {
            let err = ensure_dir(&link, &rule).unwrap_err();
            assert!(
                err.contains(&format!("a symbolic link (to {})", target.display())),
                "{err}"
            );
            let meta = fs::metadata(&target).unwrap();
            assert_eq!(meta.uid(), euid(), "chown followed the link");
            assert_eq!(meta.mode() & 0o7777, 0o700, "chmod followed the link");
        }
        // A symbolic link in place of the data directory is refused too.
        let err = check_dir(&link, &DirRule::private("data directory", me())).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_dir_owned_by_another_user_is_refused() {
        let (dir, cleanup) = if euid() == 0 {
            let root = scratch("owner");
            let dir = root.join("dbt-sock");
            fs::create_dir(&dir).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
            (dir, Some(root))
        } else {
            // Not root: a directory of root's stands in for another user's.
            (PathBuf::from("/"), None)
        };
        let err = ensure_dir(&dir, &DirRule::private("socket directory", me())).unwrap_err();
        let other = fs::symlink_metadata(&dir).unwrap().uid();
        assert!(
            err.contains(&format!(
                "owned by {}, not by {}",
                user_label(other),
                user_label(euid())
            )),
            "{err}"
        );
        if let Some(root) = cleanup {
            fs::remove_dir_all(&root).unwrap();
        }
    }

    #[test]
    fn a_new_dir_is_private_and_as_root_belongs_to_the_server_user() {
        let root = scratch("new");
        let owner = if euid() == 0 { (65534, 65534) } else { me() };
        let rule = DirRule::private("socket directory", owner);
        let dir = root.join("dbt-sock");
        ensure_dir(&dir, &rule).unwrap();
        let meta = fs::symlink_metadata(&dir).unwrap();
        assert_eq!((meta.uid(), meta.gid()), owner);
        assert_eq!(meta.mode() & 0o7777, 0o700);
        // Once made, it is used as it is.
        ensure_dir(&dir, &rule).unwrap();
        if euid() == 0 {
            // A directory an earlier run made (as root) and did not hand
            // over is adopted; the same with an open mode is refused.
            let left = root.join("left");
            fs::create_dir(&left).unwrap();
            fs::set_permissions(&left, fs::Permissions::from_mode(0o700)).unwrap();
            ensure_dir(&left, &rule).unwrap();
            assert_eq!(fs::symlink_metadata(&left).unwrap().uid(), 65534);
            let open = root.join("open");
            fs::create_dir(&open).unwrap();
            fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
            assert!(ensure_dir(&open, &rule).is_err());
            assert_eq!(fs::symlink_metadata(&open).unwrap().uid(), 0);
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_base_dir_link_made_by_another_user_is_refused() {
        if euid() != 0 {
            return; // only root can make a link owned by someone else
        }
        let root = scratch("base");
        let target = root.join("target");
        fs::create_dir(&target).unwrap();
        let link = root.join("db-test-root");
        symlink(&target, &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
        let err = ensure_base(&link, true).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        // The same link made by us (a user keeping the cache elsewhere) is followed.
        std::os::unix::fs::lchown(&link, Some(0), Some(0)).unwrap();
        ensure_base(&link, true).unwrap();
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn pids_that_kill_would_misread_are_refused() {
        for bad in [
            &b""[..],
            b"0",
            b"1",
            b"-1",
            b"-4242",
            b"abc",
            b" \n4242",
            b"99999999999999999999",
            b"2147483648",
        ] {
            assert_eq!(parse_pid(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_pid(b"4242\n/some/data\n123\n"), Some(4242));
        assert_eq!(parse_pid(b" 4242 \n"), Some(4242));
    }

    /// A child process and its pid, killed when dropped.
    struct Proc(std::process::Child);
    impl Drop for Proc {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn id(data: &Path, uid: u32) -> ServerId {
        ServerId {
            pid_file: CString::new(data.join("postmaster.pid").into_os_string().into_vec())
                .unwrap(),
            uid,
            data: fs::canonicalize(data).unwrap().into_os_string().into_vec(),
        }
    }

    #[test]
    fn a_pid_file_naming_another_process_is_never_signalled() {
        if !CAN_VERIFY {
            return;
        }
        let root = scratch("pid");
        let data = root.join("data");
        fs::create_dir(&data).unwrap();
        let sleep = ["/bin/sleep", "/usr/bin/sleep"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .expect("a sleep binary");
        // A program that calls itself postgres and works in the data
        // directory, but is not a postgres binary.
        let impostor = Proc(
            Command::new(sleep)
                .arg0("postgres")
                .arg("30")
                .current_dir(&data)
                .spawn()
                .unwrap(),
        );
        // A postgres binary (a copy of sleep named so) elsewhere.
        let fake = root.join("bin/postgres");
        fs::create_dir_all(fake.parent().unwrap()).unwrap();
        fs::copy(sleep, &fake).unwrap();
        let elsewhere = Proc(
            Command::new(&fake)
                .arg("30")
                .current_dir(&root)
                .spawn()
                .unwrap(),
        );
        let write_pid = |pid: u32| {
            fs::write(
                data.join("postmaster.pid"),
                format!("{pid}\n{}\n", data.display()),
            )
            .unwrap()
        };
        let me = id(&data, euid());
        for p in [&impostor, &elsewhere] {
            write_pid(p.0.id());
            assert_eq!(me.running_pid(), None);
            assert!(stop_server(&me), "nothing of ours to stop");
        }
        // The test process itself, and pid 1 (never ours).
        write_pid(std::process::id());
        assert_eq!(me.running_pid(), None);
        write_pid(1);
        assert_eq!(me.running_pid(), None);
        let mut impostor = impostor;
        let mut elsewhere = elsewhere;
        assert!(
            impostor.0.try_wait().unwrap().is_none(),
            "the impostor was signalled"
        );
        assert!(
            elsewhere.0.try_wait().unwrap().is_none(),
            "the process elsewhere was signalled"
        );

        // The control: the same binary in the data directory is taken for
        // the postmaster (unless it runs as another user), and stopped.
        let mut ours = Proc(
            Command::new(&fake)
                .arg("30")
                .current_dir(&data)
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(Duration::from_millis(50));
        if ours.0.try_wait().unwrap().is_some() {
            return; // a multi-call sleep (busybox) does not run as `postgres`
        }
        write_pid(ours.0.id());
        assert_eq!(id(&data, euid() + 1).running_pid(), None, "another user's");
        assert_eq!(me.running_pid(), Some(ours.0.id() as libc::pid_t));
        assert!(stop_server(&me));
        let status = ours.0.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGINT));
        fs::remove_dir_all(&root).unwrap();
    }
}
