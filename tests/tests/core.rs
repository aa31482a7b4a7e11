//! Core behaviour of #[db_test] in transaction mode (the default), on
//! PostgreSQL. The core suite every backend shares is the backend matrix,
//! `matrix.rs`; this file keeps what goes further on PostgreSQL.

use std::time::Duration;

use db_test::{Db, TestDb, db_test};
use sqlx::{Acquire, Connection, Executor, PgConnection};

async fn count(db: &TestDb, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(db)
        .await
        .unwrap()
}

/// Rows visible to a brand-new connection: only what was really committed.
async fn committed_rows(db: &TestDb) -> i64 {
    let mut other = sqlx::PgConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM posts) + (SELECT count(*) FROM ledger)")
        .fetch_one(&mut other)
        .await
        .unwrap();
    other.close().await.unwrap();
    n
}

// Twenty tests insert at the same time; each sees only its own row, and a
// fresh connection sees none of them.
macro_rules! isolation_tests {
    ($($name:ident),*) => {$(
        #[db_test]
        async fn $name(db: TestDb) {
            let email = concat!(stringify!($name), "@example.com");
            sqlx::query("INSERT INTO users (email) VALUES ($1)").bind(email).execute(&db).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            let emails: Vec<String> = sqlx::query_scalar("SELECT email FROM users").fetch_all(&db).await.unwrap();
            assert_eq!(emails, vec![email.to_string()]);
            assert_eq!(committed_rows(&db).await, 0, "nothing is ever committed");
        }
    )*};
}
isolation_tests!(
    iso_01, iso_02, iso_03, iso_04, iso_05, iso_06, iso_07, iso_08, iso_09, iso_10, iso_11, iso_12,
    iso_13, iso_14, iso_15, iso_16, iso_17, iso_18, iso_19, iso_20
);

#[db_test]
#[should_panic(expected = "boom after insert")]
async fn panicking_test_shows_its_own_message(db: TestDb) {
    sqlx::query("INSERT INTO users (email) VALUES ('panic@example.com')")
        .execute(&db)
        .await
        .unwrap();
    panic!("boom after insert");
}

#[db_test]
async fn nothing_from_a_panicking_test_is_left_behind(db: TestDb) {
    // The panicking test above inserted 'panic@example.com'; whether it ran
    // before or runs concurrently, neither this test nor a fresh connection sees it.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email = 'panic@example.com'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(committed_rows(&db).await, 0);
}

#[db_test]
async fn nested_savepoints_to_any_depth(db: TestDb) {
    let mut outer = db.begin().await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('d1@example.com')")
        .execute(&mut *outer)
        .await
        .unwrap();
    {
        // sqlx's own begin() on the connection: a savepoint, counted by sqlx.
        let mut inner = PgConnection::begin(&mut *outer).await.unwrap();
        sqlx::query("INSERT INTO users (email) VALUES ('d2@example.com')")
            .execute(&mut *inner)
            .await
            .unwrap();
        {
            let mut innermost = Connection::begin(&mut *inner).await.unwrap();
            sqlx::query("INSERT INTO users (email) VALUES ('d3@example.com')")
                .execute(&mut *innermost)
                .await
                .unwrap();
            innermost.rollback().await.unwrap();
        }
        inner.commit().await.unwrap();
    }
    outer.commit().await.unwrap();
    let emails: Vec<String> = sqlx::query_scalar("SELECT email FROM users ORDER BY email")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(
        emails,
        vec!["d1@example.com".to_string(), "d2@example.com".to_string()]
    );
    assert_eq!(committed_rows(&db).await, 0);
}

