//! Two shards on two "hosts" sharing one server: each shard runs in its own
//! PID namespace (`unshare --pid --fork --mount-proc`), as two CI machines or
//! two containers would, so their processes have the same pids and neither
//! sees the other's in `/proc`. Ownership of per-test databases must be
//! decided on the server: no shard may drop, or collide with, the other's
//! databases, and the leftovers of a killed run must still be removed.
//!
//! The parent tests run this test binary again as child processes, each
//! running the `child_*` tests below. Run on their own, the `child_*` tests
//! are ordinary tests that pass. The children reach the server through
//! `DATABASE_URL`: the embedded server's start-up is coordinated through
//! pids, which a PID namespace hides.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use db_test::{TestContext, db_test};
use sqlx::Connection;

/// Rounds (processes) per shard: every process start sweeps leftovers while
/// the other shard's databases are between claim and connect, or recycling.
const ROUNDS: usize = 4;
const TESTS_PER_ROUND: usize = 8;

macro_rules! child_shard_db {
    ($($name:ident),*) => {$(
        /// Database mode: commits on several connections, then checks that
        /// the database still holds exactly its own rows.
        #[db_test(isolation = "database")]
        async fn $name(pool: sqlx::PgPool) {
            let me = stringify!($name);
            for i in 0..3 {
                sqlx::query("INSERT INTO users (email) VALUES ($1)")
                    .bind(format!("{me}-{i}@shard.example.com"))
                    .execute(&pool)
                    .await
                    .unwrap();
                sqlx::query("SELECT pg_sleep(0.02)").execute(&pool).await.unwrap();
            }
            let mut a = pool.acquire().await.unwrap();
            let mut b = pool.acquire().await.unwrap();
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
                .fetch_one(&mut *a)
                .await
                .unwrap();
            let m: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email LIKE $1")
                .bind(format!("{me}-%"))
                .fetch_one(&mut *b)
                .await
                .unwrap();
            assert_eq!((n, m), (3, 3));
        }
    )*};
}
child_shard_db!(
    child_shard_db_1,
    child_shard_db_2,
    child_shard_db_3,
    child_shard_db_4,
    child_shard_db_5,
    child_shard_db_6,
    child_shard_db_7,
    child_shard_db_8
);

/// Holds its database until killed (with DB_TEST_HOLD_TOKEN set).
#[db_test(isolation = "database")]
async fn child_ns_hold_database(ctx: TestContext) {
    if std::env::var("DB_TEST_HOLD_TOKEN").is_ok() {
        println!("HOLDING_DB {}", ctx.database_name());
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    assert!(ctx.is_database_mode());
}

/// Terminates this process's owner connection (as a server restart or an
/// administrator would), with DB_TEST_KILL_OWNER set.
#[db_test]
async fn child_owner_1_killed(ctx: TestContext) {
    if std::env::var("DB_TEST_KILL_OWNER").is_err() {
        return;
    }
    let mut conn = sqlx::PgConnection::connect_with(&ctx.connect_options())
        .await
        .unwrap();
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(format!("db-test {} owner", std::process::id()))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(killed, 1);
    println!("KILLED_OWNER");
}

/// Then a database-mode test: by the time it has its database, its owner
/// lock is held again.
#[db_test(isolation = "database")]
async fn child_owner_2_database(ctx: TestContext) {
    let owner = owner_of(ctx.database_name()).expect("an owner id in the name");
    let mut conn = sqlx::PgConnection::connect_with(&ctx.connect_options())
        .await
        .unwrap();
    let held: bool = sqlx::query_scalar(OWNER_HELD_SQL)
        .bind(OWNER_LOCK)
        .bind(owner as i64)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(held, "owner lock of {} not held", ctx.database_name());
}

/// The first key of the owner lock (engine.rs `OWNER_LOCK`).
const OWNER_LOCK: i64 = 0x6462_7401;
const OWNER_HELD_SQL: &str = "SELECT exists(SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
     AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 2 AND granted)";

/// The owner id in a per-test database's name (`..._d<owner>_<n>`).
fn owner_of(database: &str) -> Option<u32> {
    database
        .rsplit_once("_d")
        .and_then(|(_, rest)| rest.split('_').next())
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
}

