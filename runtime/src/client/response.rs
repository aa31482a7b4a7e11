//! [`TestResponse`]: a response with its body read, its accessors and its
//! assertions; and [`StatusLike`], what [`TestResponse::assert_status`] takes.

use std::fmt;

use axum::body::Bytes;
use axum::http::header::{self, HeaderMap};
use axum::http::{Method, StatusCode};
use cookie::Cookie;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[cfg(doc)]
use super::TestRequest;
use super::json::{Compare, first_difference};

/// How many bytes of a response body a failure message shows.
pub(super) const BODY_PREVIEW_LIMIT: usize = 4 * 1024;

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
    pub(super) method: Method,
    pub(super) path: String,
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
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

    /// The cookies the response sets, one for each `Set-Cookie` header that
    /// parses, in the order of the headers. Attributes (`Path`, `Max-Age`,
    /// `HttpOnly`, ...) are kept.
    ///
    /// ```
    /// # use axum::{Router, routing::post, http::header::SET_COOKIE, response::AppendHeaders};
    /// # use db_test::TestClient;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let app = Router::new().route("/login", post(|| async {
    /// #     AppendHeaders([(SET_COOKIE, "session=abc; HttpOnly; Path=/"), (SET_COOKIE, "theme=dark")])
    /// # }));
    /// let res = TestClient::new(app).post("/login").await;
    /// let names: Vec<_> = res.cookies().iter().map(|c| c.name().to_owned()).collect();
    /// assert_eq!(names, ["session", "theme"]);
    /// # }
    /// ```
    pub fn cookies(&self) -> Vec<Cookie<'static>> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .filter_map(|value| Cookie::parse(value.to_owned()).ok())
            .collect()
    }

    /// The cookie named `name` that the response sets, from its `Set-Cookie`
    /// headers (the last one, if it sets the cookie twice). `None` if it does
    /// not set it. This reads this response only, whether or not the client
    /// keeps a cookie jar.
    ///
    /// ```
    /// # use axum::{Router, routing::post, http::header::SET_COOKIE};
    /// # use db_test::{SameSite, TestClient};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let app = Router::new().route("/login", post(|| async {
    /// #     [(SET_COOKIE, "session=abc; HttpOnly; SameSite=Lax; Max-Age=3600")]
    /// # }));
    /// let res = TestClient::new(app).post("/login").await;
    /// let session = res.cookie("session").expect("a session cookie");
    /// assert_eq!(session.value(), "abc");
    /// assert_eq!(session.http_only(), Some(true));
    /// assert_eq!(session.same_site(), Some(SameSite::Lax));
    /// assert_eq!(session.max_age().map(|age| age.whole_seconds()), Some(3600));
    /// assert!(res.cookie("other").is_none());
    /// # }
    /// ```
    pub fn cookie(&self, name: &str) -> Option<Cookie<'static>> {
        self.cookies()
            .into_iter()
            .rev()
            .find(|cookie| cookie.name() == name)
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

    /// Asserts that the status is a success, `2xx`.
    #[track_caller]
    pub fn assert_status_success(&self) -> &Self {
        self.assert_status_class(StatusCode::is_success, "a success status (2xx)")
    }

    /// Asserts that the status is a redirection, `3xx`.
    #[track_caller]
    pub fn assert_status_redirect(&self) -> &Self {
        self.assert_status_class(StatusCode::is_redirection, "a redirect status (3xx)")
    }

    /// Asserts that the status is a client error, `4xx`.
    ///
    /// ```
    /// # use db_test::TestClient;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let res = TestClient::new(axum::Router::new()).get("/nowhere").await;
    /// res.assert_status_client_error();
    /// # }
    /// ```
    #[track_caller]
    pub fn assert_status_client_error(&self) -> &Self {
        self.assert_status_class(StatusCode::is_client_error, "a client error status (4xx)")
    }

    /// Asserts that the status is a server error, `5xx`.
    #[track_caller]
    pub fn assert_status_server_error(&self) -> &Self {
        self.assert_status_class(StatusCode::is_server_error, "a server error status (5xx)")
    }

    #[track_caller]
    fn assert_status_class(&self, matches: fn(&StatusCode) -> bool, expected: &str) -> &Self {
        if !matches(&self.status) {
            self.fail(format_args!(
                "expected {expected}, got {}",
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
        if let Some(difference) = first_difference(&expected, &actual, Compare::Equal) {
            self.fail(format_args!(
                "JSON body differs at {difference}\nexpected: {}\n  actual: {}",
                pretty(&expected),
                pretty(&actual)
            ));
        }
        self
    }

    /// Asserts that the body is JSON that contains `expected`: every key of an
    /// expected object is present in the actual object with a matching value,
    /// and the actual object may have more keys; this holds at every depth.
    /// Arrays match element by element, in order, and have the same length;
    /// each element is matched the same way. Other values are equal.
    ///
    /// The message names the first place where the body does not match, as a
    /// path such as `$.user.roles[1]`, with the expected and actual values
    /// there.
    ///
    /// ```
    /// # use axum::{Router, routing::get, Json};
    /// # use db_test::TestClient;
    /// # use serde_json::json;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let app = Router::new().route("/me", get(|| async {
    /// #     Json(json!({
    /// #         "id": 41,
    /// #         "created_at": "2024-01-31T12:34:56Z",
    /// #         "user": { "name": "Ada", "roles": [{ "name": "reader", "since": 2020 }] },
    /// #     }))
    /// # }));
    /// let res = TestClient::new(app).get("/me").await;
    /// // No need to know the id or the timestamp.
    /// res.assert_json_contains(&json!({
    ///     "user": { "name": "Ada", "roles": [{ "name": "reader" }] },
    /// }));
    /// # }
    /// ```
    #[track_caller]
    pub fn assert_json_contains<T: Serialize + ?Sized>(&self, expected: &T) -> &Self {
        let expected = match serde_json::to_value(expected) {
            Ok(expected) => expected,
            Err(e) => panic!("could not encode the expected JSON of assert_json_contains: {e}"),
        };
        let actual: serde_json::Value = match serde_json::from_slice(&self.body) {
            Ok(actual) => actual,
            Err(e) => self.fail(format_args!(
                "expected a JSON body that contains {}, but the body is not JSON: {e}",
                pretty(&expected)
            )),
        };
        if let Some(difference) = first_difference(&expected, &actual, Compare::Contains) {
            self.fail(format_args!(
                "JSON body does not contain the expected JSON at {difference}\n\
                 expected (subset): {}\n  actual: {}",
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

    /// Asserts that the body, as text, contains `needle`.
    #[track_caller]
    pub fn assert_text_contains(&self, needle: &str) -> &Self {
        if !String::from_utf8_lossy(&self.body).contains(needle) {
            self.fail(format_args!("expected the body to contain {needle:?}"));
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

/// The response as text, for snapshot tests (`insta::assert_snapshot!(res)`):
/// the status line, the headers sorted by name (several values of one name
/// in the order they were sent), then a blank line and the body. A JSON body
/// (a content type that mentions `json`) is pretty-printed, other text is
/// shown as it is, and a body that is not UTF-8 as its length.
///
/// ```
/// # use axum::{Router, routing::post, Json, http::StatusCode};
/// # use db_test::TestClient;
/// # use serde_json::json;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let app = Router::new().route("/users", post(|| async {
/// #     (StatusCode::CREATED, [("x-request-id", "7")], Json(json!({"id": 1})))
/// # }));
/// let res = TestClient::new(app).post("/users").await;
/// assert_eq!(
///     res.to_string(),
///     "201 Created\n\
///      content-length: 8\n\
///      content-type: application/json\n\
///      x-request-id: 7\n\
///      \n\
///      {\n  \"id\": 1\n}"
/// );
/// # }
/// ```
impl fmt::Display for TestResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", StatusLike::from(self.status))?;
        let mut headers: Vec<_> = self.headers.iter().collect();
        headers.sort_by(|(a, _), (b, _)| a.as_str().cmp(b.as_str()));
        for (name, value) in headers {
            write!(f, "\n{name}: {}", String::from_utf8_lossy(value.as_bytes()))?;
        }
        if self.body.is_empty() {
            return Ok(());
        }
        f.write_str("\n\n")?;
        let is_json = self
            .header(header::CONTENT_TYPE.as_str())
            .is_some_and(|content_type| content_type.to_ascii_lowercase().contains("json"));
        if is_json && let Ok(value) = serde_json::from_slice::<serde_json::Value>(&self.body) {
            return f.write_str(&pretty(&value));
        }
        match std::str::from_utf8(&self.body) {
            Ok(text) => f.write_str(text),
            Err(_) => write!(f, "({} bytes, not UTF-8)", self.body.len()),
        }
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

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// Shows a body in a failure message: as text, cut after
/// [`BODY_PREVIEW_LIMIT`] bytes.
pub(super) struct BodyPreview<'a>(pub(super) &'a [u8]);

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
