use db_test::db_test;

struct NotAnExtractor;

#[db_test]
async fn wrong_param(value: NotAnExtractor) {
    let _ = value;
}

fn main() {}