/// `cmd` in a PID namespace of its own, killed with it.
fn in_pid_namespace(cmd: &Command) -> Command {
    let mut ns = Command::new("unshare");
    ns.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env("DATABASE_URL", db_test::server_url().expect("server URL"))
        .env_remove("DB_TEST_HOLD_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ns
}

/// Why PID namespaces cannot be used here, if they cannot.
fn unshare_unavailable() -> Option<String> {
    match Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "sh",
            "-c",
        ])
        .arg("test $$ = 1")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`unshare --pid --fork --mount-proc` is not permitted here ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run `unshare`: {e}")),
    }
}

#[test]
fn two_shards_in_separate_pid_namespaces_share_one_server() {
    if let Some(why) = unshare_unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    // Each shard runs ROUNDS processes one after the other; in each
    // namespace they get the same pids as in the other.
    let shards: Vec<_> = (1..=2)
        .map(|shard| {
            std::thread::spawn(move || {
                let mut log = String::new();
                for round in 1..=ROUNDS {
                    let all = run_ok(
                        in_pid_namespace(&child("child_shard_db_", 4)),
                        &format!("shard {shard}, round {round}"),
                    );
                    assert!(
                        all.contains(&format!("test result: ok. {TESTS_PER_ROUND} passed")),
                        "shard {shard}, round {round}:\n{all}"
                    );
                    log.push_str(&all);
                }
                log
            })
        })
        .collect();
    for (i, shard) in shards.into_iter().enumerate() {
        match shard.join() {
            Ok(_) => eprintln!(
                "shard {}: {} database-mode tests passed",
                i + 1,
                ROUNDS * TESTS_PER_ROUND
            ),
            Err(e) => std::panic::resume_unwind(e),
        }
    }
}

#[test]
fn leftovers_of_a_run_killed_in_another_pid_namespace_are_removed() {
    if let Some(why) = unshare_unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    // A database-mode test killed mid-run, in a namespace of its own,
    // leaves its database behind...
    let mut hold = in_pid_namespace(&child("child_ns_hold_database", 1));
    hold.env("DB_TEST_HOLD_TOKEN", "1");
    let mut c = hold.spawn().unwrap();
    let killed_db = wait_for_marker(&mut c, "HOLDING_DB ").expect("child reached its database");
    c.kill().unwrap(); // unshare, and with it (--kill-child) the test process
    c.wait().unwrap();
    // The server notices the dead process's connections go: wait for its
    // owner lock to be released (server state, not a speed check).
    let owner = owner_of(&killed_db);
    let still_there = with_server(async |conn| {
        for _ in 0..600 {
            let held: bool = sqlx::query_scalar(OWNER_HELD_SQL)
                .bind(OWNER_LOCK)
                .bind(owner.unwrap_or(0) as i64)
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            if !held {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        exists(conn, &killed_db).await
    });
    // Normally it is still there; a test process of this same run may have
    // swept it already (its owner is dead and nobody is connected), which
    // is the behaviour under test too.
    if !still_there {
        eprintln!("{killed_db} was already removed by a concurrent sweep");
        return;
    }

    // ...and a later run, in yet another namespace (where the killed
    // process's pid is alive again: it is the new test process), removes it.
    let mut gone = false;
    for _ in 0..5 {
        run_ok(
            in_pid_namespace(&child("child_shard_db_1", 1)),
            "a run after the killed one",
        );
        gone = with_server(async |conn| !exists(conn, &killed_db).await);
        if gone {
            break;
        }
    }
    assert!(gone, "leftover database {killed_db} was not removed");
}

#[test]
fn the_owner_lock_is_taken_again_when_its_connection_dies() {
    let mut cmd = child("child_owner_", 1);
    cmd.env("DB_TEST_KILL_OWNER", "1");
    let all = run_ok(
        cmd,
        "killing the owner connection, then a database-mode test",
    );
    assert!(all.contains("KILLED_OWNER"), "{all}");
    assert!(all.contains("test result: ok. 2 passed"), "{all}");
}
