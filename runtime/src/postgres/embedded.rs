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

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

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

struct Layout {
    bin: PathBuf,
    root: PathBuf,
    data: PathBuf,
    socket: PathBuf,
    run_as: Option<(u32, u32)>,
}

fn flock(file: &File, op: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
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
    let _ = fs::create_dir_all(base);
    let _ = fs::write(&cache, format!("{key}\n{}\n{major}\n", bin.display()));
    Ok((bin, major))
}

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
    let (bin, major) = binaries(&base)?;
    let root = base.join(format!("pg{major}"));
    // Socket paths are limited to 107 bytes: keep the directory short, and
    // distinct per data directory.
    let tag = short_hash(root.to_string_lossy().as_bytes());
    let socket = PathBuf::from(format!("/tmp/dbt-{uid}-{}", &tag[..8]));
    let run_as = (uid == 0).then(unprivileged_user);
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

fn chown(path: &Path, run_as: Option<(u32, u32)>) -> Result<(), String> {
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| format!("db-test: cannot chown {}: {e}", path.display()))?;
    }
    Ok(())
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
    fs::create_dir_all(&layout.root)
        .map_err(|e| format!("db-test: cannot create {}: {e}", layout.root.display()))?;
    if layout.run_as.is_some() {
        // The unprivileged server user must be able to reach its data directory.
        for dir in [
            layout.root.as_path(),
            layout.root.parent().unwrap_or(&layout.root),
        ] {
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
        }
    }
    let open = |name: &str| {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(layout.root.join(name))
            .map_err(|e| {
                format!(
                    "db-test: cannot open lock file in {}: {e}",
                    layout.root.display()
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

    if server_running(&layout) {
        ensure_reaper(&layout);
        return Ok(Embedded {
            socket_dir: layout.socket.clone(),
            data_dir: layout.data.clone(),
            started_here: false,
        });
    }

    let t0 = std::time::Instant::now();
    if !layout.data.join("PG_VERSION").exists() {
        init_cluster(&layout)?;
    }
    fs::create_dir_all(&layout.socket).map_err(|e| {
        format!(
            "db-test: cannot create socket dir {}: {e}",
            layout.socket.display()
        )
    })?;
    chown(&layout.socket, layout.run_as)?;
    let _ = fs::set_permissions(&layout.socket, fs::Permissions::from_mode(0o700));
    let _ = fs::remove_file(layout.socket.join(format!(".s.PGSQL.{PORT}.lock")));

    let log = layout.root.join("server.log");
    if let Ok(f) = OpenOptions::new().create(true).append(true).open(&log) {
        let _ = chown(&log, layout.run_as);
        drop(f);
    }
    let options = format!(
        "-k {} -p {PORT} -c listen_addresses='' -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=300 -c shared_buffers=128MB \
         -c unix_socket_permissions=0777 {}",
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
    let _ = fs::remove_dir_all(&scratch);
    let _ = fs::remove_dir_all(&layout.data);
    fs::create_dir_all(&scratch)
        .map_err(|e| format!("db-test: cannot create {}: {e}", scratch.display()))?;
    chown(&scratch, layout.run_as)?;
    let _ = fs::set_permissions(&scratch, fs::Permissions::from_mode(0o700));
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
