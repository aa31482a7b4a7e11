#![cfg_attr(feature = "harness", doc = include_str!("../README.md"))]
#![cfg_attr(
    not(feature = "harness"),
    doc = "db-test built without its `harness` feature: only [`Db`], the app-facing \
           database handle, for applications that store it in their state. Enable \
           `harness` (the default) in dev-dependencies for `#[db_test]`."
)]
#![warn(missing_docs)]

#[cfg(feature = "harness")]
mod client;
#[cfg(feature = "harness")]
mod config;
#[cfg(feature = "harness")]
mod context;
// Without the harness, `Db` is only ever a pool: the test-side paths are unused.
#[cfg(feature = "harness")]
mod clock;
mod db;
#[cfg(feature = "harness")]
mod duration;
#[cfg(feature = "harness")]
mod error;
#[cfg(any(feature = "mysql", feature = "sqlite"))]
pub mod generic;
#[cfg(feature = "harness")]
mod hint;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "harness")]
mod postgres;
#[cfg(feature = "harness")]
mod query;
#[cfg(feature = "harness")]
mod shared;
#[cfg(feature = "harness")]
mod slots;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "harness")]
mod sqltext;
#[cfg(feature = "harness")]
mod testdb;
#[cfg(feature = "harness")]
mod unix_clients;

pub use db::{Db, DbAcquired, DbConn, DbConnection, DbTransaction};

#[cfg(feature = "harness")]
pub use client::*;
#[cfg(feature = "harness")]
pub use context::{Backend, BoxError, FromTestContext, TestContext};
#[cfg(feature = "harness")]
pub use db_test_macros::db_test;
#[cfg(feature = "harness")]
pub use error::{Error, ErrorKind};
#[cfg(feature = "harness")]
pub use testdb::TestDb;

/// The one multi-thread tokio runtime that every `#[db_test]` runs on.
///
/// It is created on first use and never dropped, so a pool or connection
/// made by one test stays valid in every later test of the process. Worker
/// threads: `DB_TEST_WORKER_THREADS`, else the machine's parallelism, at
/// least 2. IO and time drivers are enabled.
#[cfg(feature = "harness")]
pub fn runtime() -> &'static tokio::runtime::Runtime {
    run::shared_runtime()
}

/// The URL of the server db-test uses: `DATABASE_URL` (or `.env`), or the
/// embedded server, which this call starts if it is not running. Handy for
/// `psql`, sqlx-cli or a benchmark that needs the same server:
///
/// ```text
/// psql "$(cargo run -q -p db-test --example server_url)"
/// ```
///
/// Tests never run in the database this URL names; db-test uses it only to
/// create and drop databases of its own.
#[cfg(feature = "harness")]
pub fn server_url() -> Result<String, String> {
    runtime().block_on(async { postgres::engine::engine().await.map(|e| e.server_url()) })
}

#[cfg(feature = "harness")]
#[doc(hidden)]
pub mod __private {
    pub use crate::duration::duration_ms;
    pub use crate::run::*;
}

#[cfg(feature = "harness")]
mod run;
