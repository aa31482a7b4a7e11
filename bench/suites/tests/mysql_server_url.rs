//! Not a benchmark: prints the MySQL/MariaDB server db-test runs the MySQL
//! suites on (`DB_TEST_MYSQL_URL`, else its embedded server, which this
//! starts if it is not running), so that bench/run.sh can run
//! `#[sqlx::test]` on the same server. db-test has no call that returns it
//! (PostgreSQL's is `db_test::server_url()`), but a test's connect options
//! name it. Run with `--nocapture`; db-test's error says why there is none.

use db_test::db_test;
use db_test::mysql::TestDb;

#[db_test(migrations = "./migrations-mysql")]
async fn server_url(db: TestDb) {
    let options = db.connect_options();
    println!("BENCH_MYSQL_USER={}", options.get_username());
    println!("BENCH_MYSQL_HOST={}", options.get_host());
    println!("BENCH_MYSQL_PORT={}", options.get_port());
    if let Some(socket) = options.get_socket() {
        println!("BENCH_MYSQL_SOCKET={}", socket.display());
    }
}
