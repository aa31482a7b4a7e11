//! `isolation = "database"`: a fresh database per test, cloned from the
//! migrated template, dropped afterwards.

use db_test::{Db, TestContext, TestDb, db_test};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres};

#[db_test(isolation = "database")]
async fn real_commits_are_visible_to_a_second_connection(pool: PgPool) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('c@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut other = PgConnection::connect_with(&pool.connect_options())
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[db_test(isolation = "database")]
async fn serializable_transactions_work(db: Db) {
    let mut conn = db.acquire().await.unwrap();
    sqlx::query("BEGIN ISOLATION LEVEL SERIALIZABLE")
        .execute(&mut *conn)
        .await
        .unwrap();
    let level: String = sqlx::query_scalar("SHOW transaction_isolation")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(level, "serializable");
    sqlx::query("INSERT INTO users (email) VALUES ('s@example.com')")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[db_test(isolation = "database")]
async fn listen_notify(ctx: TestContext) {
    let pool = PgPool::connect_with(ctx.connect_options()).await.unwrap();
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen("db_test_channel").await.unwrap();
    sqlx::query("SELECT pg_notify('db_test_channel', 'hello')")
        .execute(&ctx.db())
        .await
        .unwrap();
    let note = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(note.payload(), "hello");
}

#[db_test(isolation = "database")]
async fn advisory_locks_across_connections(pool: PgPool) {
    let mut a = pool.acquire().await.unwrap();
    let mut b = pool.acquire().await.unwrap();
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(42)")
        .fetch_one(&mut *a)
        .await
        .unwrap();
    assert!(got);
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(42)")
        .fetch_one(&mut *b)
        .await
        .unwrap();
    assert!(!got, "a second session cannot take the lock");
}

/// No `isolation` key: a `PgPool` parameter selects database isolation.
#[db_test]
async fn pgpool_parameter_selects_database_mode(pool: PgPool, ctx: TestContext) {
    assert!(ctx.is_database_mode());
    assert!(
        ctx.database_name().contains("_d"),
        "{}",
        ctx.database_name()
    );
    sqlx::query("INSERT INTO users (email) VALUES ('p@example.com')")
        .execute(&pool)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "a fresh database holds only this test's row");
}

#[db_test]
async fn pool_connection_parameter(mut conn: PoolConnection<Postgres>) {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[db_test]
async fn pool_options_parameter((opts, connect): (PgPoolOptions, PgConnectOptions)) {
    let pool = opts.connect_with(connect).await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('o@example.com')")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

// `#[sqlx::test]`'s own form: two parameters rather than a tuple.
#[db_test]
async fn pool_options_and_connect_options_as_two_parameters(
    mut opts: PgPoolOptions,
    connect: PgConnectOptions,
) -> sqlx::Result<()> {
    opts = opts.max_connections(2);
    let pool = opts.connect_with(connect).await?;
    sqlx::query("INSERT INTO users (email) VALUES ('two@example.com')")
        .execute(&pool)
        .await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await?;
    assert_eq!(n, 1, "a database of its own");
    pool.close().await;
    Ok(())
}

#[db_test(isolation = "database")]
async fn test_db_wraps_the_pool_and_nothing_is_rolled_back(db: TestDb, ctx: TestContext) {
    sqlx::query("INSERT INTO users (email) VALUES ('t@example.com')")
        .execute(&db)
        .await
        .unwrap();
    let mut other = PgConnection::connect_with(&ctx.connect_options())
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(n, 1, "database mode commits for real");
}

/// The database of a finished test is gone; this one checks its own
/// database exists while it runs, and that no other test's leftovers exist
/// for this process (each is dropped when its test ends).
#[db_test(isolation = "database")]
async fn test_databases_are_dropped(ctx: TestContext) {
    let mut conn = PgConnection::connect_with(&ctx.connect_options())
        .await
        .unwrap();
    let mine: bool = sqlx::query_scalar("SELECT current_database() = $1")
        .bind(ctx.database_name())
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(mine);
}

// Per-test databases are recycled (truncated, checked against the template,
// renamed to a spare) instead of dropped. Whatever earlier tests did, each
// of these must see a database exactly like the template: no rows, fresh
// sequences, no extra schema.
macro_rules! fresh_database_tests {
    ($($name:ident),*) => {$(
        #[db_test(isolation = "database")]
        async fn $name(pool: PgPool) {
            let rows: i64 = sqlx::query_scalar("SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM posts)")
                .fetch_one(&pool).await.unwrap();
            assert_eq!(rows, 0, "a fresh database has no rows");
            let extra: bool = sqlx::query_scalar("SELECT to_regclass('public.scratch') IS NOT NULL")
                .fetch_one(&pool).await.unwrap();
            assert!(!extra, "a table made by another test is not here");
            let id: i64 = sqlx::query_scalar("INSERT INTO users (email) VALUES ('fresh@example.com') RETURNING id")
                .fetch_one(&pool).await.unwrap();
            assert_eq!(id, 1, "sequences start over");
            // Leave changes behind for the next test to (not) see.
            sqlx::query("CREATE TABLE IF NOT EXISTS scratch (x int)").execute(&pool).await.unwrap();
            sqlx::query("INSERT INTO posts (user_id, title) VALUES (1, 't')").execute(&pool).await.unwrap();
        }
    )*};
}
fresh_database_tests!(
    fresh_01, fresh_02, fresh_03, fresh_04, fresh_05, fresh_06, fresh_07, fresh_08
);

macro_rules! recycled_database_tests {
    ($($name:ident),*) => {$(
        #[db_test(isolation = "database")]
        async fn $name(pool: PgPool) {
            let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&pool).await.unwrap();
            assert_eq!(rows, 0);
            let id: i64 = sqlx::query_scalar("INSERT INTO users (email) VALUES ('r@example.com') RETURNING id")
                .fetch_one(&pool).await.unwrap();
            assert_eq!(id, 1, "sequences start over");
            // Data only: this database can be recycled.
        }
    )*};
}
recycled_database_tests!(
    recycled_01,
    recycled_02,
    recycled_03,
    recycled_04,
    recycled_05,
    recycled_06
);

thread_local! {
    static OPEN_TX_DATABASE: std::cell::Cell<Option<i64>> = const { std::cell::Cell::new(None) };
}

/// Committed rows, then a transaction left open on the pool's only
/// connection, with a changed search_path. A reset sent on that connection
/// would run inside the open transaction and be rolled back when it closes,
/// leaving the committed row in a "fresh" spare.
#[db_test(isolation = "database")]
async fn leaves_a_transaction_open(pool: PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    let oid: i64 =
        sqlx::query_scalar("SELECT oid::int8 FROM pg_database WHERE datname = current_database()")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('committed@example.com')")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::raw_sql(
        "SET search_path TO pg_catalog; BEGIN; INSERT INTO public.users (email) VALUES ('open@example.com')",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    drop(conn); // back to the pool, still inside the transaction
    // Wait until it is idle in the pool, so the reset is offered this very
    // connection.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while pool.num_idle() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the connection never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert_eq!(pool.size(), 1);
    OPEN_TX_DATABASE.with(|d| d.set(Some(oid)));
}

#[test]
fn a_database_left_with_an_open_transaction_is_dropped_not_recycled() {
    leaves_a_transaction_open();
    let oid = OPEN_TX_DATABASE.with(|d| d.take()).unwrap();
    let url = db_test::server_url().unwrap();
    db_test::runtime().block_on(async {
        let mut admin = PgConnection::connect(&url).await.unwrap();
        let name: Option<String> =
            sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE oid = $1::oid")
                .bind(oid)
                .fetch_optional(&mut admin)
                .await
                .unwrap();
        assert_eq!(
            name, None,
            "the database kept a committed row under an open transaction; it must be dropped"
        );
    });
}

/// A database of the test's own is shared with no other test: its sessions
/// keep the server's defaults (no `lock_timeout`), as under `#[sqlx::test]`.
#[db_test]
async fn own_database_sessions_have_the_servers_defaults(pool: sqlx::PgPool) {
    let lock_timeout: String = sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(lock_timeout, "0");
}

/// Sequences start where the migrations left them, in a fresh clone and in
/// a recycled database alike (the same tests, so that later ones get
/// databases earlier ones gave back).
async fn first_invoice(pool: &sqlx::PgPool) {
    let row: (i64, i64) = sqlx::query_as("INSERT INTO invoices DEFAULT VALUES RETURNING id, no")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(row, (100, 5001), "not the migrations' sequence state");
}

macro_rules! sequences_as_migrated {
    ($($name:ident),*) => {$(
        #[db_test(migrations = "migrations_seq")]
        async fn $name(pool: sqlx::PgPool) {
            first_invoice(&pool).await;
        }
    )*};
}

sequences_as_migrated!(
    sequences_as_migrated_1,
    sequences_as_migrated_2,
    sequences_as_migrated_3,
    sequences_as_migrated_4,
    sequences_as_migrated_5,
    sequences_as_migrated_6
);

/// Settings a migration gives the database (`ALTER DATABASE .. SET`) hold
/// in every test's database, as when the migrations run in it.
async fn database_settings<'e>(
    e: impl sqlx::PgExecutor<'e> + Copy,
) -> (String, Option<String>, String) {
    // The database's own comment, privileges and connection limit, as the
    // migrations left them: `CREATE DATABASE .. TEMPLATE` copies none of them.
    let (comment, public_temp, public_connect, limit): (Option<String>, bool, bool, i32) =
        sqlx::query_as(
            "SELECT shobj_description(d.oid, 'pg_database'), \
             EXISTS (SELECT 1 FROM aclexplode(d.datacl) a WHERE a.grantee = 0 AND a.privilege_type = 'TEMPORARY'), \
             EXISTS (SELECT 1 FROM aclexplode(d.datacl) a WHERE a.grantee = 0 AND a.privilege_type = 'CONNECT'), \
             d.datconnlimit \
             FROM pg_database d WHERE d.datname = current_database()",
        )
        .fetch_one(e)
        .await
        .unwrap();
    assert_eq!(comment.as_deref(), Some("the app's database"));
    assert!(!public_temp, "TEMPORARY was revoked from PUBLIC");
    assert!(public_connect, "PUBLIC keeps CONNECT");
    assert_eq!(limit, 250);
    sqlx::query_as(
        "SELECT current_setting('work_mem'), current_setting('app.tenant', true), \
         current_setting('search_path')",
    )
    .fetch_one(e)
    .await
    .unwrap()
}

const MIGRATED_SETTINGS: (&str, Option<&str>, &str) = ("5MB", Some("acme"), "app, public");

#[db_test(migrations = "migrations_settings")]
async fn database_settings_of_the_migrations_in_database_mode(pool: sqlx::PgPool) {
    let (work_mem, tenant, path) = database_settings(&pool).await;
    assert_eq!(
        (work_mem.as_str(), tenant.as_deref(), path.as_str()),
        MIGRATED_SETTINGS
    );
    // The search path finds the migrations' schema.
    sqlx::query("INSERT INTO tenants (name) VALUES ('a')")
        .execute(&pool)
        .await
        .unwrap();
}

/// The migrations' `idle_in_transaction_session_timeout` (1 s) would end
/// a transaction-mode test's session, which is in a transaction all along,
/// whenever the test waits between statements; production's sessions wait
/// outside one.
#[db_test(migrations = "migrations_settings")]
async fn an_idle_in_transaction_timeout_of_the_migrations_spares_the_test(db: db_test::TestDb) {
    sqlx::query("INSERT INTO tenants (name) VALUES ('idle')")
        .execute(&db)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[db_test(migrations = "migrations_settings")]
async fn database_settings_of_the_migrations_in_transaction_mode(db: db_test::TestDb) {
    let (work_mem, tenant, path) = database_settings(&db).await;
    assert_eq!(
        (work_mem.as_str(), tenant.as_deref(), path.as_str()),
        MIGRATED_SETTINGS
    );
}

/// A `pg_dump` data file as a fixture: its header's session settings
/// (`search_path` = '') stay on the connection that ran it, as under
/// `#[sqlx::test]`; the test's own connections see the server's.
#[db_test(migrations = "migrations", fixtures("pg_dump_users"))]
async fn a_pg_dump_fixtures_settings_stay_with_it(pool: sqlx::PgPool) {
    let name: String =
        sqlx::query_scalar("SELECT name FROM users WHERE email = 'dump@example.com'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(name, "Dumped");
    let path: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(path, "\"$user\", public");
}

// A used database is recycled into a spare for a later test: whatever the
// test before left on it must be put back exactly or make it be dropped.
// Each pair below runs a first test that leaves something behind, then a
// second that checks it sees the template's state, on the first test's
// database if that was recycled. The pairs have a template of their own and
// run one at a time; before the second test, the template's other spares
// are dropped (see `keep_only_spare`), so the second test claims the one
// the first test left.

/// The pairs' own template: only the pairs' halves use it.
static RECYCLE_PAIRS: std::sync::LazyLock<sqlx::migrate::Migrator> =
    std::sync::LazyLock::new(|| {
        use sqlx::SqlSafeStr;
        use sqlx::migrate::{Migration, MigrationType, Migrator};
        Migrator::with_migrations(vec![Migration::new(
            1,
            std::borrow::Cow::Borrowed("recycle pairs"),
            MigrationType::Simple,
            "CREATE TABLE users (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL); \
             CREATE TABLE posts (id BIGSERIAL PRIMARY KEY, \
                 user_id BIGINT NOT NULL REFERENCES users (id), title TEXT NOT NULL DEFAULT ''); \
             CREATE SEQUENCE counter START 10; \
             SELECT setval('counter', 41, false); \
             CREATE TABLE truncations (what TEXT NOT NULL); \
             CREATE FUNCTION log_truncate() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN INSERT INTO truncations VALUES (TG_TABLE_NAME); RETURN NULL; END $$; \
             CREATE TRIGGER users_truncated AFTER TRUNCATE ON users \
                 FOR EACH STATEMENT EXECUTE FUNCTION log_truncate();"
                .into_sql_str(),
            false,
        )])
    });

thread_local! {
    /// Set on the thread of a pair's `#[test]` while it runs the pair's two
    /// halves (each a `#[db_test]` whose body runs on that thread). Run on
    /// their own, by libtest, the halves do nothing.
    static IN_PAIR: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn in_pair() -> bool {
    IN_PAIR.with(std::cell::Cell::get)
}

/// One pair at a time.
static RECYCLE_PAIR_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// The oid of the database the last half of a pair ran on.
static PAIR_DATABASE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

async fn record_pair_database(pool: &PgPool) {
    let (oid, name): (i64, String) = sqlx::query_as(
        "SELECT oid::int8, datname::text FROM pg_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    PAIR_DATABASE.store(oid, std::sync::atomic::Ordering::SeqCst);
    *PAIR_DATABASE_NAME.lock().unwrap() = name;
}

/// The name of the database the last half of a pair ran on, as the test
/// had it.
static PAIR_DATABASE_NAME: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// Whether the database of this oid was recycled (it exists under another
/// name: a spare's), once its test's release in the background is done: it
/// is renamed to a spare, or dropped, within seconds.
fn database_recycled(oid: i64, test_name: &str) -> bool {
    let url = db_test::server_url().unwrap();
    db_test::runtime().block_on(async {
        let mut admin = PgConnection::connect(&url).await.unwrap();
        let mut now = None;
        for _ in 0..200 {
            now = sqlx::query_scalar::<_, String>(
                "SELECT datname::text FROM pg_database WHERE oid = $1::oid",
            )
            .bind(oid)
            .fetch_optional(&mut admin)
            .await
            .unwrap();
            if now.as_deref() != Some(test_name) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let _ = admin.close().await;
        now.is_some_and(|name| name != test_name)
    })
}

/// Waits until the database of this oid is a spare (its name ends in
/// `_s<owner>_<n>`), then drops the template's other spares, so that the
/// next test of the template claims this one. Other spares come from the
/// halves run on their own by libtest: they do nothing, but each still gets
/// a database of the template, a spare or a fresh clone, and gives it back
/// as a spare; one can also hold this very database for a moment. False if
/// the database never became a spare again.
fn keep_only_spare(oid: i64) -> bool {
    let url = db_test::server_url().unwrap();
    db_test::runtime().block_on(async {
        let mut admin = PgConnection::connect(&url).await.unwrap();
        let mut spare_prefix = None;
        for _ in 0..200 {
            let name = sqlx::query_scalar::<_, String>(
                "SELECT datname::text FROM pg_database WHERE oid = $1::oid",
            )
            .bind(oid)
            .fetch_optional(&mut admin)
            .await
            .unwrap();
            let Some(name) = name else { break };
            let spare = name.rsplit_once("_s").filter(|(_, tail)| {
                tail.split_once('_').is_some_and(|(owner, n)| {
                    owner.len() == 8
                        && owner.bytes().all(|b| b.is_ascii_hexdigit())
                        && !n.is_empty()
                        && n.bytes().all(|b| b.is_ascii_digit())
                })
            });
            if let Some((prefix, _)) = spare {
                spare_prefix = Some(format!("{prefix}_s"));
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let Some(spare_prefix) = spare_prefix else {
            let _ = admin.close().await;
            return false;
        };
        let others: Vec<String> = sqlx::query_scalar(
            "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1) AND oid <> $2::oid",
        )
        .bind(&spare_prefix)
        .bind(oid)
        .fetch_all(&mut admin)
        .await
        .unwrap();
        for other in others {
            // A spare a half claims meanwhile is renamed away: then this
            // fails, harmlessly.
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{other}\""
            )))
            .execute(&mut admin)
            .await;
        }
        let _ = admin.close().await;
        true
    })
}

/// The second half of every pair: the database is the template's. Run by
/// [`recycle_pair`].
#[db_test(migrator = "RECYCLE_PAIRS")]
async fn recycle_pair_sees_the_template(pool: PgPool) {
    if !in_pair() {
        return;
    }
    use futures_util::FutureExt;
    record_pair_database(&pool).await;
    let checked = std::panic::AssertUnwindSafe(template_state(&pool))
        .catch_unwind()
        .await;
    if let Err(panic) = checked {
        // A schema change, so that this database is dropped rather than
        // handed, with what leaked into it, to the next pair.
        let _ = sqlx::query("CREATE TABLE recycle_pair_failed ()")
            .execute(&pool)
            .await;
        std::panic::resume_unwind(panic);
    }
}

/// What [`recycle_pair_sees_the_template`] checks.
async fn template_state(pool: &PgPool) {
    // An audit trigger `ON TRUNCATE` writes after db-test's reset empties
    // `users`: that row is not the template's either.
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM truncations")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(audited, 0, "rows an ON TRUNCATE trigger wrote");
    // Sequences where the template has them: users' and posts' not called
    // yet, `counter` where the migration's `setval(.., false)` left it.
    for want in 1..=3_i64 {
        let id: i64 = sqlx::query_scalar("INSERT INTO users (email) VALUES ('x') RETURNING id")
            .fetch_one(pool)
            .await
            .unwrap_or_else(|e| panic!("insert #{want} into users: {e}"));
        assert_eq!(id, want, "users.id as in a fresh database");
    }
    let id: i64 = sqlx::query_scalar("INSERT INTO posts (user_id) VALUES (1) RETURNING id")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(id, 1, "posts.id as in a fresh database");
    let next: i64 = sqlx::query_scalar("SELECT nextval('counter')")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(next, 41, "counter where the migration's setval left it");
    // The foreign key holds.
    let orphan = sqlx::query("INSERT INTO posts (user_id) VALUES (12345)")
        .execute(pool)
        .await;
    let code = orphan
        .as_ref()
        .err()
        .and_then(|e| e.as_database_error())
        .and_then(|e| e.code().map(|c| c.into_owned()));
    assert_eq!(
        code.as_deref(),
        Some("23503"),
        "foreign key not enforced: {orphan:?}"
    );
    // Tables and columns as created.
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT relname::text, concat_ws(' ', coalesce(reloptions::text, '-'), relreplident, \
         relrowsecurity, relforcerowsecurity, relpersistence) \
         FROM pg_class WHERE relname IN ('users', 'posts') ORDER BY relname",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(tables.len(), 2);
    for (table, state) in tables {
        assert_eq!(
            state, "- d f f p",
            "{table}: reloptions, replica identity, row level security (enabled, forced), persistence"
        );
    }
    // (Some servers keep an option of their own there: only n_distinct is
    // checked.)
    let (n_distinct, default_stats): (bool, bool) = sqlx::query_as(
        "SELECT coalesce(array_to_string(attoptions, ','), '') LIKE '%n\\_distinct%', \
         coalesce(attstattarget::int, -1) = -1 FROM pg_attribute \
         WHERE attrelid = 'users'::regclass AND attname = 'email'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(!n_distinct, "users.email: attoptions");
    assert!(default_stats, "users.email: statistics target");
    // No comments (the migrations set none), the serial sequences owned by
    // their columns, no operators of the app's own.
    let (comments, owned, operators): (i64, Option<String>, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_description WHERE objoid >= 16384)               + (SELECT count(*) FROM pg_shdescription WHERE objoid =                  (SELECT oid FROM pg_database WHERE datname = current_database())),                 pg_get_serial_sequence('users', 'id'),                 (SELECT count(*) FROM pg_operator WHERE oprnamespace = 'public'::regnamespace)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(comments, 0, "comments");
    assert_eq!(owned.as_deref(), Some("public.users_id_seq"), "OWNED BY");
    assert_eq!(operators, 0, "operators");
}

/// Runs `first`, then the pair's second half on the database `first` gave
/// back if it was recycled (a fresh clone if it was dropped). With
/// `must_reuse`, `first` left nothing that cannot be reset: its database
/// must have been recycled.
fn recycle_pair(first: fn(), must_reuse: bool) {
    use std::sync::atomic::Ordering::SeqCst;
    let _one_at_a_time = RECYCLE_PAIR_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // One pair at a time across processes too (nextest runs each test in a
    // process of its own, and shards side by side on one server): another
    // process's pair would claim this pair's spare. A session lock on the
    // server, held until this function returns (a panic closes the
    // connection, which releases it).
    IN_PAIR.with(|in_pair| in_pair.set(true));
    let lock_url = db_test::server_url().unwrap();
    let mut lock_conn = db_test::runtime().block_on(async {
        let mut conn = PgConnection::connect(&lock_url).await.unwrap();
        sqlx::query("SELECT pg_advisory_lock(7417741774)")
            .execute(&mut conn)
            .await
            .unwrap();
        conn
    });
    let release = |conn: &mut PgConnection| {
        db_test::runtime().block_on(async {
            let _ = sqlx::query("SELECT pg_advisory_unlock(7417741774)")
                .execute(&mut *conn)
                .await;
        })
    };
    // A process's first database-mode test of a template may end before
    // the template's recycling plan is ready (it is built in the
    // background): its database is dropped. Then the first half runs again.
    let (used, recycled) = (0..3)
        .map(|_| {
            first();
            let used = PAIR_DATABASE.load(SeqCst);
            let name = PAIR_DATABASE_NAME.lock().unwrap().clone();
            (used, database_recycled(used, &name))
        })
        .find(|(_, recycled)| *recycled || !must_reuse)
        .unwrap_or((0, false));
    assert!(
        recycled || !must_reuse,
        "the first test's database was dropped, not recycled (three times)"
    );
    // The template's only spare is made the one `first` left; a few tries
    // in case a half run on its own by libtest takes it first.
    for _ in 0..8 {
        if recycled {
            assert!(
                keep_only_spare(used),
                "the first test's database was recycled, then dropped"
            );
        }
        recycle_pair_sees_the_template();
        if !recycled || PAIR_DATABASE.load(SeqCst) == used {
            release(&mut lock_conn);
            return;
        }
    }
    panic!("the second test never got the first test's recycled database");
}

macro_rules! recycle_pairs {
    ($($first:ident, $test:ident, $must_reuse:expr, $sql:expr;)*) => {$(
        #[db_test(migrator = "RECYCLE_PAIRS")]
        async fn $first(pool: PgPool) {
            if !in_pair() {
                return;
            }
            record_pair_database(&pool).await;
            sqlx::raw_sql($sql).execute(&pool).await.unwrap();
        }

        #[test]
        fn $test() {
            recycle_pair($first, $must_reuse);
        }
    )*};
}

recycle_pairs! {
    // Rows and used sequences only: the common case, recycled.
    rows_and_nextval_first, recycled_after_rows_and_nextval, true,
        "INSERT INTO users (email) VALUES ('a'); INSERT INTO posts (user_id) VALUES (1); \
         SELECT nextval('counter')";
    // `pg_sequence_last_value` is NULL after these, as in the template.
    setval_not_called_first, recycled_after_setval_not_called, true,
        "SELECT setval('users_id_seq', 1000, false); SELECT setval('counter', 7, false)";
    restart_with_first, recycled_after_alter_sequence_restart, true,
        "ALTER SEQUENCE posts_id_seq RESTART WITH 500; ALTER SEQUENCE counter RESTART";
    // Sequence options: not reset, so the database is dropped.
    start_with_restart_first, fresh_after_alter_sequence_start_with, false,
        "ALTER SEQUENCE users_id_seq START WITH 70 RESTART";
    maxvalue_first, fresh_after_alter_sequence_maxvalue, false,
        "ALTER SEQUENCE users_id_seq MAXVALUE 2";
    // The foreign key's internal triggers (pg_dump --disable-triggers).
    disable_trigger_all_first, fresh_after_disable_trigger_all, false,
        "ALTER TABLE posts DISABLE TRIGGER ALL; INSERT INTO posts (user_id) VALUES (999)";
    reloptions_first, fresh_after_table_options, false,
        "ALTER TABLE users SET (autovacuum_enabled = false)";
    replica_identity_first, fresh_after_replica_identity, false,
        "ALTER TABLE users REPLICA IDENTITY FULL";
    force_rls_first, fresh_after_force_row_level_security, false,
        "ALTER TABLE users FORCE ROW LEVEL SECURITY";
    unlogged_first, fresh_after_set_unlogged, false,
        "ALTER TABLE posts SET UNLOGGED";
    column_options_first, fresh_after_column_options, false,
        "ALTER TABLE users ALTER COLUMN email SET STATISTICS 5, \
         ALTER COLUMN email SET (n_distinct = 5)";
    comment_first, fresh_after_comments, false,
        "COMMENT ON TABLE users IS 'people'; COMMENT ON COLUMN users.email IS 'where'; \
         DO $$ BEGIN EXECUTE format('COMMENT ON DATABASE %I IS %L', current_database(), 'x'); END $$";
    owned_by_first, fresh_after_sequence_owned_by_none, false,
        "ALTER SEQUENCE users_id_seq OWNED BY NONE";
    operator_first, fresh_after_create_operator, false,
        "CREATE OPERATOR === (LEFTARG = int4, RIGHTARG = int4, FUNCTION = int4eq)";
}
