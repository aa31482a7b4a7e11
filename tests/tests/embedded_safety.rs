//! The embedded server's safety, across processes: only its owner can reach
//! it, the idle reaper runs unprivileged, and an idle stop never leaves a
//! process arriving meanwhile with a server that is shutting down.
//!
//! Each test starts its own server, in a data directory of its own
//! (`DB_TEST_DATA_DIR`), from child processes that run this same test binary
//! (the `child_*` tests below, which pass when run on their own). It only
//! ever stops that server.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use db_test::{TestContext, db_test};
use sqlx::{Connection, PgConnection};

/// Prints which server instance answered, and where its socket is.
#[db_test]
async fn child_probe(ctx: TestContext) {
    let started: String = sqlx::query_scalar("SELECT pg_postmaster_start_time()::text")
        .fetch_one(&ctx.db())
        .await
        .unwrap();
    println!("SERVER_STARTED {started}");
    if let Some(socket) = ctx.connect_options().get_socket() {
        println!("SOCKET_DIR {}", socket.display());
    }
}

/// Leaves a backend busy for 6 s after this process is gone: a `COPY ... TO
/// PROGRAM 'sleep 6'` waits for its program and does not notice the client
/// leave, nor a shutdown request, until then.
#[db_test]
async fn child_busy_backend(ctx: TestContext) {
    if std::env::var("DB_TEST_BUSY_BACKEND").is_err() {
        return;
    }
    let mut conn = PgConnection::connect_with(&ctx.connect_options())
        .await
        .unwrap();
    let copy = sqlx::raw_sql("COPY (SELECT 1) TO PROGRAM 'sleep 6'").execute(&mut conn);
    let still_running = tokio::time::timeout(Duration::from_millis(500), copy).await;
    assert!(still_running.is_err(), "the COPY returned early");
    println!("BUSY");
}

