use db_test::{db_test, TestDb};

#[db_test(flavor = "single_thread")]
async fn bad_flavor(db: TestDb) {
    let _ = db;
}

fn main() {}
