// A project that renamed the dependency (or re-exports db-test from a
// crate of its own) says where it is.
use ::db_test as testing;
use testing::{db_test, TestDb};

#[db_test(crate = "testing", timeout = "1.5s")]
async fn renamed(db: TestDb) {
    let _ = db;
}

fn main() {}
