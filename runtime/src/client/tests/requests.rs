//! Requests: methods, cookies, headers, queries, bodies, extensions,
//! concurrency, panics, and the failure messages of the basic assertions.

use super::*;

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
async fn cookies_can_be_set_and_overridden_per_request_by_name() {
    let mut client = TestClient::new(app());
    client.set_cookie("a", "1");
    client
        .get("/headers")
        .await
        .assert_json(&json!({ "cookie": ["a=1"] }));
    client
        .get("/headers")
        .header("cookie", "mine=2; a=3")
        .await
        .assert_json(&json!({ "cookie": ["mine=2; a=3"] }));
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

    // A fragment stays last: the query goes before it, and reaches the app.
    let res = client.get("/query#top").query(&[("q", "z")]).await;
    assert_eq!(res.request_path(), "/query?q=z#top");
    res.assert_json(&json!([["q", "z"]]));
    let res = client.get("/query?a=1#top").query(&[("b", 2)]).await;
    assert_eq!(res.request_path(), "/query?a=1&b=2#top");
    res.assert_json(&json!([["a", "1"], ["b", "2"]]));
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

/// Every request carries a `Host` (`localhost`, or the authority of an
/// absolute URL) and, with a body or for POST, PUT and PATCH, its
/// `Content-Length`, as an HTTP/1.1 client sends them.
#[tokio::test]
async fn every_request_has_a_host_and_its_length() {
    let app = Router::new().route(
        "/h",
        axum::routing::any(|headers: HeaderMap| async move {
            let get = |name: header::HeaderName| {
                headers.get(name).map(|v| v.to_str().unwrap().to_owned())
            };
            Json(json!([get(header::HOST), get(header::CONTENT_LENGTH)]))
        }),
    );
    let client = TestClient::new(app);
    client
        .get("/h")
        .await
        .assert_json(&json!(["localhost", null]));
    client
        .post("/h")
        .await
        .assert_json(&json!(["localhost", "0"]));
    client
        .put("/h")
        .json(&json!({"a": 1}))
        .await
        .assert_json(&json!(["localhost", "7"]));
    client
        .get("http://api.example.com/h")
        .await
        .assert_json(&json!(["api.example.com", null]));
    client
        .get("/h")
        .header("host", "tenant.example.com")
        .await
        .assert_json(&json!(["tenant.example.com", null]));
}

/// A request's own `Cookie` header joins the jar's cookies (its value wins
/// for a name in both) instead of replacing them.
#[tokio::test]
async fn a_requests_cookie_header_merges_with_the_jar() {
    let client = TestClient::new(app()).with_cookies();
    client.post("/login").await;
    let headers: Value = client
        .get("/headers")
        .header("cookie", "extra=1")
        .await
        .json();
    assert_eq!(
        headers["cookie"],
        json!(["session=abc123; theme=dark; extra=1"])
    );
    let headers: Value = client
        .get("/headers")
        .header("cookie", "theme=light; more=2")
        .await
        .json();
    assert_eq!(
        headers["cookie"],
        json!(["session=abc123; theme=light; more=2"])
    );
    // Without a jar, the request's header goes as it is.
    let plain = TestClient::new(app());
    let headers: Value = plain.get("/headers").header("cookie", "a=1").await.json();
    assert_eq!(headers["cookie"], json!(["a=1"]));
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

#[test]
fn typed_clients_are_send_sync_and_clone() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<TestClient>();
    assert_traits::<TestClient<EchoApp>>();
    fn assert_send<T: Send>(_: &T) {}
    let client = TestClient::<EchoApp>::from_router(app());
    assert_send(&client.get("/").into_future());
}
