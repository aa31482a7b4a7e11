//! Recognising our own server process (through `/proc`, allocation-free so
//! that a forked child may do it), stopping it, and the detached reaper that
//! stops it once neither a test process nor a client connected to its socket
//! has used it for the idle time.

use super::*;
use crate::postgres::embedded::process::read_into;
use crate::unix_clients::clients_connected;

/// What recognises our server, prepared up front: the reaper uses it in a
/// forked child, where it must not allocate.
pub(super) struct ServerId {
    pid_file: CString,
    uid: u32,
    /// The data directory, canonical: the server's working directory.
    data: Vec<u8>,
}

impl ServerId {
    pub(super) fn new(layout: &Layout) -> ServerId {
        let data = fs::canonicalize(&layout.data).unwrap_or_else(|_| layout.data.clone());
        ServerId {
            pid_file: CString::new(layout.pid_file().into_os_string().into_vec())
                .unwrap_or_default(),
            uid: euid(),
            data: data.into_os_string().into_vec(),
        }
    }

    /// The pid in the pid file, if that process verifiably is our server.
    pub(super) fn running_pid(&self) -> Option<libc::pid_t> {
        let mut buf = [0u8; 64];
        let text = read_into(&self.pid_file, &mut buf)?;
        let text = text.split(|&b| b == b'\n').next()?.trim_ascii();
        if text.is_empty() || text.len() > 9 || !text.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let pid = text.iter().fold(0i32, |n, &d| n * 10 + i32::from(d - b'0'));
        (pid > 1 && is_our_server(pid, self.uid, &self.data)).then_some(pid)
    }
}

/// `/proc/<pid>/<leaf>`, built in `buf` without allocating.
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

fn readlink_into<'a>(path: &CStr, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    // SAFETY: readlink writes at most buf.len() bytes into our buffer.
    let n = unsafe { libc::readlink(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0 && (n as usize) < buf.len()).then(|| &buf[..n as usize])
}

/// Whether `pid` is our server: a `mariadbd`/`mysqld` process of `uid`
/// whose working directory is the data directory (the server works there).
/// Allocation-free. Elsewhere than on Linux, never (no reaper runs there).
fn is_our_server(pid: libc::pid_t, uid: u32, data: &[u8]) -> bool {
    our_server(pid, uid, data) == Some(Data::Present)
}

/// Where a process that is our server (our user's `mariadbd`/`mysqld`)
/// runs: in `data`, or in `data` deleted under it. `None`: not our server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Data {
    Present,
    Deleted,
}

fn our_server(pid: libc::pid_t, uid: u32, data: &[u8]) -> Option<Data> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let mut path = [0u8; 64];
    let mut buf = [0u8; 4096];
    let status = read_into(proc_path(&mut path, pid, b"status"), &mut buf)?;
    let uid_line = status
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"Uid:"));
    let mut digits = [0u8; 12];
    let mut n = uid;
    let mut d = digits.len();
    loop {
        d -= 1;
        digits[d] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let first_uid = uid_line.and_then(|l| {
        l.split(u8::is_ascii_whitespace)
            .find(|s| !s.is_empty())
            .map(|s| s == &digits[d..])
    });
    if first_uid != Some(true) {
        return None;
    }
    let exe = readlink_into(proc_path(&mut path, pid, b"exe"), &mut buf)?;
    let exe = exe.strip_suffix(b" (deleted)").unwrap_or(exe);
    let base = exe.rsplit(|&b| b == b'/').next().unwrap_or(exe);
    if base != b"mariadbd" && base != b"mysqld" {
        return None;
    }
    let cwd = readlink_into(proc_path(&mut path, pid, b"cwd"), &mut buf)?;
    if cwd == data || cwd.strip_suffix(b"/") == Some(data) {
        Some(Data::Present)
    } else if cwd.strip_suffix(b" (deleted)") == Some(data) {
        Some(Data::Deleted)
    } else {
        None
    }
}

