//! Recognising our postmaster before it is ever signalled ([`ServerId`]:
//! `postmaster.pid`, then `/proc` on Linux or `proc_pidinfo` on macOS), and
//! stopping it ([`stop_server`]). Allocation-free: the reaper uses it in a
//! forked child.

use std::ffi::{CStr, CString};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use super::dirs::Layout;
use super::errno;

/// Whether this system lets db-test check that a pid is its postmaster.
/// Elsewhere no reaper is started (nothing is ever signalled), and the server
/// runs until it is stopped by hand.
pub(super) const CAN_VERIFY: bool = cfg!(any(target_os = "linux", target_os = "macos"));

/// What recognises our postmaster, prepared up front: the reaper uses it in
/// a forked child, where it must not allocate.
pub(super) struct ServerId {
    /// `data/postmaster.pid`.
    pid_file: CString,
    /// The server user.
    uid: u32,
    /// The data directory, canonical: the postmaster's working directory.
    data: Vec<u8>,
}

impl ServerId {
    /// `None` while there is no data directory.
    pub(super) fn new(layout: &Layout) -> Option<ServerId> {
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
    pub(super) fn running_pid(&self) -> Option<libc::pid_t> {
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

/// Reads the start of a file (up to `buf.len()` bytes) without allocating
/// and without following a symbolic link.
pub(crate) fn read_into<'a>(path: &CStr, buf: &'a mut [u8]) -> Option<&'a [u8]> {
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
pub(super) fn stop_server(id: &ServerId) -> bool {
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

#[cfg(test)]
mod safety_tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::super::euid;

    /// A fresh, empty directory for one test (0755, ours).
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("db-test-safety-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        dir
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
