//! What the macro knows about one test ([`TestSpec`]): its migrations,
//! fixtures, isolation, timeout and runtime flavor.

use crate::postgres::engine::Migrations;

/// What `migrator = "PATH"` may name: a `static Migrator` (from
/// `sqlx::migrate!`), or a `LazyLock<Migrator>` built at run time.
pub trait AsMigrator: Sync + 'static {
    /// The migrator.
    fn as_migrator(&'static self) -> &'static sqlx::migrate::Migrator;
}

impl AsMigrator for sqlx::migrate::Migrator {
    fn as_migrator(&'static self) -> &'static sqlx::migrate::Migrator {
        self
    }
}

impl AsMigrator for std::sync::LazyLock<sqlx::migrate::Migrator> {
    fn as_migrator(&'static self) -> &'static sqlx::migrate::Migrator {
        self
    }
}

/// One SQL fixture, embedded with `include_str!`.
#[derive(Debug, Clone, Copy)]
pub struct Fixture {
    /// The path as written in the attribute.
    pub path: &'static str,
    /// The file's contents.
    pub sql: &'static str,
}

/// How a test is isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// A transaction on the shared working database, rolled back at the end.
    Transaction,
    /// A fresh database cloned from the template, dropped at the end.
    Database,
}

/// Which tokio runtime a test's body runs on (`flavor = ".."`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// A current-thread runtime of the test's own, on the test's thread, as
    /// `#[tokio::test]` and `#[sqlx::test]` give: what the body spawns runs
    /// on that thread and is dropped when the test ends.
    CurrentThread,
    /// db-test's shared multi-thread runtime; with `worker_threads`, a
    /// multi-thread runtime of the test's own.
    MultiThread,
}

/// Everything the macro knows about one test.
#[derive(Debug)]
pub struct TestSpec {
    /// `module_path!()::name`.
    pub name: &'static str,
    /// `env!("CARGO_MANIFEST_DIR")` of the test's crate.
    pub manifest_dir: &'static str,
    /// Where migrations come from.
    pub migrations: Migrations,
    /// Fixtures, in order.
    pub fixtures: &'static [Fixture],
    /// Explicit isolation, or `None` to choose from the parameters.
    pub isolation: Option<Isolation>,
    /// What the parameters need, from their types.
    pub params: ParamSpec,
    /// Timeout in milliseconds; 0 means the default.
    pub timeout_ms: u64,
    /// Run `SET CONSTRAINTS ALL IMMEDIATE` before the rollback.
    pub check_constraints: bool,
    /// Explicit `flavor`, or `None` for the default.
    pub flavor: Option<Flavor>,
    /// `worker_threads` (multi-thread only); 0 when not given.
    pub worker_threads: usize,
    /// `start_paused = true` (current-thread only).
    pub start_paused: bool,
}

/// The isolation a test gets: the explicit one, else from its parameters.
pub(crate) fn isolation_of(spec: &TestSpec) -> Isolation {
    spec.isolation.unwrap_or(if spec.params.wants_database {
        Isolation::Database
    } else {
        Isolation::Transaction
    })
}

impl TestSpec {
    /// The test's timeout: its attribute's, else `DB_TEST_TIMEOUT`'s.
    pub(crate) fn timeout(&self) -> std::time::Duration {
        if self.timeout_ms == 0 {
            crate::config::default_test_timeout()
        } else {
            std::time::Duration::from_millis(self.timeout_ms)
        }
    }

    /// A test with no parameters and nothing in its attribute that needs
    /// a database (fixtures, migrations, an isolation): `#[sqlx::test]`
    /// runs such a test without one.
    pub(crate) fn needs_no_database(&self) -> bool {
        matches!(self.params.backend, crate::Backend::Any)
            && self.fixtures.is_empty()
            && matches!(self.migrations, Migrations::Default)
            && self.isolation.is_none()
    }
}

/// What a test's parameters need, from their types.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    /// Whether any parameter needs a database of its own.
    pub wants_database: bool,
    /// Whether every parameter is one of `#[sqlx::test]`'s types (or there
    /// is none): the test then defaults to `#[sqlx::test]`'s runtime.
    pub sqlx_style: bool,
    /// The database the test runs on.
    pub backend: crate::Backend,
    /// Whether a parameter named it (else it is PostgreSQL by default).
    pub backend_named: bool,
}

/// The [`ParamSpec`] of a test with one parameter of type `T`, as a
/// constant of one generic item: evaluated once per parameter type, however
/// many tests use it. (Written out in each test's spec, the same expressions
/// were type-checked and evaluated again for every test: 0.1 s of a
/// 500-test build.)
#[doc(hidden)]
pub struct Param<T>(std::marker::PhantomData<T>);

impl<T: crate::FromTestContext> Param<T> {
    /// What `T` needs.
    pub const SPEC: ParamSpec = ParamSpec {
        wants_database: T::NEEDS_OWN_DATABASE,
        sqlx_style: T::SQLX_TEST_TYPE,
        backend: crate::Backend::of(&[T::BACKEND]),
        backend_named: crate::Backend::named(&[T::BACKEND]),
    };
}
