//! An in-process HTTP client for testing an axum [`Router`]: [`TestClient`].
//!
//! Requests are handed straight to the router with
//! [`tower::ServiceExt::oneshot`]. No TCP port is opened and nothing leaves the
//! process, so a request costs about as much as the handler itself.

use std::collections::BTreeMap;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, Request, StatusCode, Uri};
use http_body_util::BodyExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tower::ServiceExt;

use crate::{BoxError, Db, FromTestContext, TestContext};

/// How many bytes of a response body a failure message shows.
const BODY_PREVIEW_LIMIT: usize = 4 * 1024;

/// An application under test: how to build its [`Router`] around a [`Db`].
///
/// Implement it once per test suite. A `#[db_test]` parameter of type
/// [`TestClient<App>`](TestClient) is then built from the test's database, so
/// everything the app writes is rolled back with the test.
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use db_test::{Db, TestApp};
///
/// struct App;
///
/// impl TestApp for App {
///     fn router(db: Db) -> Router {
///         Router::new()
///             .route("/health", get(|| async { "ok" }))
///             .with_state(db)
///     }
/// }
/// ```
pub trait TestApp: Send + Sync + 'static {
    /// Builds the application's router around the test's database handle.
    fn router(db: Db) -> Router;

    /// Builds the router with access to the whole [`TestContext`], for apps
    /// that need more than the database (the test's name, for example).
    /// Defaults to [`TestApp::router`] with [`TestContext::db`].
    fn router_for(ctx: &TestContext) -> Router {
        Self::router(ctx.db())
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
    cookies: Option<Arc<Mutex<CookieJar>>>,
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
    pub fn from_db(db: Db) -> Self {
        Self::from_router(A::router(db))
    }
}

impl<A: TestApp> FromTestContext for TestClient<A> {
    async fn from_context(ctx: &TestContext) -> Result<Self, BoxError> {
        Ok(Self::from_router(A::router_for(ctx)))
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
    /// no paths), and a cookie set with `Max-Age=0` (or negative) or an
    /// `Expires` date in the past is removed. Cookies are off by default.
    pub fn with_cookies(mut self) -> Self {
        if self.cookies.is_none() {
            self.cookies = Some(Arc::default());
        }
        self
    }

    /// The value of a cookie in the jar, if the jar is on and holds it.
    pub fn cookie(&self, name: &str) -> Option<String> {
        let jar = self.cookies.as_ref()?;
        lock(jar).cookies.get(name).cloned()
    }

    /// Puts a cookie into the jar, turning the jar on if it was off (for this
    /// client and clones made afterwards).
    pub fn set_cookie(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let jar = self.cookies.get_or_insert_with(Arc::default);
        lock(jar).cookies.insert(name.into(), value.into());
    }

    /// Empties the cookie jar.
    pub fn clear_cookies(&self) {
        if let Some(jar) = &self.cookies {
            lock(jar).cookies.clear();
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
        TestRequest {
            router: self.router.clone(),
            default_headers: self.default_headers.clone(),
            cookies: self.cookies.clone(),
            method,
            path: path.into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            body_type: None,
            extensions: axum::http::Extensions::new(),
        }
    }
}

/// A request being built by a [`TestClient`]. It is sent when it is `.await`ed,
/// which yields a [`TestResponse`].
///
/// ```
/// # use axum::{Router, routing::post, Json};
/// # use db_test::TestClient;
/// # use serde_json::{json, Value};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let app = Router::new().route("/echo", post(|Json(v): Json<Value>| async move { Json(v) }));
/// let client = TestClient::new(app);
/// let res = client
///     .post("/echo")
///     .bearer("secret")
///     .json(&json!({ "name": "Ada" }))
///     .await;
/// res.assert_status(200).assert_json(&json!({ "name": "Ada" }));
/// # }
/// ```
#[must_use = "a TestRequest does nothing until it is `.await`ed"]
pub struct TestRequest {
    router: Router,
    default_headers: HeaderMap,
    cookies: Option<Arc<Mutex<CookieJar>>>,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    body_type: Option<&'static str>,
    extensions: axum::http::Extensions,
}

impl fmt::Debug for TestRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("headers", &self.headers)
            .field("body", &BodyPreview(&self.body))
            .finish_non_exhaustive()
    }
}

