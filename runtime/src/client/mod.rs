//! An in-process HTTP client for testing an axum [`Router`](axum::Router):
//! [`TestClient`].
//!
//! Requests are handed straight to the router with
//! [`tower::ServiceExt::oneshot`]. No TCP port is opened and nothing leaves the
//! process, so a request costs about as much as the handler itself.
//!
//! One file per concept:
//!
//! - `app.rs`: [`TestApp`], how a test builds the app, and [`TestClient`],
//!   the client with its default headers and cookie jar;
//! - `request.rs`: [`TestRequest`], a request being built, sent on `.await`;
//! - `multipart.rs`: [`MultipartForm`], a `multipart/form-data` body;
//! - `response.rs`: [`TestResponse`], its accessors and assertions, and
//!   [`StatusLike`];
//! - `json.rs`: where two JSON documents differ, for the JSON assertions;
//! - `cookies.rs`: the client's cookie jar, on top of the `cookie` crate.

mod app;
mod cookies;
mod json;
mod multipart;
mod request;
mod response;
#[cfg(test)]
mod tests;

pub use app::{TestApp, TestClient};
/// A cookie, as read from a `Set-Cookie` header by [`TestResponse::cookie`]
/// and [`TestResponse::cookies`]: the `cookie` crate's type (version 0.18),
/// the one `axum-extra`'s cookie jars use.
pub use cookie::Cookie;
/// The `SameSite` attribute of a [`Cookie`], to compare
/// [`Cookie::same_site`] with.
pub use cookie::SameSite;
pub use multipart::MultipartForm;
pub use request::TestRequest;
pub use response::{StatusLike, TestResponse};

use std::fmt;

use axum::http::header::{HeaderName, HeaderValue};

/// A header name and value from anything convertible, or a panic that says
/// which of the two is invalid.
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
