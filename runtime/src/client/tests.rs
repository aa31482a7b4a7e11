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
        .assert_json(
            &json!({ "content_type": "application/x-custom", "len": 3, "text": "\u{0}\u{1}\u{2}" }),
        );

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

// ---------------------------------------------------------------------------
// TestApp: the ways an app can be built

/// Built asynchronously, from the whole context.
struct AsyncApp;
impl TestApp for AsyncApp {
    async fn build(ctx: &TestContext) -> Router {
        tokio::task::yield_now().await;
        let name = ctx.test_name();
        app().route("/name", get(move || async move { name }))
    }
}

/// Built synchronously from the whole context (the older form of `build`).
struct ContextApp;
impl TestApp for ContextApp {
    fn router_for(ctx: &TestContext) -> Router {
        let _ = ctx.db();
        app()
    }
}

#[test]
fn every_way_of_building_an_app_gives_a_send_parameter() {
    // `#[db_test]` needs `from_context` to be `Send`: the test may move
    // between the shared runtime's threads while the app is built.
    fn assert_send<F: std::future::Future + Send>(_: F) {}
    fn check(ctx: &TestContext) {
        assert_send(TestClient::<EchoApp>::from_context(ctx));
        assert_send(TestClient::<AsyncApp>::from_context(ctx));
        assert_send(TestClient::<ContextApp>::from_context(ctx));
        assert_send(AsyncApp::build(ctx));
    }
    let _ = check;
}

#[tokio::test]
#[should_panic(
    expected = "`TestApp::router` is not implemented for `db_test::client::tests::AsyncApp`: implement `router`, or `build`"
)]
async fn from_db_cannot_build_an_app_that_only_builds_asynchronously() {
    let pool = sqlx::PgPool::connect_lazy("postgres://localhost/never-connected").unwrap();
    let _ = TestClient::<AsyncApp>::from_db(Db::from_pool(pool));
}

#[tokio::test]
async fn from_db_builds_an_app_with_a_sync_router() {
    let pool = sqlx::PgPool::connect_lazy("postgres://localhost/never-connected").unwrap();
    let client = TestClient::<EchoApp>::from_db(Db::from_pool(pool));
    client.get("/echo-method").await.assert_text("GET");
}

// ---------------------------------------------------------------------------
// Status classes

#[tokio::test]
async fn status_class_assertions_accept_their_class() {
    let client = TestClient::new(app());
    for code in [200, 201, 204, 299] {
        client
            .get(format!("/status/{code}"))
            .await
            .assert_status_success();
    }
    for code in [301, 302, 303, 307, 308] {
        client
            .get(format!("/status/{code}"))
            .await
            .assert_status_redirect();
    }
    for code in [400, 401, 403, 404, 409, 422, 499] {
        client
            .get(format!("/status/{code}"))
            .await
            .assert_status_client_error();
    }
    for code in [500, 502, 503, 599] {
        client
            .get(format!("/status/{code}"))
            .await
            .assert_status_server_error();
    }
}

#[tokio::test]
async fn status_class_assertions_reject_other_classes() {
    let client = TestClient::new(app());
    type Assertion = fn(&TestResponse) -> &TestResponse;
    let cases: [(Assertion, u16, &str); 4] = [
        (
            TestResponse::assert_status_success,
            404,
            "expected a success status (2xx), got 404 Not Found",
        ),
        (
            TestResponse::assert_status_redirect,
            200,
            "expected a redirect status (3xx), got 200 OK",
        ),
        (
            TestResponse::assert_status_client_error,
            500,
            "expected a client error status (4xx), got 500 Internal Server Error",
        ),
        (
            TestResponse::assert_status_server_error,
            422,
            "expected a server error status (5xx), got 422 Unprocessable Entity",
        ),
    ];
    for (assertion, code, expected) in cases {
        let res = client.get(format!("/status/{code}")).await;
        let message = panic_message(std::panic::catch_unwind(AssertUnwindSafe(|| {
            assertion(&res);
        })));
        assert!(message.contains(expected), "{message}");
        assert!(
            message.contains(&format!("request: GET /status/{code}")),
            "{message}"
        );
        assert!(
            message.contains(&format!("body: status {code}")),
            "{message}"
        );
    }
}

#[tokio::test]
#[should_panic(
    expected = "expected a success status (2xx), got 409 Conflict\n  request: POST /conflict\n   status: 409 Conflict\n     body: {\"error\":\"email already taken\",\"field\":\"email\"}"
)]
async fn a_failed_status_class_assertion_shows_the_request() {
    TestClient::new(app())
        .post("/conflict")
        .await
        .assert_status_success();
}