impl TestRequest {
    /// Sends `value` as a JSON body, with `Content-Type: application/json`.
    ///
    /// # Panics
    ///
    /// If `value` cannot be serialized.
    #[track_caller]
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => self.set_body(body, "application/json"),
            Err(e) => panic!(
                "could not encode the JSON body of {} {}: {e}",
                self.method, self.path
            ),
        }
    }

    /// Sends `value` as a URL-encoded form body, with
    /// `Content-Type: application/x-www-form-urlencoded`.
    ///
    /// # Panics
    ///
    /// If `value` cannot be encoded as a form (it must be a struct, a map or a
    /// sequence of pairs).
    #[track_caller]
    pub fn form<T: Serialize + ?Sized>(self, value: &T) -> Self {
        match serde_urlencoded::to_string(value) {
            Ok(body) => self.set_body(body, "application/x-www-form-urlencoded"),
            Err(e) => panic!(
                "could not encode the form body of {} {}: {e}",
                self.method, self.path
            ),
        }
    }

    /// Sends a text body, with `Content-Type: text/plain; charset=utf-8`.
    pub fn text(self, text: impl Into<String>) -> Self {
        self.set_body(text.into(), "text/plain; charset=utf-8")
    }

    /// Sends a raw body, with `Content-Type: application/octet-stream`.
    pub fn bytes(self, bytes: impl Into<Bytes>) -> Self {
        self.set_body(bytes, "application/octet-stream")
    }

    fn set_body(mut self, body: impl Into<Bytes>, content_type: &'static str) -> Self {
        self.body = body.into();
        self.body_type = Some(content_type);
        self
    }

    /// Adds a header. A header set here replaces a client default of the same
    /// name, and also the content type chosen by [`json`](Self::json) and friends.
    /// Calling it twice with one name sends both values.
    ///
    /// # Panics
    ///
    /// If the name or the value is not a valid header name or value.
    #[track_caller]
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        K::Error: fmt::Display,
        V: TryInto<HeaderValue>,
        V::Error: fmt::Display,
    {
        let (name, value) = header_pair(name, value);
        self.headers.append(name, value);
        self
    }

    /// Sets `Authorization: Bearer <token>`.
    #[track_caller]
    pub fn bearer(mut self, token: impl fmt::Display) -> Self {
        let (name, value) = header_pair(header::AUTHORIZATION, format!("Bearer {token}"));
        self.headers.insert(name, value);
        self
    }

    /// Appends `params`, URL-encoded, to the query string of the path (after
    /// any query already in it).
    ///
    /// ```
    /// # use db_test::TestClient;
    /// # let client = TestClient::new(axum::Router::new());
    /// let req = client.get("/users?active=true").query(&[("limit", 10), ("offset", 20)]);
    /// // GET /users?active=true&limit=10&offset=20
    /// # drop(req);
    /// ```
    ///
    /// # Panics
    ///
    /// If `params` cannot be encoded (it must be a struct, a map or a sequence
    /// of pairs).
    #[track_caller]
    pub fn query<T: Serialize + ?Sized>(mut self, params: &T) -> Self {
        let encoded = match serde_urlencoded::to_string(params) {
            Ok(encoded) => encoded,
            Err(e) => panic!(
                "could not encode the query of {} {}: {e}",
                self.method, self.path
            ),
        };
        if !encoded.is_empty() {
            let separator = match self.path.find('?') {
                None => '?',
                Some(i) if i + 1 == self.path.len() || self.path.ends_with('&') => {
                    // `/path?` or `/path?a=1&`: nothing to add between.
                    self.path.push_str(&encoded);
                    return self;
                }
                Some(_) => '&',
            };
            self.path.push(separator);
            self.path.push_str(&encoded);
        }
        self
    }

    /// Puts a value into the request's extensions, where handlers and
    /// middleware see it through `Extension<T>`. Useful to hand the app an
    /// already-authenticated principal.
    pub fn extension<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.extensions.insert(value);
        self
    }

    /// Sends the request. This is what `.await` does.
    pub async fn send(self) -> TestResponse {
        let TestRequest {
            router,
            default_headers,
            cookies,
            method,
            path,
            headers,
            body,
            body_type,
            extensions,
        } = self;

        let uri: Uri = match path.parse() {
            Ok(uri) => uri,
            Err(e) => panic!("invalid request path {path:?} for {method}: {e}"),
        };

        let mut all_headers = default_headers;
        let mut last: Option<HeaderName> = None;
        for (name, value) in headers {
            // `HeaderMap::into_iter` yields a name only with the first value of each header.
            let name = match name {
                Some(name) => {
                    all_headers.remove(&name);
                    last = Some(name.clone());
                    name
                }
                None => last.clone().expect("a header value follows its name"),
            };
            all_headers.append(name, value);
        }
        if let Some(content_type) = body_type
            && !all_headers.contains_key(header::CONTENT_TYPE)
        {
            all_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
        if let Some(jar) = &cookies
            && !all_headers.contains_key(header::COOKIE)
            && let Some(cookie) = lock(jar).header_value()
        {
            all_headers.insert(header::COOKIE, cookie);
        }

        let mut request = Request::new(Body::from(body));
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = all_headers;
        *request.extensions_mut() = extensions;

        let response = match router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => panic!(
                "reading the response body of {method} {path} ({}) failed: {e}",
                parts.status
            ),
        };

        if let Some(jar) = &cookies {
            let mut jar = lock(jar);
            for value in parts.headers.get_all(header::SET_COOKIE) {
                if let Ok(value) = value.to_str() {
                    jar.store(value);
                }
            }
        }

        TestResponse {
            method,
            path,
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

impl IntoFuture for TestRequest {
    type Output = TestResponse;
    type IntoFuture = Pin<Box<dyn Future<Output = TestResponse> + Send + 'static>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// The response to a [`TestRequest`], with its body already read.
///
/// The `assert_*` methods return `&Self`, so they chain. A failed assertion,
/// like a body that does not decode in [`json`](TestResponse::json), panics with
/// the request's method and path, the status and the body (cut after a few KB).
///
/// ```
/// # use axum::{Router, routing::get, Json};
/// # use db_test::TestClient;
/// # use serde_json::json;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let app = Router::new().route("/user", get(|| async { Json(json!({"id": 1})) }));
/// let res = TestClient::new(app).get("/user").await;
/// res.assert_status(200)
///     .assert_header("content-type", "application/json")
///     .assert_json(&json!({ "id": 1 }));
///
/// #[derive(serde::Deserialize)]
/// struct User { id: i64 }
/// let user: User = res.json();
/// assert_eq!(user.id, 1);
/// # }
/// ```
#[derive(Clone)]
pub struct TestResponse {
    method: Method,
    path: String,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl fmt::Debug for TestResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestResponse")
            .field("request", &format_args!("{} {}", self.method, self.path))
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &BodyPreview(&self.body))
            .finish()
    }
}

impl TestResponse {
    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The first value of the header `name`, if present and valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text (invalid UTF-8 is replaced with `U+FFFD`).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The raw body.
    pub fn bytes(&self) -> Bytes {
        self.body.clone()
    }

    /// The method of the request this answers.
    pub fn request_method(&self) -> &Method {
        &self.method
    }

    /// The path (and query) of the request this answers.
    pub fn request_path(&self) -> &str {
        &self.path
    }

    /// Decodes the body as JSON.
    ///
    /// # Panics
    ///
    /// If the body does not decode as a `T`. The message names the request,
    /// the status, the expected type and the body.
    #[track_caller]
    pub fn json<T: DeserializeOwned>(&self) -> T {
        match serde_json::from_slice(&self.body) {
            Ok(value) => value,
            Err(e) => self.fail(format_args!(
                "could not decode the response body as JSON `{}`: {e}",
                std::any::type_name::<T>()
            )),
        }
    }

    /// Asserts the status. Takes a [`StatusCode`] or a `u16`.
    ///
    /// ```
    /// # use db_test::TestClient;
    /// # use axum::http::StatusCode;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let res = TestClient::new(axum::Router::new()).get("/nowhere").await;
    /// res.assert_status(404).assert_status(StatusCode::NOT_FOUND);
    /// # }
    /// ```
    #[track_caller]
    pub fn assert_status(&self, expected: impl Into<StatusLike>) -> &Self {
        let expected = expected.into();
        if self.status.as_u16() != expected.0 {
            self.fail(format_args!(
                "expected status {expected}, got {}",
                StatusLike::from(self.status)
            ));
        }
        self
    }

    /// Asserts that the body is JSON equal to `expected` (compared as
    /// [`serde_json::Value`]s, so key order and whitespace do not matter).
    /// The message names the first place where they differ.
    #[track_caller]
    pub fn assert_json<T: Serialize + ?Sized>(&self, expected: &T) -> &Self {
        let expected = match serde_json::to_value(expected) {
            Ok(expected) => expected,
            Err(e) => panic!("could not encode the expected JSON of assert_json: {e}"),
        };
        let actual: serde_json::Value = match serde_json::from_slice(&self.body) {
            Ok(actual) => actual,
            Err(e) => self.fail(format_args!(
                "expected a JSON body equal to {}, but the body is not JSON: {e}",
                pretty(&expected)
            )),
        };
        if let Some(difference) = first_difference("$", &expected, &actual) {
            self.fail(format_args!(
                "JSON body differs at {difference}\nexpected: {}\n  actual: {}",
                pretty(&expected),
                pretty(&actual)
            ));
        }
        self
    }

    /// Asserts that the header `name` is present with exactly `value` (the
    /// first value, if it was sent more than once).
    #[track_caller]
    pub fn assert_header(&self, name: &str, value: &str) -> &Self {
        match self.headers.get(name) {
            None => self.fail(format_args!(
                "expected header `{name}: {value}`, but there is no `{name}` header"
            )),
            Some(actual) if actual.as_bytes() != value.as_bytes() => self.fail(format_args!(
                "expected header `{name}: {value}`, got `{name}: {}`",
                String::from_utf8_lossy(actual.as_bytes())
            )),
            Some(_) => self,
        }
    }

    /// Asserts that the body is exactly `expected`.
    #[track_caller]
    pub fn assert_text(&self, expected: &str) -> &Self {
        if self.body != expected.as_bytes() {
            self.fail(format_args!("expected the body {expected:?}"));
        }
        self
    }

    #[track_caller]
    fn fail(&self, message: fmt::Arguments<'_>) -> ! {
        panic!(
            "{message}\n  request: {} {}\n   status: {}\n     body: {}",
            self.method,
            self.path,
            StatusLike::from(self.status),
            BodyPreview(&self.body)
        )
    }
}

/// A status to compare with: a [`StatusCode`] or a plain `u16` such as `201`.
/// Accepted by [`TestResponse::assert_status`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StatusLike(u16);

impl From<StatusCode> for StatusLike {
    fn from(status: StatusCode) -> Self {
        StatusLike(status.as_u16())
    }
}

impl From<&StatusCode> for StatusLike {
    fn from(status: &StatusCode) -> Self {
        StatusLike(status.as_u16())
    }
}

impl From<u16> for StatusLike {
    fn from(status: u16) -> Self {
        StatusLike(status)
    }
}

impl fmt::Display for StatusLike {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = StatusCode::from_u16(self.0)
            .ok()
            .and_then(|s| s.canonical_reason());
        match reason {
            Some(reason) => write!(f, "{} {reason}", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

impl fmt::Debug for StatusLike {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

// ---------------------------------------------------------------------------
// Helpers

#[track_caller]
fn header_pair<K, V>(name: K, value: V) -> (HeaderName, HeaderValue)
where
    K: TryInto<HeaderName>,
    K::Error: fmt::Display,
    V: TryInto<HeaderValue>,
    V::Error: fmt::Display,
{
    let name = match name.try_into() {
        Ok(name) => name,
        Err(e) => panic!("invalid header name: {e}"),
    };
    let value = match value.try_into() {
        Ok(value) => value,
        Err(e) => panic!("invalid value for header `{name}`: {e}"),
    };
    (name, value)
}

fn lock(jar: &Mutex<CookieJar>) -> std::sync::MutexGuard<'_, CookieJar> {
    // A panic elsewhere cannot leave the jar half-updated: recover it.
    jar.lock().unwrap_or_else(PoisonError::into_inner)
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// Where two JSON values first differ, as a path like `$.users[0].email`.
fn first_difference(
    path: &str,
    expected: &serde_json::Value,
    actual: &serde_json::Value,
) -> Option<String> {
    use serde_json::Value;
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, ev) in e {
                let child = format!("{path}.{key}");
                match a.get(key) {
                    None => return Some(format!("{child}: missing (expected {ev})")),
                    Some(av) => {
                        if let Some(d) = first_difference(&child, ev, av) {
                            return Some(d);
                        }
                    }
                }
            }
            a.iter()
                .find(|(key, _)| !e.contains_key(*key))
                .map(|(key, av)| format!("{path}.{key}: unexpected key (value {av})"))
        }
        (Value::Array(e), Value::Array(a)) => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                if let Some(d) = first_difference(&format!("{path}[{i}]"), ev, av) {
                    return Some(d);
                }
            }
            (e.len() != a.len())
                .then(|| format!("{path}: expected {} elements, got {}", e.len(), a.len()))
        }
        _ if expected == actual => None,
        _ => Some(format!("{path}: expected {expected}, got {actual}")),
    }
}

