use db_test::{db_test, FromTestContext};

#[db_test]
async fn generic<T: FromTestContext>(value: T) {
    let _ = value;
}

fn main() {}
