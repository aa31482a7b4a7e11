//! Prints the URL of the server db-test uses, starting the embedded server
//! if `DATABASE_URL` is unset: `psql "$(cargo run -q -p db-test --example server_url)"`.

fn main() {
    match db_test::server_url() {
        Ok(url) => println!("{url}"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