/// Shows a body in a failure message: as text, cut after
/// [`BODY_PREVIEW_LIMIT`] bytes.
struct BodyPreview<'a>(&'a [u8]);

impl fmt::Display for BodyPreview<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(empty)");
        }
        let shown = &self.0[..self.0.len().min(BODY_PREVIEW_LIMIT)];
        f.write_str(&String::from_utf8_lossy(shown))?;
        if shown.len() < self.0.len() {
            write!(f, "... ({} more bytes)", self.0.len() - shown.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for BodyPreview<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// The cookies a client keeps, by name.
#[derive(Clone, Debug, Default)]
struct CookieJar {
    cookies: BTreeMap<String, String>,
}

impl CookieJar {
    /// Applies one `Set-Cookie` header value.
    fn store(&mut self, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|pair| pair.split_once('=')) else {
            return;
        };
        let name = name.trim();
        if name.is_empty() {
            return;
        }
        let mut max_age: Option<i64> = None;
        let mut expires: Option<i64> = None;
        for attribute in parts {
            let (key, val) = attribute.split_once('=').unwrap_or((attribute, ""));
            let key = key.trim();
            if key.eq_ignore_ascii_case("max-age") {
                // An unparsable Max-Age is ignored (RFC 6265, 5.2.2).
                max_age = val.trim().parse().ok().or(max_age);
            } else if key.eq_ignore_ascii_case("expires") {
                expires = parse_http_date(val.trim()).or(expires);
            }
        }
        let expired = match (max_age, expires) {
            (Some(max_age), _) => max_age <= 0,
            (None, Some(expires)) => expires <= unix_now(),
            (None, None) => false,
        };
        if expired {
            self.cookies.remove(name);
        } else {
            self.cookies
                .insert(name.to_owned(), value.trim().to_owned());
        }
    }

    /// The `Cookie` header for the jar's contents, if it holds any.
    fn header_value(&self) -> Option<HeaderValue> {
        if self.cookies.is_empty() {
            return None;
        }
        let joined = self
            .cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ");
        HeaderValue::from_str(&joined).ok()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Parses the dates of `Expires` (`Wed, 21 Oct 2015 07:28:00 GMT`, and the
/// older `Wednesday, 21-Oct-15 07:28:00 GMT`) into Unix seconds.
fn parse_http_date(text: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let (mut day, mut month, mut year, mut time) = (None, None, None, None);
    for token in text.split([' ', '-', ',']).filter(|t| !t.is_empty()) {
        if token.contains(':') {
            let mut hms = token.split(':').map(|n| n.parse::<i64>().ok());
            let (h, m, s) = (
                hms.next()??,
                hms.next()??,
                hms.next().flatten().unwrap_or(0),
            );
            time = Some(h * 3600 + m * 60 + s);
        } else if let Ok(n) = token.parse::<i64>() {
            if day.is_none() && token.len() <= 2 {
                day = Some(n);
            } else {
                year = Some(match n {
                    0..=69 => n + 2000,
                    70..=99 => n + 1900,
                    _ => n,
                });
            }
        } else if token.len() >= 3 {
            let prefix = token[..3].to_ascii_lowercase();
            if let Some(i) = MONTHS.iter().position(|m| *m == prefix) {
                month = Some(i as i64 + 1);
            }
        }
    }
    let (day, month, year, time) = (day?, month?, year?, time?);
    Some(days_from_civil(year, month, day) * 86_400 + time)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashMap;
    use std::panic::AssertUnwindSafe;

    use axum::extract::{Form, Query};
    use axum::http::HeaderMap;
    use axum::response::{AppendHeaders, IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::{Extension, Json};
    use futures_util::FutureExt;
    use serde_json::{Value, json};

    fn echo_headers(headers: HeaderMap) -> Json<Value> {
        let map: BTreeMap<String, Vec<String>> =
            headers.keys().fold(BTreeMap::new(), |mut map, name| {
                let values = headers
                    .get_all(name)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect();
                map.insert(name.as_str().to_owned(), values);
                map
            });
        Json(json!(map))
    }

    fn app() -> Router {
        Router::new()
            .route("/headers", get(|h: HeaderMap| async move { echo_headers(h) }))
            .route(
                "/login",
                post(|| async {
                    (
                        AppendHeaders([
                            (header::SET_COOKIE, "session=abc123; Path=/; HttpOnly"),
                            (header::SET_COOKIE, "theme=dark"),
                        ]),
                        "welcome",
                    )
                }),
            )
            .route(
                "/logout",
                post(|| async {
                    AppendHeaders([
                        (header::SET_COOKIE, "session=; Max-Age=0"),
                        (header::SET_COOKIE, "theme=; Expires=Thu, 01 Jan 1970 00:00:00 GMT"),
                    ])
                }),
            )
            .route(
                "/query",
                get(|Query(q): Query<Vec<(String, String)>>| async move { Json(json!(q)) }),
            )
            .route(
                "/form",
                post(|Form(f): Form<HashMap<String, String>>| async move { Json(json!(f)) }),
            )
            .route(
                "/json",
                post(|headers: HeaderMap, Json(v): Json<Value>| async move {
                    Json(json!({
                        "content_type": headers[header::CONTENT_TYPE].to_str().unwrap(),
                        "got": v,
                    }))
                }),
            )
            .route(
                "/raw",
                post(|headers: HeaderMap, body: Bytes| async move {
                    let ct = headers
                        .get(header::CONTENT_TYPE)
                        .map(|v| v.to_str().unwrap().to_owned());
                    Json(json!({ "content_type": ct, "len": body.len(), "text": String::from_utf8_lossy(&body) }))
                }),
            )
            .route(
                "/conflict",
                post(|| async {
                    (
                        StatusCode::CONFLICT,
                        Json(json!({"error": "email already taken", "field": "email"})),
                    )
                }),
            )
            .route(
                "/big",
                get(|| async { "x".repeat(100_000) + "THE-END" }),
            )
            .route(
                "/who",
                get(|user: Option<Extension<String>>| async move {
                    user.map(|Extension(u)| u).unwrap_or_else(|| "nobody".into())
                }),
            )
            .route(
                "/echo-method",
                axum::routing::any(|m: Method| async move { m.to_string() }),
            )
            .route(
                "/slow/{n}",
                get(|axum::extract::Path(n): axum::extract::Path<u64>| async move {
                    // Yield a few times so requests interleave.
                    for _ in 0..n % 5 {
                        tokio::task::yield_now().await;
                    }
                    Json(json!({ "n": n }))
                }),
            )
    }

    fn panic_message(result: std::thread::Result<()>) -> String {
        let payload = result.expect_err("expected a panic");
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn get_returns_status_headers_and_body() {
        let client = TestClient::new(app());
        let res = client.get("/echo-method").await;
        res.assert_status(200)
            .assert_status(StatusCode::OK)
            .assert_header("content-type", "text/plain; charset=utf-8")
            .assert_text("GET");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(&res.bytes()[..], b"GET");
        assert_eq!(res.request_path(), "/echo-method");
        client.get("/nope").await.assert_status(404);
    }

    #[tokio::test]
    async fn every_method_is_sent() {
        let client = TestClient::new(app());
        assert_eq!(client.post("/echo-method").await.text(), "POST");
        assert_eq!(client.put("/echo-method").await.text(), "PUT");
        assert_eq!(client.patch("/echo-method").await.text(), "PATCH");
        assert_eq!(client.delete("/echo-method").await.text(), "DELETE");
        let options = client.method(Method::OPTIONS, "/echo-method").await;
        assert_eq!(options.text(), "OPTIONS");
    }

    #[tokio::test]
    async fn cookies_are_kept_across_requests_and_shared_by_clones() {
        let client = TestClient::new(app()).with_cookies();
        client.post("/login").await.assert_status(200);
        assert_eq!(client.cookie("session").as_deref(), Some("abc123"));

        let clone = client.clone();
        let res = clone.get("/headers").await;
        res.assert_json(&json!({ "cookie": ["session=abc123; theme=dark"] }));

        // Removal through Max-Age=0 and a past Expires, seen by the original too.
        clone.post("/logout").await.assert_status(200);
        assert_eq!(client.cookie("session"), None);
        assert_eq!(client.cookie("theme"), None);
        client.get("/headers").await.assert_json(&json!({}));
    }

    #[tokio::test]
    async fn cookies_are_off_by_default() {
        let client = TestClient::new(app());
        client.post("/login").await;
        assert_eq!(client.cookie("session"), None);
        client.get("/headers").await.assert_json(&json!({}));
    }

    #[tokio::test]
    async fn cookies_can_be_set_and_overridden_per_request() {
        let mut client = TestClient::new(app());
        client.set_cookie("a", "1");
        client
            .get("/headers")
            .await
            .assert_json(&json!({ "cookie": ["a=1"] }));
        client
            .get("/headers")
            .header("cookie", "mine=2")
            .await
            .assert_json(&json!({ "cookie": ["mine=2"] }));
        client.clear_cookies();
        client.get("/headers").await.assert_json(&json!({}));
    }

    #[test]
    fn cookie_jar_applies_set_cookie_attributes() {
        let mut jar = CookieJar::default();
        jar.store("a=1; Max-Age=60");
        jar.store("b = 2 ; expires=Fri, 01 Jan 2100 00:00:00 GMT");
        jar.store("c=3; Expires=Sunday, 06-Nov-94 08:49:37 GMT");
        jar.store("garbage");
        jar.store("=nameless");
        assert_eq!(jar.header_value().unwrap().to_str().unwrap(), "a=1; b=2");
        jar.store("a=; Max-Age=-1");
        jar.store("b=x; Max-Age=0; Expires=Fri, 01 Jan 2100 00:00:00 GMT");
        assert!(jar.header_value().is_none());

        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(1_445_412_480)
        );
        assert_eq!(parse_http_date("not a date"), None);
    }

    #[tokio::test]
    async fn default_headers_are_sent_and_requests_override_them() {
        let client = TestClient::new(app())
            .with_default_header("x-source", "tests")
            .with_bearer("t0k3n");
        client.get("/headers").await.assert_json(&json!({
            "x-source": ["tests"],
            "authorization": ["Bearer t0k3n"],
        }));

        client
            .get("/headers")
            .header("x-source", "override")
            .header("x-multi", "1")
            .header("x-multi", "2")
            .bearer("other")
            .await
            .assert_json(&json!({
                "x-source": ["override"],
                "x-multi": ["1", "2"],
                "authorization": ["Bearer other"],
            }));

        let mut plain = client.clone();
        plain.set_default_header("x-source", "changed");
        assert_eq!(plain.default_headers()["x-source"], "changed");
        assert_eq!(client.default_headers()["x-source"], "tests");
    }

    #[tokio::test]
    async fn query_is_encoded_and_appended() {
        let client = TestClient::new(app());
        client
            .get("/query")
            .query(&[("q", "a b&c=d"), ("limit", "10")])
            .await
            .assert_json(&json!([["q", "a b&c=d"], ["limit", "10"]]));

        let res = client.get("/query?first=1").query(&[("second", 2)]).await;
        assert_eq!(res.request_path(), "/query?first=1&second=2");
        res.assert_json(&json!([["first", "1"], ["second", "2"]]));

        #[derive(Serialize)]
        struct Page {
            limit: u32,
            offset: u32,
        }
        let res = client
            .get("/query?")
            .query(&Page {
                limit: 5,
                offset: 10,
            })
            .await;
        assert_eq!(res.request_path(), "/query?limit=5&offset=10");
    }

    #[tokio::test]
    async fn form_json_text_and_bytes_bodies() {
        let client = TestClient::new(app());
        client
            .post("/form")
            .form(&[("name", "Ada Lovelace"), ("note", "1+1=2 & more")])
            .await
            .assert_status(200)
            .assert_json(&json!({ "name": "Ada Lovelace", "note": "1+1=2 & more" }));

        client
            .post("/json")
            .json(&json!({ "nested": { "list": [1, 2, 3] }, "quote": "'; DROP TABLE users; --" }))
            .await
            .assert_json(&json!({
                "content_type": "application/json",
                "got": { "nested": { "list": [1, 2, 3] }, "quote": "'; DROP TABLE users; --" },
            }));

        client.post("/raw").text("héllo").await.assert_json(
            &json!({ "content_type": "text/plain; charset=utf-8", "len": 6, "text": "héllo" }),
        );

        client
            .post("/raw")
            .bytes(vec![0u8, 1, 2])
            .header("content-type", "application/x-custom")
            .await
            .assert_json(&json!({ "content_type": "application/x-custom", "len": 3, "text": "\u{0}\u{1}\u{2}" }));

        client
            .post("/raw")
            .await
            .assert_json(&json!({ "content_type": null, "len": 0, "text": "" }));
    }

    #[tokio::test]
    async fn extensions_reach_the_handler() {
        let client = TestClient::new(app());
        assert_eq!(client.get("/who").await.text(), "nobody");
        let res = client.get("/who").extension(String::from("ada")).await;
        assert_eq!(res.text(), "ada");
    }

    #[tokio::test]
    async fn failed_status_assertion_shows_request_status_and_body() {
        let res = TestClient::new(app()).post("/conflict").await;
        let message = panic_message(std::panic::catch_unwind(AssertUnwindSafe(|| {
            res.assert_status(201);
        })));
        assert!(
            message.contains("expected status 201 Created, got 409 Conflict"),
            "{message}"
        );
        assert!(message.contains("POST /conflict"), "{message}");
        assert!(message.contains("email already taken"), "{message}");
    }

    #[tokio::test]
    #[should_panic(expected = "JSON body differs at $.field: expected \"name\", got \"email\"")]
    async fn failed_json_assertion_names_the_difference() {
        let res = TestClient::new(app()).post("/conflict").await;
        res.assert_json(&json!({"error": "email already taken", "field": "name"}));
    }

    #[tokio::test]
    async fn failed_decode_and_header_assertions_show_context() {
        let res = TestClient::new(app()).get("/echo-method").await;
        let message = panic_message(std::panic::catch_unwind(AssertUnwindSafe(|| {
            let _: Value = res.json();
        })));
        assert!(
            message.contains("could not decode the response body as JSON"),
            "{message}"
        );
        assert!(message.contains("GET /echo-method"), "{message}");
        assert!(message.contains("200 OK"), "{message}");
        assert!(message.contains("body: GET"), "{message}");

        let message = panic_message(std::panic::catch_unwind(AssertUnwindSafe(|| {
            res.assert_header("x-missing", "1");
        })));
        assert!(
            message.contains("there is no `x-missing` header"),
            "{message}"
        );
        let message = panic_message(std::panic::catch_unwind(AssertUnwindSafe(|| {
            res.assert_header("content-type", "application/json");
        })));
        assert!(
            message.contains("got `content-type: text/plain"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn long_bodies_are_cut_in_failure_messages() {
        let res = TestClient::new(app()).get("/big").await;
        assert_eq!(res.text().len(), 100_007);
        let message = panic_message(std::panic::catch_unwind(AssertUnwindSafe(|| {
            res.assert_status(500);
        })));
        assert!(message.contains("more bytes)"), "{message}");
        assert!(!message.contains("THE-END"));
        assert!(
            message.len() < BODY_PREVIEW_LIMIT + 500,
            "{}",
            message.len()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_from_spawned_tasks() {
        let client = TestClient::new(app()).with_cookies();
        client.post("/login").await;
        let tasks: Vec<_> = (0..64u64)
            .map(|n| {
                let client = client.clone();
                tokio::spawn(async move {
                    let res = client.get(format!("/slow/{n}")).await;
                    res.assert_status(200).assert_json(&json!({ "n": n }));
                    let headers: Value = client.get("/headers").await.json();
                    assert_eq!(headers["cookie"][0], "session=abc123; theme=dark");
                    n
                })
            })
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        assert_eq!(total, (0..64).sum::<u64>());
    }

    #[tokio::test]
    async fn handler_panics_propagate_to_the_test() {
        let router = Router::new().route(
            "/boom",
            get(|| async {
                if true {
                    panic!("handler exploded");
                }
                Response::new(Body::empty()).into_response()
            }),
        );
        let client = TestClient::new(router);
        let result = AssertUnwindSafe(client.get("/boom").into_future())
            .catch_unwind()
            .await;
        assert!(result.is_err());
    }

    struct EchoApp;
    impl TestApp for EchoApp {
        fn router(_db: Db) -> Router {
            app()
        }
    }

    #[test]
    fn typed_clients_are_send_sync_and_clone() {
        fn assert_traits<T: Clone + Send + Sync + 'static>() {}
        assert_traits::<TestClient>();
        assert_traits::<TestClient<EchoApp>>();
        fn assert_send<T: Send>(_: &T) {}
        let client = TestClient::<EchoApp>::from_router(app());
        assert_send(&client.get("/").into_future());
    }
}
