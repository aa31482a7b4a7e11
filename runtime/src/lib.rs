#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

#[cfg(feature = "harness")]
mod config;
#[cfg(feature = "harness")]
mod context;
mod db;
#[cfg(feature = "harness")]
mod postgres;
mod shared;
#[cfg(feature = "harness")]
mod testdb;

pub use db::{Db, DbConnection, DbTransaction};

#[cfg(feature = "harness")]
pub use context::{BoxError, FromTestContext, TestContext};
#[cfg(feature = "harness")]
pub use db_test_macros::db_test;
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

#[cfg(feature = "harness")]
#[doc(hidden)]
pub mod __private {
    pub use crate::run::*;
}

#[cfg(feature = "harness")]
mod run;
