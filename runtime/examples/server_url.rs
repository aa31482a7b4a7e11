//! Prints the URL of the server db-test uses, starting the embedded server
//! if `DATABASE_URL` is unset:
//!
//! ```text
//! psql "$(cargo run -q -p db-test --example server_url)"
//! cargo run -q -p db-test --example server_url -- my_db   # same server, database my_db
//! ```

fn main() {
    let url = match db_test::server_url() {
        Ok(url) => url,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    match std::env::args().nth(1) {
        None => println!("{url}"),
        Some(database) => {
            let mut url = url::Url::parse(&url).expect("server_url returns a valid URL");
            url.set_path(&format!("/{database}"));
            println!("{url}");
        }
    }
}