/// Runs one `child_*` test against the embedded server in `data_dir`.
fn child(test: &str, data_dir: &Path, idle_secs: u32) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env_remove("DATABASE_URL")
        .env("DB_TEST_DATA_DIR", data_dir)
        .env("DB_TEST_PG_IDLE_SECS", idle_secs.to_string())
        // No .env with a DATABASE_URL up from here.
        .current_dir(data_dir.parent().unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if test == "child_busy_backend" {
        cmd.env("DB_TEST_BUSY_BACKEND", "1");
    }
    let mut c = cmd.spawn().unwrap();
    let t0 = Instant::now();
    while c.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = c.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{test} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The rest of the line after `marker` in a child's output.
fn after(out: &Output, marker: &str) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.find(marker)
                .map(|i| l[i + marker.len()..].trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {marker} in the child's output"))
}

/// A data directory of the test's own, removed (after stopping its server)
/// when dropped.
struct OwnServer {
    dir: PathBuf,
}

impl OwnServer {
    fn new(name: &str) -> OwnServer {
        let dir = std::env::temp_dir().join(format!("db-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        OwnServer { dir }
    }

    /// `pg<major>-v<layout>`: the only directory in the data dir.
    fn root(&self) -> PathBuf {
        std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("data").exists())
            .expect("a cluster directory")
    }

    fn pid_file(&self) -> PathBuf {
        self.root().join("data/postmaster.pid")
    }

    /// Waits up to `limit` for the idle reaper to stop the server.
    fn wait_stopped(&self, limit: Duration) -> bool {
        let t0 = Instant::now();
        while self.pid_file().exists() {
            if t0.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        // Our own server only: stop it if the reaper did not.
        if self.dir.exists()
            && !self.wait_stopped(Duration::from_secs(30))
            && let Ok(pid) = std::fs::read_to_string(self.pid_file())
        {
            let _ = Command::new("kill")
                .args(["-INT", pid.lines().next().unwrap_or("").trim()])
                .status();
            self.wait_stopped(Duration::from_secs(30));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Our effective uid, without libc: the owner of a file we create.
fn my_uid(dir: &Path) -> u32 {
    let probe = dir.join("uid-probe");
    std::fs::write(&probe, "").unwrap();
    let uid = std::fs::metadata(&probe).unwrap().uid();
    std::fs::remove_file(&probe).unwrap();
    uid
}

#[test]
fn only_the_server_user_can_reach_the_socket_and_the_reaper_is_unprivileged() {
    let server = OwnServer::new("private");
    let out = child("child_probe", &server.dir, 2);
    let socket_dir = PathBuf::from(after(&out, "SOCKET_DIR"));
    let root = server.root();
    let data = root.join("data");
    let me = my_uid(&server.dir);

    // The server user: us, or as root an unprivileged one.
    let owner = std::fs::symlink_metadata(&data).unwrap().uid();
    if me == 0 {
        assert_ne!(owner, 0, "as root the server runs as an unprivileged user");
    } else {
        assert_eq!(owner, me);
    }
    for (what, path, private) in [
        ("data directory", &data, 0o077),
        ("socket directory", &socket_dir, 0o077),
        ("socket", &socket_dir.join(".s.PGSQL.5432"), 0o077),
        ("cluster directory", &root, 0o022),
    ] {
        let meta = std::fs::symlink_metadata(path).unwrap();
        let mode = meta.mode() & 0o7777;
        assert!(!meta.file_type().is_symlink(), "{what} {path:?} is a link");
        assert_eq!(mode & private, 0, "{what} {path:?} has mode {mode:o}");
        if what != "cluster directory" {
            assert_eq!(
                meta.uid(),
                owner,
                "{what} {path:?} belongs to uid {}",
                meta.uid()
            );
        }
    }
    assert_eq!(
        std::fs::symlink_metadata(&socket_dir).unwrap().mode() & 0o777,
        0o700
    );

    // The reaper (Linux names it) runs as the server user, never as root,
    // and holds nothing of the test process (no pipe, no socket).
    if cfg!(target_os = "linux") {
        let reapers: Vec<PathBuf> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == "db-test-reaper")
                    && std::fs::read_link(p.join("cwd")).is_ok_and(|c| c == root)
            })
            .collect();
        assert_eq!(reapers.len(), 1, "one reaper for this server: {reapers:?}");
        let status = std::fs::read_to_string(reapers[0].join("status")).unwrap();
        let uids: Vec<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .unwrap()
            .split_whitespace()
            .map(|u| u.parse().unwrap())
            .collect();
        assert_eq!(uids, vec![owner; 4], "the reaper's uids");
        let fds: Vec<PathBuf> = std::fs::read_dir(reapers[0].join("fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .collect();
        assert!(
            fds.iter()
                .all(|f| f == Path::new("/dev/null") || f.starts_with(&root)),
            "the reaper holds only /dev/null and its lock files: {fds:?}"
        );
    }
    assert!(
        server.wait_stopped(Duration::from_secs(30)),
        "the idle server did not stop by itself"
    );
}

#[test]
fn an_idle_stop_waits_until_the_server_is_gone_so_a_new_process_starts_a_new_one() {
    let server = OwnServer::new("idle-stop");
    let first = after(&child("child_probe", &server.dir, 1), "SERVER_STARTED");
    // A backend that keeps the server shutting down for a few seconds once
    // the reaper asks it to stop.
    child("child_busy_backend", &server.dir, 1);
    let t0 = Instant::now();
    let stopping = loop {
        let status = std::fs::read_to_string(server.pid_file()).unwrap_or_default();
        if status
            .lines()
            .nth(7)
            .is_some_and(|l| l.trim() == "stopping")
        {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(stopping, "the idle server was not being stopped");
    // Arriving while it shuts down: this process must wait for the stop,
    // then start a new server (before, it connected to the old one and
    // failed with 57P03 "the database system is shutting down").
    let second = after(&child("child_probe", &server.dir, 1), "SERVER_STARTED");
    assert_ne!(first, second, "a new server answered");
}
