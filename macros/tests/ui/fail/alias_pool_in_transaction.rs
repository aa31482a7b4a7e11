use db_test::db_test;

// An alias is what it names: a pool needs a database of its own.
type DbPool = sqlx::PgPool;

#[db_test(isolation = "transaction")]
async fn alias(pool: DbPool) {
    let _ = pool;
}

fn main() {}