// ---------------------------------------------------------------------------
// JSON containment

#[tokio::test]
async fn json_contains_ignores_keys_it_does_not_mention() {
    let res = TestClient::new(app()).get("/profile").await;
    res.assert_json_contains(&json!({}))
        .assert_json_contains(&json!({ "id": 41 }))
        .assert_json_contains(&json!({ "user": { "name": "Ada" } }))
        .assert_json_contains(&json!({ "user": { "roles": ["reader", "writer"] } }));

    #[derive(Serialize)]
    struct Name {
        name: &'static str,
    }
    #[derive(Serialize)]
    struct Expected {
        user: Name,
    }
    res.assert_json_contains(&Expected {
        user: Name { name: "Ada" },
    });
}

#[tokio::test]
#[should_panic(
    expected = "JSON body does not contain the expected JSON at $.user.roles[1]: expected \"admin\", got \"writer\""
)]
async fn json_contains_names_the_mismatched_element() {
    TestClient::new(app())
        .get("/profile")
        .await
        .assert_json_contains(&json!({ "user": { "roles": ["reader", "admin"] } }));
}

#[tokio::test]
async fn json_contains_failures_show_both_documents_and_the_request() {
    let res = TestClient::new(app()).get("/profile").await;
    let message = panic_message(std::panic::catch_unwind(AssertUnwindSafe(|| {
        res.assert_json_contains(&json!({ "user": { "phone": "555" } }));
    })));
    assert!(
        message.contains("at $.user.phone: missing (expected \"555\")"),
        "{message}"
    );
    assert!(message.contains("expected (subset): {"), "{message}");
    assert!(message.contains("\"roles\": ["), "{message}");
    assert!(message.contains("request: GET /profile"), "{message}");
    assert!(message.contains("status: 200 OK"), "{message}");

    let message = panic_message(std::panic::catch_unwind(AssertUnwindSafe(|| {
        res.assert_json_contains(&json!({ "user": { "roles": ["reader"] } }));
    })));
    assert!(
        message.contains("at $.user.roles: expected 1 elements, got 2"),
        "{message}"
    );

    let text = TestClient::new(app()).get("/echo-method").await;
    let message = panic_message(std::panic::catch_unwind(AssertUnwindSafe(|| {
        text.assert_json_contains(&json!({}));
    })));
    assert!(
        message.contains("expected a JSON body that contains {}, but the body is not JSON"),
        "{message}"
    );
    assert!(message.contains("body: GET"), "{message}");
}

// ---------------------------------------------------------------------------
// Text containment

#[tokio::test]
async fn text_contains_finds_a_substring() {
    TestClient::new(app())
        .post("/conflict")
        .await
        .assert_text_contains("already taken")
        .assert_text_contains("")
        .assert_text_contains("{\"error\"");
}

#[tokio::test]
#[should_panic(
    expected = "expected the body to contain \"welcome\"\n  request: GET /status/404\n   status: 404 Not Found\n     body: status 404"
)]
async fn text_contains_failures_show_the_request() {
    TestClient::new(app())
        .get("/status/404")
        .await
        .assert_text_contains("welcome");
}

// ---------------------------------------------------------------------------
// Response cookies

#[tokio::test]
async fn response_cookies_come_from_set_cookie_headers() {
    let client = TestClient::new(app());
    let res = client.post("/login").await;
    let cookies = res.cookies();
    let pairs: Vec<_> = cookies.iter().map(|c| (c.name(), c.value())).collect();
    assert_eq!(pairs, [("session", "abc123"), ("theme", "dark")]);

    let session = res.cookie("session").unwrap();
    assert_eq!(session.value(), "abc123");
    assert_eq!(session.path(), Some("/"));
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(res.cookie("theme").unwrap().http_only(), None);
    assert!(res.cookie("missing").is_none());
    // The response's cookies do not need the client's jar.
    assert_eq!(client.cookie("session"), None);

    let res = client.post("/logout").await;
    let session = res.cookie("session").unwrap();
    assert_eq!(session.value(), "");
    assert_eq!(session.max_age(), Some(cookie::time::Duration::ZERO));
    let theme = res.cookie("theme").unwrap();
    assert_eq!(theme.expires_datetime().unwrap().unix_timestamp(), 0);

    assert!(client.get("/echo-method").await.cookies().is_empty());
}

