use db_test::{db_test, TestDb};

struct Suite;

impl Suite {
    #[db_test]
    async fn method(&self, db: TestDb) {
        let _ = db;
    }
}

fn main() {}