#[db_test]
async fn sqlx_begin_on_an_acquired_connection_is_a_savepoint(db: TestDb) {
    let mut conn = db.acquire().await.unwrap();
    let mut tx = PgConnection::begin(&mut *conn).await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('acq@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Acquire::begin on the connection too.
    let mut tx = Acquire::begin(&mut *conn).await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('acq2@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    drop(conn);
    assert_eq!(count(&db, "users").await, 2);
    assert_eq!(
        committed_rows(&db).await,
        0,
        "sqlx's commit must not commit the test's data"
    );
}

#[db_test]
async fn failed_statement_on_a_raw_connection_is_recovered(db: TestDb) {
    {
        let mut conn = db.acquire().await.unwrap();
        conn.execute("SELECT 1/0").await.unwrap_err();
    }
    // The next statement repairs the aborted transaction first.
    sqlx::query("INSERT INTO users (email) VALUES ('after@example.com')")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(count(&db, "users").await, 1);
}

#[db_test]
async fn spawned_tasks_share_the_test_connection(db: TestDb) {
    let mut handles = Vec::new();
    for i in 0..8 {
        let app = db.db();
        handles.push(tokio::spawn(async move {
            sqlx::query("INSERT INTO users (email) VALUES ($1)")
                .bind(format!("task{i}@example.com"))
                .execute(&app)
                .await
                .unwrap();
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(count(&db, "users").await, 8);
}

#[db_test]
async fn busy_connection_times_out_with_a_helpful_message(db: TestDb) {
    db.set_checkout_timeout(Duration::from_millis(300));
    let tx = db.begin().await.unwrap();
    // Using the Db while holding the guard: the classic self-deadlock.
    let err = sqlx::query("SELECT 1").execute(&db).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("stayed busy"), "{msg}");
    assert!(
        msg.contains("guard from `db.acquire()` or `db.begin()`"),
        "{msg}"
    );
    assert!(msg.contains("DB_TEST_CHECKOUT_TIMEOUT"), "{msg}");
    tx.commit().await.unwrap();
    sqlx::query("SELECT 1").execute(&db).await.unwrap();
}

#[db_test(timeout = "300ms")]
#[should_panic(expected = "timed out after 300ms")]
async fn test_timeout_names_the_timeout(db: TestDb) {
    sqlx::query("INSERT INTO users (email) VALUES ('slow@example.com')")
        .execute(&db)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
}

#[db_test]
#[should_panic(expected = "refusing to run `COMMIT`")]
async fn raw_commit_through_db_is_refused_and_fails_the_test(db: TestDb) {
    let err = sqlx::query("COMMIT").execute(&db).await.unwrap_err();
    assert!(err.to_string().contains("refusing"), "{err}");
    // Swallowing the error does not help: the test still fails at the end.
}

#[db_test]
#[should_panic(expected = "refusing to run `COMMIT`")]
async fn raw_commit_on_a_raw_connection_fails_the_test_loudly(db: TestDb) {
    let mut conn = db.acquire().await.unwrap();
    // Refused on the guard before it reaches the server.
    let err = conn.execute("COMMIT").await.unwrap_err();
    assert!(err.to_string().contains("refusing"), "{err}");
}

#[db_test]
#[should_panic(expected = "was ended by a raw COMMIT or ROLLBACK")]
async fn raw_commit_on_the_bare_pg_connection_fails_on_the_server(db: TestDb) {
    let mut conn = db.acquire().await.unwrap();
    // Past db-test's checks, straight on the PgConnection: db-test's commit
    // guard makes the COMMIT itself fail on the server.
    let raw: &mut PgConnection = &mut conn;
    let err = raw.execute("COMMIT").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("db_test_refuses_to_commit_a_test_transaction"),
        "{err}"
    );
}

#[db_test]
#[should_panic(expected = "ledger_counterpart_fk")]
async fn deferred_constraint_violation_fails_the_test(db: TestDb) {
    sqlx::query("INSERT INTO ledger (amount, counterpart) VALUES (10, 999999)")
        .execute(&db)
        .await
        .unwrap();
}

// An app's function that writes, called with SELECT: production commits
// its rows with the statement, and a failing statement after it keeps them.
#[db_test]
async fn a_select_of_a_function_that_writes_keeps_its_rows(db: TestDb) {
    sqlx::raw_sql(
        "CREATE FUNCTION pg_temp.add_user(e text) RETURNS bigint LANGUAGE sql \
         AS $$ INSERT INTO users (email) VALUES (e) RETURNING id $$",
    )
    .execute(&db)
    .await
    .unwrap();
    let add = "SELECT pg_temp.add_user($1)";
    let _: i64 = sqlx::query_scalar(add)
        .bind("fn@example.com")
        .fetch_one(&db)
        .await
        .unwrap();
    let duplicate = sqlx::query_scalar::<_, i64>(add)
        .bind("fn@example.com")
        .fetch_one(&db)
        .await;
    assert!(duplicate.is_err());
    assert_eq!(count(&db, "users").await, 1);
}

fn deferred_key_error(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.constraint() == Some("ledger_counterpart_fk"))
}

// Outside a transaction each statement commits on its own in production,
// and a deferred key it breaks fails that COMMIT: the statement fails.
#[db_test]
async fn a_deferred_key_fails_the_statement_that_would_have_committed_it(db: TestDb) {
    let err = sqlx::query("INSERT INTO ledger (amount, counterpart) VALUES (10, 999999)")
        .execute(&db)
        .await
        .unwrap_err();
    assert!(deferred_key_error(&err), "{err}");
    assert_eq!(count(&db, "ledger").await, 0);
    // Rows that satisfy the key by the statement's end are fine.
    sqlx::raw_sql(
        "INSERT INTO ledger (id, amount, counterpart) VALUES (1, 5, 2); \
         INSERT INTO ledger (id, amount, counterpart) VALUES (2, -5, 1)",
    )
    .execute(&db)
    .await
    .unwrap();
    assert_eq!(count(&db, "ledger").await, 2);
}

// In a transaction, the key is checked at its COMMIT: a `commit()` that
// fails rolls the transaction back, as in production.
#[db_test]
async fn a_deferred_key_fails_the_app_transactions_commit(db: TestDb) {
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO ledger (amount, counterpart) VALUES (10, 999999)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = tx.commit().await.unwrap_err();
    assert!(deferred_key_error(&err), "{err}");
    assert_eq!(count(&db, "ledger").await, 0);
    // The pair the key was made deferrable for commits.
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO ledger (id, amount, counterpart) VALUES (11, 5, 12)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO ledger (id, amount, counterpart) VALUES (12, -5, 11)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count(&db, "ledger").await, 2);
}

// A statement its caller gave up on (a timeout) that completes on the
// server and breaks a deferred key: its COMMIT would have failed in
// production, so it is undone before the next statement.
#[db_test]
async fn a_dropped_statement_that_breaks_a_deferred_key_is_undone(db: TestDb) {
    let slow = sqlx::raw_sql(
        "INSERT INTO ledger (amount, counterpart) VALUES (10, 999999); SELECT pg_sleep(0.1)",
    );
    let dropped = tokio::time::timeout(Duration::from_millis(20), slow.execute(&db)).await;
    assert!(dropped.is_err());
    assert_eq!(count(&db, "ledger").await, 0);
}

// A check settles what it checked: a deferred constraint trigger fires once
// for a row, as at production's COMMIT, not again at every later statement.
#[db_test]
async fn a_checked_deferred_trigger_does_not_fire_again(db: TestDb) {
    sqlx::raw_sql(
        "CREATE TABLE budget (id int PRIMARY KEY, lim int NOT NULL); \
         CREATE TABLE orders (id serial PRIMARY KEY, amount int NOT NULL); \
         CREATE FUNCTION check_budget() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF (SELECT sum(amount) FROM orders) > (SELECT lim FROM budget WHERE id = 1) \
           THEN RAISE EXCEPTION 'over budget'; END IF; RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER orders_budget AFTER INSERT ON orders \
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION check_budget()",
    )
    .execute(&db)
    .await
    .unwrap();
    sqlx::query("INSERT INTO budget VALUES (1, 100)")
        .execute(&db)
        .await
        .unwrap();
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO orders (amount) VALUES (50)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Lowering the budget fires nothing (the trigger is on orders).
    sqlx::query("UPDATE budget SET lim = 10")
        .execute(&db)
        .await
        .unwrap();
    let mut tx = db.begin().await.unwrap();
    sqlx::query("UPDATE budget SET lim = 20")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // A new order does.
    let err = sqlx::query("INSERT INTO orders (amount) VALUES (1)")
        .execute(&db)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("over budget"), "{err}");
}

// `SET CONSTRAINTS` lasts for a transaction: after the app transaction's
// commit (or, outside one, after the statement) each constraint is back to
// its initial mode.
#[db_test]
async fn set_constraints_ends_with_its_transaction(db: TestDb) {
    sqlx::raw_sql(
        "CREATE TABLE imm_child (parent bigint REFERENCES users (id) \
           DEFERRABLE INITIALLY IMMEDIATE)",
    )
    .execute(&db)
    .await
    .unwrap();
    for outside in [false, true] {
        if outside {
            sqlx::query("SET CONSTRAINTS ALL IMMEDIATE")
                .execute(&db)
                .await
                .unwrap();
        } else {
            let mut tx = db.begin().await.unwrap();
            sqlx::query("SET CONSTRAINTS ALL IMMEDIATE")
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        // The deferred key is deferred again: the pair goes in.
        let mut tx = db.begin().await.unwrap();
        for (id, other) in [(31, 32), (32, 31)] {
            sqlx::query("INSERT INTO ledger (id, amount, counterpart) VALUES ($1, 1, $2)")
                .bind(id + i64::from(outside) * 10)
                .bind(other + i64::from(outside) * 10)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    let mut tx = db.begin().await.unwrap();
    sqlx::query("SET CONSTRAINTS ALL DEFERRED")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // The immediate one is immediate again: the orphan fails at once.
    let mut tx = db.begin().await.unwrap();
    let err = sqlx::query("INSERT INTO imm_child VALUES (999999)")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("imm_child_parent_fkey"), "{err}");
    tx.rollback().await.unwrap();
    // Made deferred by an ALTER, it stays deferred.
    sqlx::query("ALTER TABLE imm_child ALTER CONSTRAINT imm_child_parent_fkey INITIALLY DEFERRED")
        .execute(&db)
        .await
        .unwrap();
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO imm_child VALUES (9000077)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO users (id, email) VALUES (9000077, 'late@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

// Two constraints of one name in one schema, one initially deferred: `SET
// CONSTRAINTS` cannot tell them apart, and the deferred one stays deferred.
#[db_test]
async fn a_deferred_constraint_sharing_its_name_stays_deferred(db: TestDb) {
    sqlx::raw_sql(
        "CREATE TABLE late_a (parent bigint CONSTRAINT parent_ref REFERENCES users (id) \
           DEFERRABLE INITIALLY DEFERRED); \
         CREATE TABLE late_b (parent bigint CONSTRAINT parent_ref REFERENCES users (id) \
           DEFERRABLE INITIALLY IMMEDIATE)",
    )
    .execute(&db)
    .await
    .unwrap();
    for round in 0..2 {
        let mut tx = db.begin().await.unwrap();
        sqlx::query("INSERT INTO late_a VALUES ($1)")
            .bind(9_000_080 + round)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("INSERT INTO users (id, email) VALUES ($1, $2)")
            .bind(9_000_080 + round)
            .bind(format!("late{round}@example.com"))
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
}

// An app that checks its deferred keys itself before committing: `SET
// CONSTRAINTS ALL IMMEDIATE` reports the app's broken key, not db-test's
// commit guard (armed by the first guard).
#[db_test]
async fn set_constraints_all_immediate_checks_the_apps_keys_only(db: TestDb) {
    drop(db.acquire().await.unwrap());
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO ledger (amount, counterpart) VALUES (10, 999999)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = sqlx::query("SET CONSTRAINTS ALL IMMEDIATE")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(deferred_key_error(&err), "{err}");
    tx.rollback().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    sqlx::query("SET CONSTRAINTS ALL IMMEDIATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO ledger (id, amount) VALUES (21, 5)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    sqlx::query("SET CONSTRAINTS ALL IMMEDIATE")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(count(&db, "ledger").await, 1);
}

// ... and the guard still refuses a COMMIT afterwards.
#[db_test]
#[should_panic(expected = "was ended by a raw COMMIT or ROLLBACK")]
async fn the_commit_guard_outlasts_set_constraints_all_immediate(db: TestDb) {
    drop(db.acquire().await.unwrap());
    let mut tx = db.begin().await.unwrap();
    sqlx::query("SET CONSTRAINTS ALL IMMEDIATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    sqlx::query("SET CONSTRAINTS ALL IMMEDIATE")
        .execute(&db)
        .await
        .unwrap();
    let mut conn = db.acquire().await.unwrap();
    let raw: &mut PgConnection = &mut conn;
    let err = raw.execute("COMMIT").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("db_test_refuses_to_commit_a_test_transaction"),
        "{err}"
    );
}

#[db_test(check_constraints = false)]
async fn deferred_constraint_check_can_be_turned_off(db: TestDb) {
    sqlx::query("INSERT INTO ledger (amount, counterpart) VALUES (10, 999999)")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(count(&db, "ledger").await, 1);
}

#[db_test]
async fn query_counting(db: TestDb) {
    let app = db.db();
    db.assert_queries(2, async {
        sqlx::query("INSERT INTO users (email) VALUES ('q@example.com')")
            .execute(&app)
            .await
            .unwrap();
        sqlx::query("SELECT count(*) FROM users")
            .execute(&app)
            .await
            .unwrap();
    })
    .await;
    let before = db.query_count().await;
    sqlx::query("SELECT 1").execute(&db).await.unwrap();
    assert_eq!(db.query_count().await, before + 1);
}

#[db_test]
#[should_panic(expected = "expected 1 statement(s), but 2 ran")]
async fn query_count_mismatch_lists_the_statements(db: TestDb) {
    db.assert_queries(1, async {
        sqlx::query("SELECT 'first'").execute(&db).await.unwrap();
        sqlx::query("SELECT 'second'").execute(&db).await.unwrap();
    })
    .await;
}

#[db_test]
async fn result_returning_test(db: TestDb) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO users (email) VALUES ('r@example.com')")
        .execute(&db)
        .await?;
    assert_eq!(count(&db, "users").await, 1);
    Ok(())
}

/// `?` converts into the declared error type, and an early `return` leaves
/// the test (not just a block inside it).
#[db_test]
async fn question_mark_converts_and_return_leaves_early(
    db: TestDb,
) -> Result<(), Box<dyn std::error::Error>> {
    let n: i64 = sqlx::query_scalar("SELECT 41::int8 + 1")
        .fetch_one(&db)
        .await?;
    let parsed: i64 = "42".parse()?;
    assert_eq!(n, parsed);
    if n == 42 {
        return Ok(());
    }
    unreachable!("the early return left the test");
}

/// Parameters keep their patterns and attributes; items declared inside the
/// body work as in any fn.
#[db_test]
async fn parameter_patterns_attributes_and_inner_items(
    db: TestDb,
    mut app: Db,
    ref ctx: db_test::TestContext,
    #[allow(unused_variables)] unused: Db,
) {
    const EMAIL: &str = "pattern@example.com";
    fn label(n: i64) -> String {
        format!("{n} user(s)")
    }
    sqlx::query("SELECT 1").execute(&app).await.unwrap();
    app = ctx.db();
    sqlx::query("INSERT INTO users (email) VALUES ($1)")
        .bind(EMAIL)
        .execute(&app)
        .await
        .unwrap();
    assert_eq!(label(count(&db, "users").await), "1 user(s)");
    assert!(!ctx.is_database_mode());
}

#[db_test]
async fn db_parameter_and_fetch_variants(db: Db) {
    sqlx::query("INSERT INTO users (email, name) VALUES ('f@example.com', 'F')")
        .execute(&db)
        .await
        .unwrap();
    let row: (i64, String) = sqlx::query_as("SELECT id, name FROM users")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(row.1, "F");
    let none: Option<(i64,)> = sqlx::query_as("SELECT id FROM users WHERE false")
        .fetch_optional(&db)
        .await
        .unwrap();
    assert!(none.is_none());
    let all: Vec<(String,)> = sqlx::query_as("SELECT email FROM users")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
}

#[db_test]
async fn sql_that_merely_mentions_end_is_not_refused(db: TestDb) {
    sqlx::raw_sql("DO $$ BEGIN PERFORM 1; END $$")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO users (email, name) VALUES ('e@example.com', 'x; end')")
        .execute(&db)
        .await
        .unwrap();
    sqlx::raw_sql("SAVEPOINT mine; ROLLBACK TO SAVEPOINT mine; RELEASE SAVEPOINT mine")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(count(&db, "users").await, 1);
}

/// Written the common sqlx way, to take a pool, a connection or a transaction.
async fn insert_user<'a>(
    conn: impl Acquire<'a, Database = sqlx::Postgres>,
    email: &str,
) -> sqlx::Result<()> {
    let mut conn = conn.acquire().await?;
    sqlx::query("INSERT INTO users (email) VALUES ($1)")
        .bind(email)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn insert_in_a_transaction<'a>(
    conn: impl Acquire<'a, Database = sqlx::Postgres>,
    email: &str,
) -> sqlx::Result<()> {
    let mut tx = conn.begin().await?;
    sqlx::query("INSERT INTO users (email) VALUES ($1)")
        .bind(email)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

#[db_test]
async fn db_and_test_db_are_acquire(db: TestDb) {
    insert_user(&db.db(), "acquire-db@example.com")
        .await
        .unwrap();
    insert_user(&db, "acquire-testdb@example.com")
        .await
        .unwrap();
    // A guard's connection is an Acquire whose begin() is a savepoint.
    let mut conn = db.acquire().await.unwrap();
    insert_in_a_transaction(&mut *conn, "acquire-tx@example.com")
        .await
        .unwrap();
    drop(conn);
    // begin() on &Db and &TestDb: sqlx's Transaction, a savepoint.
    insert_in_a_transaction(&db.db(), "acquire-begin-db@example.com")
        .await
        .unwrap();
    insert_in_a_transaction(&db, "acquire-begin-testdb@example.com")
        .await
        .unwrap();
    assert_eq!(count(&db, "users").await, 5);
    assert_eq!(committed_rows(&db).await, 0);
}

/// `Acquire::begin` on `&Db`: a savepoint of the test's transaction, which
/// commits, rolls back and nests as sqlx's transactions do, leaves the test
/// usable after each, and commits nothing.
#[db_test]
async fn acquire_begin_on_db_is_a_savepoint(db: TestDb) {
    let app = db.db();
    // Committed: seen by the test.
    let mut tx = Acquire::begin(&app).await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('kept@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count(&db, "users").await, 1);
    // Rolled back, explicitly and by drop: gone, the rest stays.
    let mut tx = Acquire::begin(&app).await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('undone@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let mut tx = Acquire::begin(&app).await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('dropped@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    drop(tx);
    assert_eq!(count(&db, "users").await, 1);
    // A failing statement in it: the app rolls back, the test goes on.
    let mut tx = Acquire::begin(&app).await.unwrap();
    let dup = sqlx::query("INSERT INTO users (email) VALUES ('kept@example.com')")
        .execute(&mut *tx)
        .await;
    assert!(dup.is_err());
    drop(tx);
    // Nested: an inner rollback keeps the outer's rows.
    let mut outer = Acquire::begin(&app).await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('outer@example.com')")
        .execute(&mut *outer)
        .await
        .unwrap();
    let mut inner = Acquire::begin(&mut *outer).await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('inner@example.com')")
        .execute(&mut *inner)
        .await
        .unwrap();
    inner.rollback().await.unwrap();
    outer.commit().await.unwrap();
    let emails: Vec<String> = sqlx::query_scalar("SELECT email FROM users ORDER BY email")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(emails, ["kept@example.com", "outer@example.com"]);
    assert_eq!(committed_rows(&db).await, 0);
}

/// While a transaction from `Acquire::begin` is open, the test's other
/// calls wait for it (one connection); another task's call goes through
/// once it commits.
#[db_test]
async fn acquire_begin_holds_the_connection_until_it_ends(db: TestDb) {
    let app = db.db();
    let mut tx = Acquire::begin(&app).await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('first@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let other = app.clone();
    let waiting = tokio::spawn(async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM users")
            .fetch_one(&other)
            .await
            .unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "it waits for the transaction");
    tx.commit().await.unwrap();
    assert_eq!(waiting.await.unwrap(), 1, "and sees its row once it ends");
}

#[db_test(isolation = "database")]
async fn acquire_begin_on_a_pool_backed_db_is_a_transaction(db: Db) {
    insert_in_a_transaction(&db, "pool-tx@example.com")
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

/// A statement dropped mid-way inside a transaction from `Acquire::begin`
/// (a timeout around it): the transaction is dropped too, its connection
/// comes back to the test, and the test goes on with its own rows only.
#[db_test]
async fn a_statement_dropped_inside_an_acquire_begin_transaction(db: TestDb) {
    let app = db.db();
    sqlx::query("INSERT INTO users (email) VALUES ('before@example.com')")
        .execute(&db)
        .await
        .unwrap();
    let mut tx = Acquire::begin(&app).await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('in-tx@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let cut = tokio::time::timeout(
        std::time::Duration::from_millis(50),
        sqlx::query("SELECT pg_sleep(2)").execute(&mut *tx),
    )
    .await;
    assert!(cut.is_err(), "the timeout cut the statement");
    drop(tx);
    let emails: Vec<String> = sqlx::query_scalar("SELECT email FROM users ORDER BY email")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(emails, ["before@example.com"]);
}

/// Case mapping and character classes know UTF-8, as on the UTF-8 servers
/// suites are written against: the embedded server's cluster has a
/// `C.UTF-8` `LC_CTYPE` (with byte-order collation). A server named by
/// `DATABASE_URL` has its own locale: checked only where it has one.
#[db_test]
async fn text_functions_know_utf8(db: TestDb) {
    let ctype: String = sqlx::query_scalar(
        "SELECT datctype::text FROM pg_database WHERE datname = current_database()",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    let embedded = std::env::var_os("DATABASE_URL").is_none_or(|v| v.is_empty())
        && std::env::var_os("DB_TEST_POSTGRES_URL").is_none_or(|v| v.is_empty());
    if embedded {
        assert!(
            ctype.eq_ignore_ascii_case("C.UTF-8") || ctype.eq_ignore_ascii_case("C.utf8"),
            "{ctype}"
        );
    }
    if ctype != "C" && ctype != "POSIX" {
        let (lower, upper, ilike, alpha): (String, String, bool, bool) = sqlx::query_as(
            "SELECT lower('ÉCOLE Ä'), upper('straße é'), 'Émile' ILIKE 'émile', 'é' ~ '^[[:alpha:]]$'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(lower, "école ä");
        assert_eq!(upper, "STRAßE É");
        assert!(ilike);
        assert!(alpha);
    }
}

/// `commit()` of an app transaction that an error aborted: in production the
/// server answers `COMMIT` with `ROLLBACK` and sqlx returns `Ok`; the rows
/// are gone, and the connection goes on.
#[db_test]
async fn committing_an_app_transaction_an_error_aborted_rolls_it_back(db: TestDb) {
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('aborted@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert!(sqlx::query("SELECT 1/0").execute(&mut *tx).await.is_err());
    tx.commit().await.unwrap();
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE email = 'aborted@example.com'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(n, 0);
    sqlx::query("INSERT INTO users (email) VALUES ('after@example.com')")
        .execute(&db)
        .await
        .unwrap();
}

async fn setting(db: &TestDb, name: &str) -> Option<String> {
    sqlx::query_scalar("SELECT current_setting($1, true)")
        .bind(name)
        .fetch_one(db)
        .await
        .unwrap()
}

async fn role(db: &TestDb) -> (String, String) {
    sqlx::query_as("SELECT current_user::text, session_user::text")
        .fetch_one(db)
        .await
        .unwrap()
}

// The row-level-security pattern: each request transaction sets who is
// asking with `set_config(.., true)` or `SET LOCAL`; production's COMMIT
// drops the setting, so the next request, which sets none, is nobody.
#[db_test]
async fn a_local_setting_ends_with_the_app_transaction_that_made_it(db: TestDb) {
    let before = role(&db).await;
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('rls@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT set_config('app.user_id', $1, true)")
        .bind("42")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::raw_sql("SET LOCAL ROLE pg_monitor; SET LOCAL work_mem = '7MB'")
        .execute(&mut *tx)
        .await
        .unwrap();
    let (user, work_mem): (String, String) =
        sqlx::query_as("SELECT current_setting('app.user_id'), current_setting('work_mem')")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_eq!((user.as_str(), work_mem.as_str()), ("42", "7MB"));
    tx.commit().await.unwrap();
    assert_eq!(count(&db, "users").await, 1);
    // As production leaves them: defined once set, empty; the role and
    // `work_mem` as before.
    assert_eq!(setting(&db, "app.user_id").await.as_deref(), Some(""));
    assert_eq!(role(&db).await, before);
    assert_ne!(setting(&db, "work_mem").await.as_deref(), Some("7MB"));
    // A guard taken now arms db-test's commit guard as the test's own role.
    let mut conn = db.acquire().await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('after-rls@example.com')")
        .execute(&mut *conn)
        .await
        .unwrap();
}

// A helper of the app's that sets who is asking, on the connection it is
// given (`&mut DbConn`, which `&mut *tx` gives): db-test reads its SQL.
async fn set_user(conn: &mut db_test::DbConn, id: &str) -> sqlx::Result<()> {
    sqlx::query("SELECT set_config('app.user_id', $1, true)")
        .bind(id)
        .execute(conn)
        .await
        .map(|_| ())
}

#[db_test]
async fn a_local_setting_made_by_a_helper_on_the_transaction_ends_with_it(db: TestDb) {
    let mut tx = db.begin().await.unwrap();
    set_user(&mut tx, "8").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(setting(&db, "app.user_id").await.as_deref(), Some(""));
}

// A function of the app's that sets who is asking for the transaction only
// (`SELECT app_set_user($1)`): db-test finds the setting in the function's
// body, and it ends with the app transaction's commit too.
#[db_test(migrations = "migrations_rls")]
async fn a_local_setting_made_by_a_function_of_the_schema_ends_with_the_commit(db: TestDb) {
    let mut tx = db.begin().await.unwrap();
    sqlx::query("SELECT app_set_user($1)")
        .bind(9_i64)
        .execute(&mut *tx)
        .await
        .unwrap();
    let inside: String = sqlx::query_scalar("SELECT current_setting('app.user_id')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(inside, "9");
    tx.commit().await.unwrap();
    assert_eq!(setting(&db, "app.user_id").await.as_deref(), Some(""));
    for sql in [
        "SELECT app_set_user(10)",
        "SELECT \"app_set_user\" /* quoted */ (11)",
        "SELECT app_as_admin()",
        "INSERT INTO marks VALUES (1)",
    ] {
        sqlx::query(sql).execute(&db).await.unwrap();
        assert_eq!(
            setting(&db, "app.user_id").await.as_deref(),
            Some(""),
            "{sql}"
        );
    }
    assert_eq!(setting(&db, "app.marked").await.as_deref(), Some(""));
    // Session-wide, in a function or not: it stays, as in production.
    sqlx::query("SELECT app_login(5)")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(setting(&db, "app.user_id").await.as_deref(), Some("5"));
    sqlx::query("SELECT set_config('app.user_id', '7', false)")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(setting(&db, "app.user_id").await.as_deref(), Some("7"));
}

// A setting made inside an app transaction that is then rolled back goes,
// and one made by a second transaction after a first one's commit ends with
// the second.
#[db_test]
async fn local_settings_follow_each_app_transaction(db: TestDb) {
    for (id, commit) in [("1", true), ("2", false), ("3", true)] {
        let mut tx = db.begin().await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET LOCAL app.user_id = '{id}'"
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        let seen: String = sqlx::query_scalar("SELECT current_setting('app.user_id')")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(seen, id);
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        assert_eq!(setting(&db, "app.user_id").await.as_deref(), Some(""));
    }
    // A session-wide setting made inside one stays after its commit.
    let mut tx = db.begin().await.unwrap();
    sqlx::query(
        "SELECT set_config('app.tenant', 't1', false), set_config('app.user_id', '9', true)",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(setting(&db, "app.tenant").await.as_deref(), Some("t1"));
    assert_eq!(setting(&db, "app.user_id").await.as_deref(), Some(""));
}

// Outside any transaction, production runs each statement in a transaction
// of its own: `set_config(.., true)` lasts for that statement, and `SET
// LOCAL` does nothing (the server warns).
#[db_test]
async fn a_local_setting_outside_an_app_transaction_lasts_one_statement(db: TestDb) {
    let during: String = sqlx::query_scalar(
        "SELECT set_config('app.user_id', '5', true) || current_setting('app.user_id')",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(during, "55");
    assert_eq!(setting(&db, "app.user_id").await.as_deref(), Some(""));
    sqlx::query("SET LOCAL statement_timeout = '1ms'")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("SELECT pg_sleep(0.05)")
        .execute(&db)
        .await
        .unwrap();
    // A session-wide one stays, and a failing statement after it does not
    // take it back.
    sqlx::query("SELECT set_config('app.mode', 'x', false)")
        .execute(&db)
        .await
        .unwrap();
    assert!(sqlx::query("SELECT 1/0").execute(&db).await.is_err());
    assert_eq!(setting(&db, "app.mode").await.as_deref(), Some("x"));
}

// `Db::begin_with` under a transaction-mode test: a savepoint, with the
// statement's transaction modes set on it.

#[db_test]
async fn begin_with_read_only_refuses_writes_until_it_ends(db: TestDb) {
    let app = db.db();
    let mut tx = app.begin_with("BEGIN READ ONLY").await.unwrap();
    let write = sqlx::query("INSERT INTO users (email) VALUES ('ro@example.com')")
        .execute(&mut *tx)
        .await;
    let code = write
        .as_ref()
        .err()
        .and_then(|e| e.as_database_error())
        .and_then(|e| e.code().map(|c| c.into_owned()));
    assert_eq!(code.as_deref(), Some("25006"), "{write:?}");
    drop(tx);
    // Writable again once it ended, as after production's ROLLBACK.
    sqlx::query("INSERT INTO users (email) VALUES ('rw@example.com')")
        .execute(&app)
        .await
        .unwrap();
    let mut tx = app.begin_with("BEGIN READ ONLY").await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 1);
    tx.commit().await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('rw2@example.com')")
        .execute(&app)
        .await
        .unwrap();
}

#[db_test]
async fn begin_with_another_isolation_level_says_to_use_database_mode(db: TestDb) {
    let app = db.db();
    let err = app
        .begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE")
        .await
        .expect_err("SERIALIZABLE inside the test's READ COMMITTED transaction");
    assert!(
        err.to_string().contains("isolation = \"database\""),
        "{err}"
    );
}

#[db_test]
async fn begin_with_the_tests_own_isolation_level_works(db: TestDb) {
    let app = db.db();
    let mut tx = app
        .begin_with("START TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .await
        .unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('rc@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}
