use db_test::{db_test, TestDb};

#[db_test(timeout = "soon")]
async fn bad_timeout(db: TestDb) {
    let _ = db;
}

fn main() {}
