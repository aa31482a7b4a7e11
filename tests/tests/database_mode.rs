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
async fn database_settings<'e>(e: impl sqlx::PgExecutor<'e>) -> (String, Option<String>, String) {
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
