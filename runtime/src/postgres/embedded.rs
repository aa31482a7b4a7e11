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
//!   detached reaper stops the server after `DB_TEST_PG_IDLE_SECS` (default
//!   600) without users.
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

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

/// The port number only names the socket file; nothing listens on TCP.
pub(crate) const PORT: u16 = 5432;

/// Names the cluster directory (`pg16-v2`). Bumped when the layout or its
/// rules change, so that a new db-test never adopts, or fights over, a server
/// that an older one started under other rules (version 1 had a world-writable
/// socket).
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
    let rule = DirRule::ours("directory", traverse);
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
    let Ok(pid_file) = fs::read_to_string(layout.data.join("postmaster.pid")) else {
        return false;
    };
    let Some(pid) = pid_file
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    // A pid left by a killed server may since belong to another program.
    let is_postgres = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("postgres"))
        .unwrap_or(true); // no /proc (macOS): trust the pid
    alive && is_postgres && layout.socket.join(format!(".s.PGSQL.{PORT}")).exists()
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

/// Starts the idle reaper unless one is alive: a detached shell loop that
/// stops the server once no test process has held `users.lock` for the idle
/// period. It only ever stops the server in our own data directory.
fn ensure_reaper(layout: &Layout) {
    let pid_file = layout.root.join("reaper.pid");
    if let Some(pid) = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        // A live reaper has our argv; an exited one (even an unreaped zombie,
        // whose cmdline is empty) or a reused pid does not.
        let alive = match fs::read(format!("/proc/{pid}/cmdline")) {
            Ok(cmdline) => String::from_utf8_lossy(&cmdline).contains("db-test-reaper"),
            // SAFETY: signal 0 only checks that the process exists.
            Err(_) => !Path::new("/proc").exists() && unsafe { libc::kill(pid, 0) } == 0,
        };
        if alive {
            return;
        }
    }
    let idle: u64 = std::env::var("DB_TEST_PG_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let script = r#"
        root="$1"; idle_limit="$2"; data="$root/data"; idle=0
        while sleep 2; do
            pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null) || exit 0
            kill -0 "$pid" 2>/dev/null || exit 0
            if flock -n -x "$root/users.lock" true; then idle=$((idle + 2)); else idle=0; fi
            if [ "$idle" -ge "$idle_limit" ]; then
                flock -x "$root/start.lock" sh -c 'flock -n -x "$1/users.lock" true && kill -INT "$2"' _ "$root" "$pid"
                exit 0
            fi
        done
    "#;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .arg("db-test-reaper")
        .arg(&layout.root)
        .arg(idle.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; it detaches the reaper from our
    // process group so that it outlives this test process.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    if let Ok(mut child) = cmd.spawn() {
        let _ = fs::write(&pid_file, child.id().to_string());
        // Reap it in the background if it exits while we live; otherwise init adopts it.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
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
}
