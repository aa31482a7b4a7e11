use db_test::db_test;

#[db_test(migrations = "migrations")]
async fn with_migrations() {}

#[db_test(fixtures("users"), isolation = "database")]
async fn with_fixtures_and_isolation() {}

// Keys that need no database are fine.
#[db_test(timeout = "5s", flavor = "current_thread")]
async fn with_a_timeout() {}

fn main() {}
