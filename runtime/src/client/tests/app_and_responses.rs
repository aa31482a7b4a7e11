//! The ways a `TestApp` is built, and the response assertions (status
//! classes, JSON subsets, text, cookies, `Display`, multipart).

use super::*;

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
    expected = "`TestApp::router` is not implemented for `db_test::client::tests::app_and_responses::AsyncApp`: implement `router`, or `build`"
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
