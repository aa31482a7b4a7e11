//! The idle reaper: a detached process, forked from the process that
//! started the server, that stops the server once it has had no user for
//! `DB_TEST_PG_IDLE_SECS`, and exits when the server is gone. A user is a
//! test process (it holds a shared lock on `users.lock`) or, on Linux, a
//! client connected to the server's socket: one that reaches the server
//! through its URL (`server_url`, `DATABASE_URL`) takes no lock.

use std::ffi::CString;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::dirs::{Layout, open_private_file};
use super::process::{CAN_VERIFY, ServerId, stop_server};
use super::{PORT, errno, flock};
use crate::unix_clients::clients_connected;

/// Everything the reaper needs, prepared before the fork.
struct ReaperPlan {
    id: ServerId,
    root: CString,
    users: CString,
    start: CString,
    /// The server's socket, as the postmaster bound it (`-k` dir and `-p`).
    socket: CString,
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
pub(super) fn ensure_reaper(layout: &Layout) {
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
        socket: cstring(layout.socket.join(format!(".s.PGSQL.{PORT}")))?,
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
/// `plan.idle` (then stops it and exits). A user is a test process holding
/// `users.lock`, or a client connected to the server's socket (say through
/// the URL of `server_url`), which takes no lock.
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
        if clients_connected(&plan.socket) {
            idle_since = None;
            continue;
        }
        if idle_since.get_or_insert_with(Instant::now).elapsed() < plan.idle {
            continue;
        }
        lock(start, libc::LOCK_EX);
        // Still no user: stop the server and wait until it is gone, holding
        // both locks, so that a process arriving meanwhile waits and then
        // starts a new server instead of reaching one that is shutting down.
        // (A client that connects through the URL takes no lock: one that
        // connects between this check and the stop loses its connection.)
        if lock(users, libc::LOCK_EX | libc::LOCK_NB) {
            if !clients_connected(&plan.socket) {
                stop_server(&plan.id);
                exit();
            }
            lock(users, libc::LOCK_UN);
        }
        lock(start, libc::LOCK_UN);
        idle_since = None;
    }
}
