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
//!   after `DB_TEST_PG_IDLE_SECS` (default 600) without users (test
//!   processes, or, on Linux, clients connected to its socket).
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
//!
//! # Where it lives
//!
//! - `mod.rs`: starting the server ([`ensure_started`]), `initdb`, and the
//!   small system-call helpers the other files share.
//! - `binaries.rs`: finding `initdb`, `pg_ctl` and `postgres`, and their
//!   major version.
//! - `dirs.rs`: where everything lives ([`Layout`]) and the rules every
//!   private directory must pass.
//! - `process.rs`: recognising our postmaster (via `/proc`) and stopping it.
//! - `reaper.rs`: the detached idle reaper.

mod binaries;
mod dirs;
pub(crate) mod process;
mod reaper;

use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use dirs::{DirRule, Layout, check_dir, ensure_dir, layout, open_private_file};
use process::ServerId;
use reaper::ensure_reaper;

/// The port number only names the socket file; nothing listens on TCP.
pub(crate) const PORT: u16 = 5432;

/// A running embedded server.
#[derive(Debug, Clone)]
pub(crate) struct Embedded {
    pub(crate) socket_dir: PathBuf,
    pub(crate) data_dir: PathBuf,
    /// Whether this process started it (false: reused a running one).
    pub(crate) started_here: bool,
}

/// `flock(2)`, retried on `EINTR` (also used by the embedded MariaDB).
pub(crate) fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
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

pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

fn egid() -> u32 {
    // SAFETY: getegid has no preconditions.
    unsafe { libc::getegid() }
}

pub(crate) fn errno() -> Option<i32> {
    std::io::Error::last_os_error().raw_os_error()
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
    // Byte-order collation (fast, the same on every machine), but a
    // character classification that knows UTF-8: under `--locale=C` alone,
    // `lower('É')`, `ILIKE` and `[[:alpha:]]` see only ASCII, unlike the
    // UTF-8 servers suites are written against. A system without a
    // `C.UTF-8` locale gets plain `C`.
    let initdb = |ctype: &[&str]| {
        command(layout, "initdb")
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .args(ctype)
            .args(["--no-sync", "-D"])
            .arg(&scratch)
            .output()
            .map_err(|e| format!("db-test: cannot run initdb: {e}"))
    };
    let mut out = initdb(&["--lc-ctype=C.UTF-8"])?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(&scratch);
        ensure_dir(&scratch, &layout.data_rule("new data directory"))?;
        out = initdb(&[])?;
    }
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
