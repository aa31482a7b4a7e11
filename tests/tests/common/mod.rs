//! Helpers shared by the tests that run this test binary again as child
//! processes (`pid_namespaces`, `outdated_templates`, `clone_limit`,
//! `hardening`, `adversarial`, `flavors`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

/// This test binary, running the tests whose names contain `filter`, with
/// libtest's output captured.
pub fn child(filter: &str, threads: usize) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([filter, "--nocapture", &format!("--test-threads={threads}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// This test binary, running exactly `tests`, one at a time and in order
/// (libtest sorts them by name), with their output captured.
pub fn children(tests: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(tests)
        .args(["--exact", "--nocapture", "--test-threads=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs a child to its end (a hang past `limit` is a failure); returns its
/// output and its text, whether it passed or not.
pub fn run_until(mut cmd: Command, limit: Duration) -> (Output, String) {
    let out = wait(cmd.spawn().unwrap(), limit);
    let all = text(&out);
    (out, all)
}

/// Waits for a child, killing it if it runs longer than `limit` (a hang,
/// not a speed check).
pub fn wait(mut c: Child, limit: Duration) -> Output {
    let t0 = Instant::now();
    loop {
        if c.try_wait().unwrap().is_some() {
            return c.wait_with_output().unwrap();
        }
        if t0.elapsed() > limit {
            let _ = c.kill();
            let out = c.wait_with_output().unwrap();
            panic!("child hung for {limit:?}:\n{}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child's stdout and stderr.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a child to its end and asserts that it passed; returns its output.
pub fn run_ok(mut cmd: Command, what: &str) -> String {
    let out = wait(cmd.spawn().unwrap(), Duration::from_secs(300));
    let all = text(&out);
    assert!(out.status.success(), "{what} failed:\n{all}");
    all
}

/// The word after `marker` on the first line holding it.
pub fn word_after(text: &str, marker: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.find(marker).and_then(|i| {
            l[i + marker.len()..]
                .split_whitespace()
                .next()
                .map(str::to_string)
        })
    })
}

/// Reads a child's stdout until a line holds `marker`; returns the word
/// after it. The rest of stdout is drained in the background, so the child
/// never blocks on a full pipe.
pub fn wait_for_marker(c: &mut Child, marker: &str) -> Option<String> {
    let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
    let found = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| word_after(&l, marker));
    std::thread::spawn(move || lines.for_each(drop));
    found
}

/// A token unique to this run.
pub fn unique_token(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{what}{}x{nanos}", std::process::id())
}

/// Runs `f` on db-test's runtime with a connection to the server's own
/// database (`db_test::server_url()`), which it only reads from here.
pub fn with_server<T>(f: impl AsyncFnOnce(&mut PgConnection) -> T) -> T {
    let url = db_test::server_url().expect("server URL");
    db_test::runtime().block_on(async move {
        let mut conn = PgConnection::connect(&url).await.unwrap();
        let v = f(&mut conn).await;
        let _ = conn.close().await;
        v
    })
}

/// Whether a database exists.
pub async fn exists(conn: &mut PgConnection, name: &str) -> bool {
    sqlx::query_scalar("SELECT exists(SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(conn)
        .await
        .unwrap()
}

/// SQLite worker threads of this process (`sqlx-sqlite-worker-*`) that are
/// running in every one of `looks` looks, 50 ms apart: a statement still
/// running (an idle worker sleeps on its channel). By their `/proc` paths.
#[allow(dead_code)]
pub fn sqlite_workers_always_running(looks: usize) -> Vec<String> {
    let running = || -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| {
                let path = task.ok()?.path();
                let comm = std::fs::read_to_string(path.join("comm")).ok()?;
                if !comm.starts_with("sqlx-sqlite") {
                    return None;
                }
                let stat = std::fs::read_to_string(path.join("stat")).ok()?;
                // The state follows the parenthesised name.
                let state = stat.rsplit(") ").next()?.chars().next()?;
                (state == 'R').then(|| path.display().to_string())
            })
            .collect()
    };
    let mut always: Option<Vec<String>> = None;
    for _ in 0..looks {
        let now = running();
        always = Some(match always {
            None => now,
            Some(before) => before.into_iter().filter(|p| now.contains(p)).collect(),
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    always.unwrap_or_default()
}
