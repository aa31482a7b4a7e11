//! [`TestApp`], how a `#[db_test]` builds the app under test, and
//! [`TestClient`], the in-process client that sends requests to it.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use axum::Router;
use axum::http::Method;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::cookies::{SharedJar, lock};
use super::header_pair;
use super::request::TestRequest;
use crate::{BoxError, Db, FromTestContext, TestContext};

/// An application under test: how to build its [`Router`] around the test's
/// database.
///
/// Implement it once per app configuration. A `#[db_test]` parameter of type
/// [`TestClient<App>`](TestClient) is then built from the test's database, so
/// everything the app writes is rolled back with the test. The router is
/// built once per test, when that parameter is.
///
/// Implement **one** of:
///
/// - [`router`](TestApp::router), when the app is built synchronously from a
///   [`Db`]:
///
///   ```no_run
///   use axum::{Router, routing::get};
///   use db_test::{Db, TestApp};
///
///   struct App;
///
///   impl TestApp for App {
///       fn router(db: Db) -> Router {
///           Router::new()
///               .route("/health", get(|| async { "ok" }))
///               .with_state(db)
///       }
///   }
///   ```
///
/// - [`build`](TestApp::build), when building it takes `.await`s (loading
///   configuration, building clients, warming caches) or needs more of the
///   [`TestContext`] than the database. The app is built on the test's
///   runtime, inside the test's transaction, before the test body runs:
///
///   ```no_run
///   use axum::{Router, routing::get};
///   use db_test::{TestApp, TestContext};
///
///   struct App;
///
///   impl TestApp for App {
///       async fn build(ctx: &TestContext) -> Router {
///           let db = ctx.db();
///           let greeting: String = sqlx::query_scalar("SELECT 'hello'")
///               .fetch_one(&db)
///               .await
///               .expect("warm the greeting cache");
///           Router::new().route("/", get(move || async move { greeting }))
///       }
///   }
///   ```
pub trait TestApp: Send + Sync + 'static {
    /// The database the app runs on, so that a test whose only parameter
    /// is a `TestClient<Self>` runs on it. [`Backend::Any`](crate::Backend::Any)
    /// (the default) leaves the choice to the test's other parameters, and
    /// is PostgreSQL when none names one.
    const BACKEND: crate::Backend = crate::Backend::Any;

    /// Builds the application's router around the test's database handle.
    ///
    /// The default panics: an app that implements only
    /// [`build`](TestApp::build) has no synchronous constructor, so
    /// [`TestClient::from_db`] cannot build it.
    fn router(db: Db) -> Router {
        let _ = db;
        panic!(
            "`TestApp::router` is not implemented for `{}`: implement `router`, or `build` \
             for an app built asynchronously. An app that implements only `build` is built \
             from a `TestContext` (as a `#[db_test]` parameter, or with \
             `FromTestContext::from_context`), not with `TestClient::from_db`",
            std::any::type_name::<Self>()
        )
    }

    /// Builds the router synchronously with access to the whole
    /// [`TestContext`]. Defaults to [`TestApp::router`] with
    /// [`TestContext::db`]. Prefer [`build`](TestApp::build), which can also
    /// `.await`.
    fn router_for(ctx: &TestContext) -> Router {
        Self::router(ctx.db())
    }

    /// Builds the router with access to the whole [`TestContext`], and may
    /// `.await` while doing so. This is what a `#[db_test]` parameter of type
    /// [`TestClient<Self>`](TestClient) calls, once per test.
    ///
    /// Defaults to [`TestApp::router_for`], hence to [`TestApp::router`].
    /// Implement it as an `async fn`; the future must be `Send`, as the test
    /// may move between threads of the shared runtime.
    fn build(ctx: &TestContext) -> impl Future<Output = Router> + Send {
        let router = Self::router_for(ctx);
        async move { router }
    }
}

/// An in-process HTTP client for an axum [`Router`].
///
/// Each request is sent with [`tower::ServiceExt::oneshot`] on a clone of the
/// router: no port, no network. The client is cheap to clone and can be moved
/// into spawned tasks to send requests concurrently. Clones share the cookie
/// jar (if enabled with [`with_cookies`](TestClient::with_cookies)) and copy
/// the default headers.
///
/// Under `#[db_test]`, ask for `TestClient<App>` where `App` implements
/// [`TestApp`]. Outside of it, build one from any router with
/// [`TestClient::new`]:
///
/// ```
/// use axum::{Router, routing::get};
/// use db_test::TestClient;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let app = Router::new().route("/hello", get(|| async { "hi" }));
/// let client = TestClient::new(app);
///
/// let res = client.get("/hello").await;
/// res.assert_status(200);
/// assert_eq!(res.text(), "hi");
/// # }
/// ```
///
/// The type parameter `A` only tells `#[db_test]` which [`TestApp`] to build;
/// every client behaves the same whatever it is.
pub struct TestClient<A = ()> {
    router: Router,
    default_headers: HeaderMap,
    cookies: Option<SharedJar>,
    _app: PhantomData<fn() -> A>,
}

impl<A> Clone for TestClient<A> {
    fn clone(&self) -> Self {
        TestClient {
            router: self.router.clone(),
            default_headers: self.default_headers.clone(),
            cookies: self.cookies.clone(),
            _app: PhantomData,
        }
    }
}

impl<A> fmt::Debug for TestClient<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestClient")
            .field("app", &std::any::type_name::<A>())
            .field("default_headers", &self.default_headers)
            .field(
                "cookies",
                &self.cookies.as_ref().map(|jar| lock(jar).clone()),
            )
            .finish_non_exhaustive()
    }
}