/// Stops our server (SIGTERM: a clean shutdown; SIGKILL after a minute) and
/// waits until it is gone. Allocation-free (the reaper calls it).
pub(super) fn stop_server(id: &ServerId) {
    let Some(pid) = id.running_pid() else {
        return;
    };
    for (signal, wait) in [
        (libc::SIGTERM, Duration::from_secs(60)),
        (libc::SIGKILL, Duration::from_secs(10)),
    ] {
        if id.running_pid() != Some(pid) {
            return;
        }
        // SAFETY: `pid` was verified to be our server just above.
        unsafe { libc::kill(pid, signal) };
        let t0 = Instant::now();
        while t0.elapsed() < wait {
            if id.running_pid() != Some(pid) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Stops `pid`, our server whose data directory was deleted (see [`reap`]):
/// SIGTERM, then SIGKILL after a minute. Allocation-free.
fn kill_deleted(pid: libc::pid_t, id: &ServerId) {
    for (signal, wait) in [
        (libc::SIGTERM, Duration::from_secs(60)),
        (libc::SIGKILL, Duration::from_secs(10)),
    ] {
        if our_server(pid, id.uid, &id.data) != Some(Data::Deleted) {
            return;
        }
        // SAFETY: `pid` was verified to be our server just above.
        unsafe { libc::kill(pid, signal) };
        let t0 = Instant::now();
        while t0.elapsed() < wait {
            if our_server(pid, id.uid, &id.data) != Some(Data::Deleted) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Everything the reaper needs, prepared before the fork.
struct ReaperPlan<'a> {
    id: &'a ServerId,
    root: CString,
    users: CString,
    start: CString,
    /// The server's socket (`--socket`).
    socket: CString,
    idle: Duration,
    /// `reaper.lock`, locked for the reaper's whole life.
    lock_fd: RawFd,
}

/// Starts the idle reaper unless one is alive. Called with `start.lock` held.
pub(super) fn ensure_reaper(layout: &Layout, id: &ServerId) {
    if let Err(e) = try_ensure_reaper(layout, id) {
        tracing::warn!(
            "db-test: cannot start the idle reaper of the embedded MySQL/MariaDB ({e}); the \
             server keeps running until stopped by hand (kill the pid in {})",
            layout.pid_file().display()
        );
    }
}

fn try_ensure_reaper(layout: &Layout, id: &ServerId) -> Result<(), String> {
    if !cfg!(target_os = "linux") {
        return Ok(());
    }
    let path = layout.root.join("reaper.lock");
    let lock =
        open_private_file(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match flock(&lock, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
        Err(e) => return Err(format!("cannot lock {}: {e}", path.display())),
    }
    let cstring =
        |p: PathBuf| CString::new(p.into_os_string().into_vec()).map_err(|e| e.to_string());
    let idle = std::env::var("DB_TEST_MYSQL_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let plan = ReaperPlan {
        id,
        root: cstring(layout.root.clone())?,
        users: cstring(layout.root.join("users.lock"))?,
        start: cstring(layout.root.join("start.lock"))?,
        socket: cstring(layout.socket())?,
        idle: Duration::from_secs(idle),
        lock_fd: lock.as_raw_fd(),
    };
    // SAFETY: the children make only async-signal-safe calls until they exit.
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", std::io::Error::last_os_error())),
        0 => unsafe {
            libc::setsid();
            if libc::fork() == 0 {
                reaper_main(&plan);
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
    // `lock` closes here; the reaper's copy keeps the lock.
}

/// The reaper process. It runs in a fork of a multi-threaded test process,
/// so it makes only plain system calls and never allocates.
fn reaper_main(plan: &ReaperPlan) -> ! {
    // SAFETY: plain system calls on descriptors and NUL-terminated paths we own.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, c"db-test-mreaper".as_ptr());
        for signal in 1..65 {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // Keep only reaper.lock (as fd 3): an inherited users.lock would count
        // as a user forever, an inherited pipe would keep a harness waiting.
        if plan.lock_fd != 3 && libc::dup2(plan.lock_fd, 3) != 3 {
            libc::_exit(1);
        }
        if libc::syscall(
            libc::SYS_close_range,
            4 as libc::c_uint,
            libc::c_uint::MAX,
            0,
        ) != 0
        {
            for fd in 4..65536 {
                libc::close(fd);
            }
        }
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
        reap(plan, users, start)
    }
}

/// Waits until the server is gone (then exits), or has had no user for
/// `plan.idle` (then stops it, holding the start lock, and exits). A user
/// is a test process holding `users.lock`, or a client connected to the
/// server's socket (say through the URL of `server_url`), which takes no
/// lock.
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
    let exit = || -> ! {
        // SAFETY: closing our own descriptor, then exiting without running
        // the test process's exit handlers.
        unsafe {
            libc::close(3);
            libc::_exit(0)
        }
    };
    let mut idle_since: Option<Instant> = None;
    // Read before the first sleep: the server answers already.
    let mut known: Option<libc::pid_t> = plan.id.running_pid();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let running = plan.id.running_pid();
        if running.is_some() {
            known = running;
        } else if let Some(pid) = known
            && our_server(pid, plan.id.uid, &plan.id.data) == Some(Data::Deleted)
        {
            // Its data directory was deleted under it (by hand, `cargo
            // clean`, a test's temporary directory): no process can find it
            // any more, and it would run forever.
            kill_deleted(pid, plan.id);
            exit();
        }
        if running.is_none() {
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
        if lock(users, libc::LOCK_EX | libc::LOCK_NB) {
            if !clients_connected(&plan.socket) {
                stop_server(plan.id);
                exit();
            }
            lock(users, libc::LOCK_UN);
        }
        lock(start, libc::LOCK_UN);
        idle_since = None;
    }
}
