use db_test::{db_test, TestDb};

// Every problem is reported at once, not only the first.
#[db_test(isolation = "sometimes", flavor = 3, retries = 2)]
async fn several<T>(db: TestDb) {
    let _ = db;
}

fn main() {}
