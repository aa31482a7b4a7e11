//! The client end to end, against a small in-process router.

use super::response::BODY_PREVIEW_LIMIT;
use super::*;

use std::collections::{BTreeMap, HashMap};
use std::future::IntoFuture;
use std::panic::AssertUnwindSafe;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Form, Query};
use axum::http::header::{self, HeaderMap};
use axum::http::{Method, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use futures_util::FutureExt;
use serde::Serialize;
use serde_json::{Value, json};

use crate::{Db, FromTestContext, TestContext};

/// The request's headers, but for `host` and `content-length`, which every
/// request has (see `requests::every_request_has_a_host_and_its_length`).
fn echo_headers(headers: HeaderMap) -> Json<Value> {
    let map: BTreeMap<String, Vec<String>> = headers
        .keys()
        .filter(|name| *name != header::HOST && *name != header::CONTENT_LENGTH)
        .fold(BTreeMap::new(), |mut map, name| {
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
            "/status/{code}",
            get(|axum::extract::Path(code): axum::extract::Path<u16>| async move {
                let status = StatusCode::from_u16(code).unwrap();
                (status, format!("status {code}"))
            }),
        )
        .route(
            "/profile",
            get(|| async {
                Json(json!({
                    "id": 41,
                    "created_at": "2024-01-31T12:34:56Z",
                    "user": {
                        "name": "Ada",
                        "email": "ada@example.com",
                        "roles": ["reader", "writer"],
                    },
                }))
            }),
        )
        .route("/upload", post(upload))
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

/// Every part of a multipart body, as the handler sees it through axum's
/// `Multipart` extractor.
async fn upload(mut form: axum::extract::Multipart) -> Json<Value> {
    let mut parts = Vec::new();
    while let Some(field) = form.next_field().await.unwrap() {
        let name = field.name().map(str::to_owned);
        let file_name = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(str::to_owned);
        let data = field.bytes().await.unwrap();
        parts.push(json!({
            "name": name,
            "file_name": file_name,
            "content_type": content_type,
            "data": String::from_utf8_lossy(&data),
            "len": data.len(),
        }));
    }
    Json(json!(parts))
}

fn panic_message(result: std::thread::Result<()>) -> String {
    let payload = result.expect_err("expected a panic");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// An app built from the `Db` alone, around [`app`].
struct EchoApp;
impl TestApp for EchoApp {
    fn router(_db: Db) -> Router {
        app()
    }
}

mod app_and_responses;
mod requests;
