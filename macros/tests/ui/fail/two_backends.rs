use db_test::{db_test, Backend, BoxError, FromTestContext, TestContext, TestDb};

/// A fixture of another database than PostgreSQL.
struct OnMySql;

impl FromTestContext for OnMySql {
    const BACKEND: Backend = Backend::MySql;
    async fn from_context(_ctx: &TestContext) -> Result<Self, BoxError> {
        Ok(OnMySql)
    }
}

#[db_test]
async fn mixed(db: TestDb, other: OnMySql) {
    let _ = (db, other);
}

fn main() {}
