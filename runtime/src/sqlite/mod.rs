//! SQLite: `Db`, `TestDb` and the engine behind `#[db_test]` on `SqlitePool`.