impl TestClient<()> {
    /// A client for `router`. Use [`TestClient::from_router`] to get a
    /// `TestClient<App>` instead.
    pub fn new(router: Router) -> Self {
        Self::from_router(router)
    }
}

impl<A: TestApp> TestClient<A> {
    /// A client for `A`'s router built around `db`: `A::router(db)`.
    ///
    /// # Panics
    ///
    /// If `A` implements only [`TestApp::build`]; use
    /// [`FromTestContext::from_context`] then.
    pub fn from_db(db: Db) -> Self {
        Self::from_router(A::router(db))
    }
}

/// `TestClient<A>` as a `#[db_test]` parameter: a client for the router of
/// [`A::build`](TestApp::build), built once per test.
impl<A: TestApp> FromTestContext for TestClient<A> {
    const BACKEND: crate::Backend = A::BACKEND;
    async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
        Ok(Self::from_router(A::build(ctx).await))
    }
}

impl<A> TestClient<A> {
    /// A client for `router`, with any app type: `TestClient::<App>::from_router(r)`.
    pub fn from_router(router: Router) -> Self {
        TestClient {
            router,
            default_headers: HeaderMap::new(),
            cookies: None,
            _app: PhantomData,
        }
    }

    /// The router this client sends requests to.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Returns the client with a header that is sent on every request, unless
    /// the request sets the same header itself.
    ///
    /// # Panics
    ///
    /// If the name or the value is not a valid header name or value.
    ///
    /// ```
    /// # let router = axum::Router::new();
    /// let client = db_test::TestClient::new(router)
    ///     .with_default_header("x-request-source", "tests");
    /// ```
    #[track_caller]
    pub fn with_default_header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        K::Error: fmt::Display,
        V: TryInto<HeaderValue>,
        V::Error: fmt::Display,
    {
        self.set_default_header(name, value);
        self
    }

    /// Sets a header that is sent on every later request from this client (and
    /// from clones made afterwards), unless the request sets it itself.
    ///
    /// # Panics
    ///
    /// If the name or the value is not a valid header name or value.
    #[track_caller]
    pub fn set_default_header<K, V>(&mut self, name: K, value: V) -> &mut Self
    where
        K: TryInto<HeaderName>,
        K::Error: fmt::Display,
        V: TryInto<HeaderValue>,
        V::Error: fmt::Display,
    {
        let (name, value) = header_pair(name, value);
        self.default_headers.insert(name, value);
        self
    }

    /// Returns the client with `Authorization: Bearer <token>` on every request.
    #[track_caller]
    pub fn with_bearer(self, token: impl fmt::Display) -> Self {
        self.with_default_header(header::AUTHORIZATION, format!("Bearer {token}"))
    }

    /// The headers sent on every request.
    pub fn default_headers(&self) -> &HeaderMap {
        &self.default_headers
    }

    /// Returns the client with a cookie jar: cookies from `Set-Cookie`
    /// response headers are stored and sent back in a `Cookie` header on later
    /// requests. The jar is shared by all clones of the returned client.
    ///
    /// The jar is deliberately simple: it keys cookies by name only (one host,
    /// no paths). A cookie set with `Max-Age=0` (or negative) or an `Expires`
    /// date in the past is removed, and a cookie whose `Max-Age` or `Expires`
    /// passes is no longer sent. Cookies are off by default.
    ///
    /// To look at the `Set-Cookie` headers of one response (attributes
    /// included) use [`TestResponse::cookie`](super::TestResponse::cookie).
    pub fn with_cookies(mut self) -> Self {
        if self.cookies.is_none() {
            self.cookies = Some(Arc::default());
        }
        self
    }

    /// The value of a cookie in the jar, if the jar is on and holds it (and it
    /// has not expired).
    pub fn cookie(&self, name: &str) -> Option<String> {
        let jar = self.cookies.as_ref()?;
        lock(jar).get(name)
    }

    /// Puts a cookie into the jar, turning the jar on if it was off (for this
    /// client and clones made afterwards).
    pub fn set_cookie(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let jar = self.cookies.get_or_insert_with(Arc::default);
        lock(jar).insert(name.into(), value.into());
    }

    /// Empties the cookie jar.
    pub fn clear_cookies(&self) {
        if let Some(jar) = &self.cookies {
            lock(jar).clear();
        }
    }

    /// Starts a `GET` request. `.await` it to send it.
    pub fn get(&self, path: impl Into<String>) -> TestRequest {
        self.method(Method::GET, path)
    }

    /// Starts a `POST` request. `.await` it to send it.
    pub fn post(&self, path: impl Into<String>) -> TestRequest {
        self.method(Method::POST, path)
    }

    /// Starts a `PUT` request. `.await` it to send it.
    pub fn put(&self, path: impl Into<String>) -> TestRequest {
        self.method(Method::PUT, path)
    }

    /// Starts a `PATCH` request. `.await` it to send it.
    pub fn patch(&self, path: impl Into<String>) -> TestRequest {
        self.method(Method::PATCH, path)
    }

    /// Starts a `DELETE` request. `.await` it to send it.
    pub fn delete(&self, path: impl Into<String>) -> TestRequest {
        self.method(Method::DELETE, path)
    }

    /// Starts a request with any method. `.await` it to send it.
    ///
    /// `path` is the path and query of the request, such as `/users?limit=5`.
    pub fn method(&self, method: Method, path: impl Into<String>) -> TestRequest {
        TestRequest::new(
            self.router.clone(),
            self.default_headers.clone(),
            self.cookies.clone(),
            method,
            path.into(),
        )
    }
}