#[tokio::test]
async fn the_last_set_cookie_of_a_name_wins_and_garbage_is_skipped() {
    let router = Router::new().route(
        "/twice",
        get(|| async {
            AppendHeaders([
                (header::SET_COOKIE, "a=1"),
                (header::SET_COOKIE, "not a cookie"),
                (header::SET_COOKIE, "a=2; SameSite=Strict"),
            ])
        }),
    );
    let res = TestClient::new(router).get("/twice").await;
    assert_eq!(res.cookies().len(), 2);
    let a = res.cookie("a").unwrap();
    assert_eq!(a.value(), "2");
    assert_eq!(a.same_site(), Some(SameSite::Strict));
}

// ---------------------------------------------------------------------------
// Display

#[tokio::test]
async fn display_shows_status_sorted_headers_and_pretty_json() {
    let router = Router::new().route(
        "/created",
        post(|| async {
            (
                StatusCode::CREATED,
                AppendHeaders([
                    ("x-b", "2"),
                    ("location", "/things/1"),
                    ("x-a", "first"),
                    ("x-a", "second"),
                ]),
                Json(json!({ "id": 1, "tags": ["a"] })),
            )
        }),
    );
    let res = TestClient::new(router).post("/created").await;
    let expected = "201 Created\n\
                    content-length: 21\n\
                    content-type: application/json\n\
                    location: /things/1\n\
                    x-a: first\n\
                    x-a: second\n\
                    x-b: 2\n\
                    \n\
                    {\n  \"id\": 1,\n  \"tags\": [\n    \"a\"\n  ]\n}";
    assert_eq!(res.to_string(), expected);
    // The same response always prints the same.
    assert_eq!(format!("{res}"), expected);
}

#[tokio::test]
async fn display_shows_text_as_is_and_binary_as_its_length() {
    let client = TestClient::new(app());
    assert_eq!(
        client.get("/status/404").await.to_string(),
        "404 Not Found\ncontent-length: 10\ncontent-type: text/plain; charset=utf-8\n\nstatus 404"
    );

    let router = Router::new()
        .route("/empty", get(|| async { StatusCode::NO_CONTENT }))
        .route("/binary", get(|| async { vec![0xffu8, 0xfe, 0x00] }))
        .route(
            "/not-json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], "{oops") }),
        );
    let client = TestClient::new(router);
    assert_eq!(
        client.get("/empty").await.to_string(),
        "204 No Content\ncontent-length: 0"
    );
    assert_eq!(
        client.get("/binary").await.to_string(),
        "200 OK\ncontent-length: 3\ncontent-type: application/octet-stream\n\n(3 bytes, not UTF-8)"
    );
    assert_eq!(
        client.get("/not-json").await.to_string(),
        "200 OK\ncontent-length: 5\ncontent-type: application/json\n\n{oops"
    );
}

// ---------------------------------------------------------------------------
// Multipart

#[tokio::test]
async fn multipart_forms_reach_axums_multipart_extractor() {
    let png = vec![0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n', 0, 0xff];
    let form = MultipartForm::new()
        .text("title", "Holiday \"2024\"")
        .text("empty", "")
        .file("photo", "beach.png", "image/png", png.clone())
        .file(
            "notes",
            "notes.txt",
            "text/plain; charset=utf-8",
            "--db-test-boundary-00000000\r\nnot the end\r\n",
        );
    let res = TestClient::new(app()).post("/upload").multipart(form).await;
    res.assert_status(200).assert_json(&json!([
        { "name": "title", "file_name": null, "content_type": null, "data": "Holiday \"2024\"", "len": 14 },
        { "name": "empty", "file_name": null, "content_type": null, "data": "", "len": 0 },
        {
            "name": "photo", "file_name": "beach.png", "content_type": "image/png",
            "data": String::from_utf8_lossy(&png), "len": png.len(),
        },
        {
            "name": "notes", "file_name": "notes.txt", "content_type": "text/plain; charset=utf-8",
            "data": "--db-test-boundary-00000000\r\nnot the end\r\n", "len": 42,
        },
    ]));
}

#[tokio::test]
async fn multipart_sets_its_content_type_unless_the_request_does() {
    let client = TestClient::new(app());
    let res = client
        .post("/raw")
        .multipart(MultipartForm::new().text("a", "1"))
        .await;
    let content_type = res.json::<Value>()["content_type"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        content_type,
        "multipart/form-data; boundary=db-test-boundary-00000000"
    );

    client
        .post("/upload")
        .multipart(MultipartForm::new())
        .await
        .assert_status(200)
        .assert_json(&json!([]));

    // A content type without a boundary is the caller's choice, and axum
    // refuses it.
    client
        .post("/upload")
        .multipart(MultipartForm::new().text("a", "1"))
        .header("content-type", "multipart/form-data")
        .await
        .assert_status_client_error();
}
