//! MySQL/MariaDB server choice, through child processes of this test binary
//! with a chosen environment: the embedded server when no URL is set, a
//! clear message when there are no server binaries, a quick clear error
//! for a wrong URL.
//!
//! `child_*` tests do their real work only under `DB_TEST_MYSQL_CHILD=1`.

mod common;

use std::process::Command;
use std::time::Duration;

use db_test::db_test;
use db_test::mysql::TestDb;

fn is_child() -> bool {
    std::env::var_os("DB_TEST_MYSQL_CHILD").is_some()
}

#[db_test(migrations = false)]
async fn child_reports_its_server(db: TestDb) {
    if !is_child() {
        return;
    }
    let (skip_networking, socket, doublewrite, tmpdir): (i64, String, i64, String) =
        sqlx::query_as("SELECT @@skip_networking, @@socket, @@innodb_doublewrite, @@tmpdir")
            .fetch_one(&db)
            .await
            .unwrap();
    println!("SERVER skip_networking={skip_networking} doublewrite={doublewrite} socket={socket}");
    println!("TMPDIR {tmpdir}");
}

/// The child test, with no URL for MySQL in its environment.
fn child_without_url() -> Command {
    let mut cmd = common::children(&["child_reports_its_server"]);
    cmd.env("DB_TEST_MYSQL_CHILD", "1")
        .env_remove("DB_TEST_MYSQL_URL")
        .env_remove("DATABASE_URL");
    cmd
}

#[test]
fn without_a_url_the_embedded_server_is_used() {
    let text = common::run_ok(child_without_url(), "embedded server child");
    assert!(
        text.contains("SERVER skip_networking=1 doublewrite=0 socket=/tmp/dbtm-"),
        "{text}"
    );
    // Its own tmpdir, not the shared /tmp: another server starting deletes
    // every `#sql*` file in its tmpdir (CI saw "Error on delete of
    // '/tmp/#sql-temptable-…'" in a schema read while a second server
    // started).
    let tmpdir = text
        .lines()
        .find_map(|l| l.strip_prefix("TMPDIR "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(tmpdir.ends_with("/tmp"), "{text}");
    assert!(!tmpdir.starts_with("/tmp"), "{text}");
}

#[test]
fn missing_server_binaries_say_what_was_searched_and_how_to_fix_it() {
    let mut cmd = child_without_url();
    cmd.env("DB_TEST_MYSQL_BIN", "/nonexistent")
        .env("PATH", "/nonexistent-bin");
    let (out, text) = common::run_until(cmd, Duration::from_secs(60));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("DB_TEST_MYSQL_BIN=/nonexistent"), "{text}");
    assert!(text.contains("apt-get install mariadb-server"), "{text}");
    assert!(text.contains("DB_TEST_MYSQL_URL"), "{text}");
}

#[test]
fn a_wrong_url_is_a_clear_error_not_a_hang() {
    for url in [
        // Nothing listens there: refused at once.
        "mysql://root@127.0.0.1:1/test",
        // Nothing answers there: the connect timeout ends it.
        "mysql://root@10.255.255.1:3306/test",
    ] {
        let mut cmd = child_without_url();
        cmd.env("DB_TEST_MYSQL_URL", url)
            .env("DB_TEST_CONNECT_TIMEOUT", "1s");
        let (out, text) = common::run_until(cmd, Duration::from_secs(60));
        assert!(!out.status.success(), "{text}");
        assert!(text.contains("cannot connect to mysql://root@"), "{text}");
    }
}

#[test]
fn a_database_url_of_another_database_names_both() {
    let mut cmd = child_without_url();
    cmd.env("DATABASE_URL", "postgres://postgres@localhost/app");
    let (out, text) = common::run_until(cmd, Duration::from_secs(60));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("PostgreSQL URL"), "{text}");
    assert!(text.contains("MySQL/MariaDB"), "{text}");
    assert!(text.contains("DB_TEST_MYSQL_URL"), "{text}");
}

#[test]
fn an_idle_embedded_server_stops() {
    // A server of its own (another data directory), with a short idle time.
    let dir = std::env::temp_dir().join(common::unique_token("dbtest-idle"));
    let mut cmd = child_without_url();
    cmd.env("DB_TEST_MYSQL_DATA_DIR", &dir)
        .env("DB_TEST_MYSQL_IDLE_SECS", "1");
    let text = common::run_ok(cmd, "a child on its own embedded server");
    let socket = common::word_after(&text, "socket=").expect("the child names its socket");
    assert!(socket.starts_with("/tmp/dbtm-"), "{text}");
    // No process uses it any more: the reaper stops it (a hang is a failure).
    let t0 = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the idle server still runs: {socket}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_embedded_server_whose_data_directory_is_deleted_stops() {
    // A server of its own, which would stay up for ten idle minutes.
    let dir = std::env::temp_dir().join(common::unique_token("dbtest-deleted"));
    let mut cmd = child_without_url();
    cmd.env("DB_TEST_MYSQL_DATA_DIR", &dir)
        .env("DB_TEST_MYSQL_IDLE_SECS", "600");
    let text = common::run_ok(cmd, "a child on its own embedded server");
    let socket = common::word_after(&text, "socket=").expect("the child names its socket");
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        "the server is up after its test: {socket}"
    );
    // Its data directory goes (by hand, `cargo clean`, a temporary
    // directory's cleanup): nothing could find the server any more, so its
    // reaper stops it rather than leave it running (a hang is a failure).
    std::fs::remove_dir_all(&dir).expect("remove the data directory");
    let t0 = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the server of a deleted data directory still runs: {socket}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
