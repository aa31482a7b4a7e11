//! Prints the URL of the server db-test uses, starting the embedded server
//! if no URL is set:
//!
//! ```text
//! psql "$(cargo run -q -p db-test --example server_url)"
//! cargo run -q -p db-test --example server_url -- my_db   # same server, database my_db
//! cargo run -q -p db-test --features mysql --example server_url -- --mysql [my_db]
//! ```

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mysql = args.first().is_some_and(|a| a == "--mysql");
    if mysql {
        args.remove(0);
    }
    let url = if mysql {
        mysql_url()
    } else {
        db_test::server_url()
    };
    let url = match url {
        Ok(url) => url,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    match args.first() {
        None => println!("{url}"),
        Some(database) => {
            let mut url = url::Url::parse(&url).expect("server_url returns a valid URL");
            url.set_path(&format!("/{database}"));
            println!("{url}");
        }
    }
}

#[cfg(feature = "mysql")]
fn mysql_url() -> Result<String, String> {
    db_test::mysql::server_url()
}

#[cfg(not(feature = "mysql"))]
fn mysql_url() -> Result<String, String> {
    Err("build the example with `--features mysql` for --mysql".to_string())
}
