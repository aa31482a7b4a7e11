use db_test::{db_test, TestDb};

#[db_test(isolation = "bogus")]
async fn bad_isolation(db: TestDb) {
    let _ = db;
}

fn main() {}
