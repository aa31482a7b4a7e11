//! MySQL and MariaDB: `Db`, `TestDb` and the engine behind `#[db_test]` on `MySqlPool`.
