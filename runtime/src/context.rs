//! The test context and the `FromTestContext` extractor trait.

use std::future::Future;
use std::sync::Arc;

use crate::Db;

/// An error while building a test parameter.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything a `#[db_test]` knows about the running test. Parameters of the
/// test function are built from it by [`FromTestContext`].
#[derive(Clone)]
pub struct TestContext {
    pub(crate) inner: Arc<ContextInner>,
}

pub(crate) struct ContextInner {
    pub(crate) name: &'static str,
    pub(crate) db: Db,
    pub(crate) shared: Option<std::sync::Arc<crate::shared::SharedConn>>,
}

impl TestContext {
    /// The test's database handle: bound to the test's transaction in
    /// transaction mode, or a pool on the test's own database in database mode.
    pub fn db(&self) -> Db {
        self.inner.db.clone()
    }

    /// The test's path, such as `my_crate::tests::inserts_a_user`.
    pub fn test_name(&self) -> &'static str {
        self.inner.name
    }
}

/// Builds a test parameter from the [`TestContext`], the way axum extractors
/// build handler parameters from a request.
///
/// Implement it for your own fixture types:
///
/// ```
/// use db_test::{BoxError, FromTestContext, TestContext};
///
/// struct Admin { id: i64 }
///
/// impl FromTestContext for Admin {
///     async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
///         let db = ctx.db();
///         let id: i64 = sqlx::query_scalar("SELECT 1::int8").fetch_one(&db).await?;
///         Ok(Admin { id })
///     }
/// }
/// ```
pub trait FromTestContext: Sized + Send {
    /// Builds the value. An error fails the test with the parameter's type name.
    fn from_context(ctx: &TestContext) -> impl Future<Output = Result<Self, BoxError>> + Send;
}

impl FromTestContext for Db {
    async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
        Ok(ctx.db())
    }
}
