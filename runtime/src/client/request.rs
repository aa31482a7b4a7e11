//! [`TestRequest`]: a request being built by a [`TestClient`], sent when it
//! is `.await`ed.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Extensions, Method, Request, Uri};
use http_body_util::BodyExt;
use serde::Serialize;
use tower::ServiceExt;

#[cfg(doc)]
use super::TestClient;
use super::cookies::{SharedJar, lock};
use super::header_pair;
use super::multipart::MultipartForm;
use super::response::{BodyPreview, TestResponse};

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
    cookies: Option<SharedJar>,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    /// The content type that goes with `body`, unless a header says otherwise.
    body_type: Option<HeaderValue>,
    extensions: Extensions,
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
    pub(super) fn new(
        router: Router,
        default_headers: HeaderMap,
        cookies: Option<SharedJar>,
        method: Method,
        path: String,
    ) -> Self {
        TestRequest {
            router,
            default_headers,
            cookies,
            method,
            path,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            body_type: None,
            extensions: Extensions::new(),
        }
    }

    /// Sends `value` as a JSON body, with `Content-Type: application/json`.
    ///
    /// # Panics
    ///
    /// If `value` cannot be serialized.
    #[track_caller]
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => self.set_body(body, HeaderValue::from_static("application/json")),
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
            Ok(body) => self.set_body(
                body,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            ),
            Err(e) => panic!(
                "could not encode the form body of {} {}: {e}",
                self.method, self.path
            ),
        }
    }

    /// Sends a text body, with `Content-Type: text/plain; charset=utf-8`.
    pub fn text(self, text: impl Into<String>) -> Self {
        self.set_body(
            text.into(),
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )
    }

    /// Sends a raw body, with `Content-Type: application/octet-stream`.
    pub fn bytes(self, bytes: impl Into<Bytes>) -> Self {
        self.set_body(bytes, HeaderValue::from_static("application/octet-stream"))
    }

    /// Sends a `multipart/form-data` body, with `Content-Type:
    /// multipart/form-data; boundary=...`. See [`MultipartForm`].
    ///
    /// ```
    /// # use db_test::{MultipartForm, TestClient};
    /// # let client = TestClient::new(axum::Router::new());
    /// let req = client.post("/avatar").multipart(
    ///     MultipartForm::new()
    ///         .text("user", "ada")
    ///         .file("avatar", "ada.png", "image/png", vec![0x89, b'P', b'N', b'G']),
    /// );
    /// # drop(req);
    /// ```
    pub fn multipart(self, form: MultipartForm) -> Self {
        let (content_type, body) = form.encode();
        let content_type =
            HeaderValue::try_from(content_type).expect("the boundary is a valid header value");
        self.set_body(body, content_type)
    }

    fn set_body(mut self, body: impl Into<Bytes>, content_type: HeaderValue) -> Self {
        self.body = body.into();
        self.body_type = Some(content_type);
        self
    }

    /// Adds a header. A header set here replaces a client default of the same
    /// name, and also the content type chosen by [`json`](Self::json) and friends.
    /// Calling it twice with one name sends both values. A `Cookie` header
    /// joins the cookies of a client [`with_cookies`](TestClient::with_cookies)
    /// (its value wins for a cookie of the same name) rather than replacing
    /// them.
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
            // The query goes before a `#fragment`, never after it.
            let fragment = self.path.find('#').map(|i| self.path.split_off(i));
            match self.path.find('?') {
                // `/path?` or `/path?a=1&`: nothing to add between.
                Some(i) if i + 1 == self.path.len() || self.path.ends_with('&') => {}
                Some(_) => self.path.push('&'),
                None => self.path.push('?'),
            }
            self.path.push_str(&encoded);
            if let Some(fragment) = fragment {
                self.path.push_str(&fragment);
            }
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
            all_headers.insert(header::CONTENT_TYPE, content_type);
        }
        // What an HTTP/1.1 client sends with every request (the app may read
        // `Host` to build absolute URLs, or check a body's length).
        if !all_headers.contains_key(header::HOST) {
            let host = uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                .unwrap_or(HeaderValue::from_static("localhost"));
            all_headers.insert(header::HOST, host);
        }
        if !all_headers.contains_key(header::CONTENT_LENGTH)
            && (!body.is_empty() || [Method::POST, Method::PUT, Method::PATCH].contains(&method))
        {
            all_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        if let Some(jar) = &cookies
            && let Some(cookie) = lock(jar).header_value()
        {
            let merged = merge_cookies(&cookie, &all_headers);
            all_headers.insert(header::COOKIE, merged);
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
            lock(jar).store_all(&parts.headers);
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

/// The jar's `Cookie` header merged with the request's own `Cookie`
/// headers: every cookie of both, the request's value winning for a name in
/// both (as a browser's `document.cookie` write would).
fn merge_cookies(jar: &HeaderValue, headers: &HeaderMap) -> HeaderValue {
    let own: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .collect();
    if own.is_empty() {
        return jar.clone();
    }
    let name = |pair: &str| pair.split('=').next().unwrap_or("").trim().to_string();
    let own_names: Vec<String> = own.iter().map(|pair| name(pair)).collect();
    let mut pairs: Vec<&str> = jar
        .to_str()
        .unwrap_or("")
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !own_names.contains(&name(pair)))
        .collect();
    pairs.extend(own);
    HeaderValue::from_str(&pairs.join("; ")).unwrap_or_else(|_| jar.clone())
}
