use db_test::db_test;
use sqlx::PgPool;

#[db_test(isolation = "transaction")]
async fn pool(pool: PgPool) {
    let _ = pool;
}

fn main() {}
