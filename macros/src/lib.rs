//! Procedural macros for [db-test](https://docs.rs/db-test). Use them through
//! the `db-test` crate, which re-exports [`macro@db_test`].

mod attr;
mod expand;
mod valid;

use proc_macro::TokenStream;

/// Marks an `async fn` as a database test.
///
/// Each parameter is built by `db_test::FromTestContext`, chosen by type
/// (`TestDb`, `Db`, `TestClient<App>`, your own types). The test runs inside a
/// transaction that is rolled back at the end, on db-test's shared
/// multi-thread runtime; a test whose parameters are all `#[sqlx::test]`'s
/// types (or that has none) runs on a current-thread runtime of its own, as
/// under `#[sqlx::test]`.
///
/// Attribute keys (the same syntax as `#[sqlx::test]`):
/// - `migrations = "path"` (relative to the crate root), `migrations = false`,
///   `migrator = "path::TO::MIGRATOR"`;
/// - `fixtures("a", "b")`, `fixtures("../x/a.sql")`,
///   `fixtures(path = "dir", scripts("a", "b"))`, repeatable;
/// - `timeout = "30s"` (default 60 s);
/// - `isolation = "transaction"` (default) or `"database"`;
/// - `check_constraints = false` to skip the checks of deferred constraints
///   (where production's `COMMIT` would check them, and at the end);
/// - `flavor = "current_thread"` or `"multi_thread"`, `worker_threads = N`
///   (multi-thread only) and `start_paused = true` (current-thread only), as
///   in `#[tokio::test]`.
#[proc_macro_attribute]
pub fn db_test(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::db_test(args.into(), item.into()).into()
}
