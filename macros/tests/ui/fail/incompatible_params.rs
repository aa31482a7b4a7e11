use db_test::{db_test, BoxError, FromTestContext, TestContext};
use sqlx::PgPool;

/// A fixture that relies on its writes being rolled back.
struct Seeded;

impl FromTestContext for Seeded {
    const NEEDS_SHARED_TRANSACTION: bool = true;
    async fn from_context(_ctx: &TestContext) -> Result<Self, BoxError> {
        Ok(Seeded)
    }
}

#[db_test]
async fn mixed(seeded: Seeded, pool: PgPool) {
    let _ = (seeded, pool);
}

#[db_test(isolation = "database")]
async fn in_its_own_database(seeded: Seeded) {
    let _ = seeded;
}

fn main() {}
