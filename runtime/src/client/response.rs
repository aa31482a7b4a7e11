//! [`TestResponse`]: a response with its body read, its accessors and its
//! assertions; and [`StatusLike`], what [`TestResponse::assert_status`] takes.

use std::fmt;

use axum::body::Bytes;
use axum::http::header::HeaderMap;
use axum::http::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[cfg(doc)]
use super::TestRequest;
use super::json::first_difference;

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
        if let Some(difference) = first_difference(&expected, &actual) {
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
