//! The users API, tested the way a user of db-test writes tests: every test
//! gets its own rolled-back transaction (`TestDb`) and an in-process client
//! (`TestClient<App>`) whose app runs on that same transaction.

use db_test::{Db, TestApp, TestClient, TestContext, TestDb, db_test};
use example_app::{AuthMode, CurrentUser, StaticToken, User, app_with_auth};
use serde_json::{Value, json};

/// The app with authentication bypassed: every request is the `tests` writer.
struct App;

impl TestApp for App {
    fn router(db: Db) -> axum::Router {
        app_with_auth(db, AuthMode::AllowAll(CurrentUser::writer("tests")))
    }
}

/// The app with authentication bypassed, as a read-only principal.
struct ReadOnlyApp;

impl TestApp for ReadOnlyApp {
    fn router(db: Db) -> axum::Router {
        app_with_auth(db, AuthMode::AllowAll(CurrentUser::reader("viewer")))
    }
}

/// A token configured the way `API_TOKENS` would configure it.
const ENV_TOKEN: &str = "env-token-0123456789";

/// The app with real bearer-token authentication: [`ENV_TOKEN`] plus the rows
/// of `api_tokens`.
struct RealAuthApp;

impl TestApp for RealAuthApp {
    fn router(db: Db) -> axum::Router {
        app_with_auth(
            db,
            AuthMode::Tokens(vec![StaticToken {
                name: "ci".into(),
                token: ENV_TOKEN.into(),
                can_write: true,
            }]),
        )
    }
}

/// A token the app provisions for itself while it starts.
const PROVISIONED_TOKEN: &str = "provisioned-token-0123456789";

/// The app with real authentication, built the way an app whose start-up
/// awaits is built: [`TestApp::build`] provisions the app's own token in
/// `api_tokens` before the router exists. It runs inside the test's
/// transaction, so the row is the test's and is rolled back with it.
struct ProvisionedApp;

impl TestApp for ProvisionedApp {
    async fn build(ctx: &TestContext) -> axum::Router {
        let db = ctx.db();
        sqlx::query("INSERT INTO api_tokens (name, token, scope) VALUES ($1, $2, 'write')")
            .bind("provisioned")
            .bind(PROVISIONED_TOKEN)
            .execute(&db)
            .await
            .expect("provision the app's token");
        app_with_auth(db, AuthMode::Tokens(Vec::new()))
    }
}

// ---------------------------------------------------------------------------
// Helpers

async fn create_user(client: &TestClient<impl Sized>, email: &str, name: &str) -> User {
    let res = client
        .post("/users")
        .json(&json!({ "email": email, "name": name }))
        .await;
    res.assert_status(201);
    res.json()
}

async fn user_count(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(db)
        .await
        .unwrap()
}

async fn audit_actions(db: &TestDb) -> Vec<(String, String)> {
    sqlx::query_as("SELECT actor, action FROM audit_log ORDER BY id")
        .fetch_all(db)
        .await
        .unwrap()
}

async fn seed_token(db: &TestDb, name: &str, token: &str, scope: &str) {
    sqlx::query("INSERT INTO api_tokens (name, token, scope) VALUES ($1, $2, $3)")
        .bind(name)
        .bind(token)
        .bind(scope)
        .execute(db)
        .await
        .unwrap();
}

fn assert_timestamp(value: &str) {
    // 2024-01-31T12:34:56.789012Z
    assert_eq!(value.len(), 27, "{value}");
    assert!(
        value.ends_with('Z') && value.as_bytes()[10] == b'T',
        "{value}"
    );
}

// ---------------------------------------------------------------------------
// Health

#[db_test]
async fn health_needs_no_token(client: TestClient<RealAuthApp>) {
    client
        .get("/health")
        .await
        .assert_status(200)
        .assert_json(&json!({ "status": "ok" }));
}

#[db_test]
async fn unknown_routes_are_json_404s(client: TestClient<App>) {
    client
        .get("/nope")
        .await
        .assert_status(404)
        .assert_header("content-type", "application/json")
        .assert_json(&json!({ "error": "no such route" }));
    client.put("/users/1").await.assert_status(405);
}

// ---------------------------------------------------------------------------
// Create and read

#[db_test]
async fn create_then_fetch(client: TestClient<App>, db: TestDb) {
    let res = client
        .post("/users")
        .json(&json!({ "email": "a@example.com", "name": "A" }))
        .await;
    res.assert_status(201);
    let created: User = res.json();
    res.assert_header("location", &format!("/users/{}", created.id));
    assert_eq!(created.email, "a@example.com");
    assert_eq!(created.name, "A");
    assert_timestamp(&created.created_at);
    assert_timestamp(&created.updated_at);

    let fetched = client.get(format!("/users/{}", created.id)).await;
    fetched.assert_status(200);
    assert_eq!(fetched.json::<User>(), created);

    assert_eq!(user_count(&db).await, 1);
}

#[db_test]
async fn writes_through_the_api_are_rows_in_the_test_transaction(
    client: TestClient<App>,
    db: TestDb,
) {
    let user = create_user(&client, "rows@example.com", "Rows").await;

    let (email, name): (String, String) =
        sqlx::query_as("SELECT email, name FROM users WHERE id = $1")
            .bind(user.id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(
        (email.as_str(), name.as_str()),
        ("rows@example.com", "Rows")
    );

    // The audit row was written in the same app transaction, as the principal.
    let (actor, action, user_id, detail): (String, String, Option<i64>, Value) =
        sqlx::query_as("SELECT actor, action, user_id, detail FROM audit_log")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(actor, "tests");
    assert_eq!(action, "user.create");
    assert_eq!(user_id, Some(user.id));
    assert_eq!(detail, json!({ "email": "rows@example.com" }));
}

#[db_test]
async fn rows_seeded_through_testdb_are_served_by_the_api(client: TestClient<App>, db: TestDb) {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO users (email, name, created_at, updated_at) \
         VALUES ('seeded@example.com', 'Seeded', '2020-02-29 12:00:00+00', '2021-03-01 08:30:00.5+00') \
         RETURNING id",
    )
    .fetch_one(&db)
    .await
    .unwrap();

    client
        .get(format!("/users/{id}"))
        .await
        .assert_status(200)
        .assert_json(&json!({
            "id": id,
            "email": "seeded@example.com",
            "name": "Seeded",
            "created_at": "2020-02-29T12:00:00.000000Z",
            "updated_at": "2021-03-01T08:30:00.500000Z",
        }));
}

#[db_test]
async fn created_users_contain_what_was_sent(client: TestClient<App>) {
    // The id and the timestamps are the server's: check the rest.
    client
        .post("/users")
        .json(&json!({ "email": "Sub@Example.com", "name": "Sub Set" }))
        .await
        .assert_status_success()
        .assert_json_contains(&json!({ "email": "Sub@Example.com", "name": "Sub Set" }));
    client
        .get("/users")
        .await
        .assert_status_success()
        .assert_json_contains(&json!([{ "email": "Sub@Example.com" }]));
}

#[db_test]
async fn a_response_prints_as_status_headers_and_body(client: TestClient<App>) {
    let res = client.get("/users/999999").await;
    res.assert_status_client_error()
        .assert_text_contains("not found");
    assert_eq!(
        res.to_string(),
        "404 Not Found\n\
         content-length: 26\n\
         content-type: application/json\n\
         \n\
         {\n  \"error\": \"user not found\"\n}"
    );
}

#[db_test]
#[should_panic(
    expected = "JSON body does not contain the expected JSON at $.name: expected \"B\", got \"A\""
)]
async fn a_failed_containment_names_the_field(client: TestClient<App>) {
    client
        .post("/users")
        .json(&json!({ "email": "a@example.com", "name": "A" }))
        .await
        .assert_json_contains(&json!({ "email": "a@example.com", "name": "B" }));
}

#[db_test]
async fn missing_and_malformed_ids(client: TestClient<App>) {
    client
        .get("/users/999999")
        .await
        .assert_status(404)
        .assert_json(&json!({ "error": "user not found" }));
    let res = client.get("/users/abc").await;
    res.assert_status(400);
    assert!(res.json::<Value>()["error"].is_string());
}

// ---------------------------------------------------------------------------
// Validation

#[db_test]
async fn invalid_emails_are_422_and_store_nothing(client: TestClient<App>, db: TestDb) {
    for email in [
        "",
        "plain",
        "@example.com",
        "a@",
        "a@localhost",
        "a b@example.com",
        "a@@example.com",
    ] {
        client
            .post("/users")
            .json(&json!({ "email": email, "name": "A" }))
            .await
            .assert_status(422)
            .assert_json(&json!({ "error": "email is not a valid address", "field": "email" }));
    }
    let long = format!("{}@example.com", "a".repeat(250));
    client
        .post("/users")
        .json(&json!({ "email": long, "name": "A" }))
        .await
        .assert_status(422)
        .assert_json(&json!({ "error": "email must be at most 254 bytes", "field": "email" }));
    assert_eq!(user_count(&db).await, 0);
    assert!(audit_actions(&db).await.is_empty());
}

#[db_test]
async fn empty_or_overlong_names_are_422(client: TestClient<App>, db: TestDb) {
    for name in ["", "   ", "\t\n"] {
        client
            .post("/users")
            .json(&json!({ "email": "a@example.com", "name": name }))
            .await
            .assert_status(422)
            .assert_json(&json!({ "error": "name must not be empty", "field": "name" }));
    }
    client
        .post("/users")
        .json(&json!({ "email": "a@example.com", "name": "n".repeat(201) }))
        .await
        .assert_status(422)
        .assert_json(&json!({ "error": "name must be at most 200 characters", "field": "name" }));
    // 200 characters, several bytes each, is fine.
    let long = "é".repeat(200);
    let user = create_user(&client, "a@example.com", &long).await;
    assert_eq!(user.name, long);
    assert_eq!(user_count(&db).await, 1);
}

#[db_test]
async fn malformed_bodies_are_json_errors(client: TestClient<App>, db: TestDb) {
    // Missing field, unknown field, wrong type: 422 from the JSON decoder.
    for body in [
        json!({ "email": "a@example.com" }),
        json!({ "email": "a@example.com", "name": "A", "admin": true }),
        json!({ "email": 42, "name": "A" }),
        json!("not an object"),
    ] {
        let res = client.post("/users").json(&body).await;
        res.assert_status(422);
        assert!(res.json::<Value>()["error"].is_string());
    }
    // Broken JSON: 400. No JSON content type: 415.
    let res = client
        .post("/users")
        .header("content-type", "application/json")
        .text("{\"email\": ")
        .await;
    res.assert_status(400);
    assert!(res.json::<Value>()["error"].is_string());
    client
        .post("/users")
        .text(r#"{"email":"a@example.com","name":"A"}"#)
        .await
        .assert_status(415);
    assert_eq!(user_count(&db).await, 0);
}

#[db_test]
async fn oversized_bodies_are_413(client: TestClient<App>, db: TestDb) {
    let name = "x".repeat(example_app::BODY_LIMIT);
    let res = client
        .post("/users")
        .json(&json!({ "email": "big@example.com", "name": name }))
        .await;
    res.assert_status(413);
    assert!(res.json::<Value>()["error"].is_string());
    assert_eq!(user_count(&db).await, 0);
}

// ---------------------------------------------------------------------------
// Duplicates

#[db_test]
async fn duplicate_email_is_409_and_the_test_goes_on(client: TestClient<App>, db: TestDb) {
    let first = create_user(&client, "dup@example.com", "First").await;

    // Same address, different case: the unique index is on lower(email).
    for email in ["dup@example.com", "DUP@Example.COM"] {
        client
            .post("/users")
            .json(&json!({ "email": email, "name": "Second" }))
            .await
            .assert_status(409)
            .assert_json(&json!({
                "error": "a user with this email already exists",
                "field": "email",
            }));
    }

    // The failed INSERTs poisoned nothing: later requests and queries work.
    let other = create_user(&client, "other@example.com", "Other").await;
    let list: Vec<User> = client.get("/users").await.json();
    assert_eq!(list, vec![first, other]);
    assert_eq!(user_count(&db).await, 2);
    assert_eq!(audit_actions(&db).await.len(), 2);
}

// ---------------------------------------------------------------------------
// Listing

#[db_test]
async fn list_is_ordered_by_id_and_paged(client: TestClient<App>, db: TestDb) {
    // Seeded out of alphabetical order, to show that the order is by id.
    let mut ids = Vec::new();
    for name in ["eve", "bob", "dan", "amy", "cat"] {
        let id: i64 =
            sqlx::query_scalar("INSERT INTO users (email, name) VALUES ($1, $2) RETURNING id")
                .bind(format!("{name}@example.com"))
                .bind(name)
                .fetch_one(&db)
                .await
                .unwrap();
        ids.push(id);
    }

    let all: Vec<User> = client.get("/users").await.json();
    assert_eq!(all.iter().map(|u| u.id).collect::<Vec<_>>(), ids);
    assert_eq!(all[0].name, "eve");

    let res = client
        .get("/users")
        .query(&[("limit", 2), ("offset", 1)])
        .await;
    res.assert_status(200);
    let page: Vec<User> = res.json();
    assert_eq!(page.iter().map(|u| u.id).collect::<Vec<_>>(), ids[1..3]);

    let past_the_end: Vec<User> = client.get("/users?offset=5").await.json();
    assert!(past_the_end.is_empty());
}

#[db_test]
async fn list_on_an_empty_table_is_an_empty_array(client: TestClient<App>) {
    client
        .get("/users")
        .await
        .assert_status(200)
        .assert_json(&json!([]));
}

#[db_test]
async fn bad_paging_is_rejected(client: TestClient<App>) {
    for (query, field, error) in [
        ("limit=0", "limit", "limit must be between 1 and 100"),
        ("limit=101", "limit", "limit must be between 1 and 100"),
        ("offset=-1", "offset", "offset must not be negative"),
    ] {
        client
            .get(format!("/users?{query}"))
            .await
            .assert_status(422)
            .assert_json(&json!({ "error": error, "field": field }));
    }
    client.get("/users?limit=ten").await.assert_status(400);
}

// ---------------------------------------------------------------------------
// Update and delete

#[db_test]
async fn patch_changes_only_the_given_fields(client: TestClient<App>, db: TestDb) {
    let user = create_user(&client, "p@example.com", "Before").await;

    let res = client
        .patch(format!("/users/{}", user.id))
        .json(&json!({ "name": "After" }))
        .await;
    res.assert_status(200);
    let updated: User = res.json();
    assert_eq!(updated.name, "After");
    assert_eq!(updated.email, "p@example.com");
    assert_eq!(updated.created_at, user.created_at);

    let res = client
        .patch(format!("/users/{}", user.id))
        .json(&json!({ "email": "P@example.com", "name": null }))
        .await;
    res.assert_status(200);
    assert_eq!(res.json::<User>().name, "After");

    let row: (String, String) = sqlx::query_as("SELECT email, name FROM users WHERE id = $1")
        .bind(user.id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(row, ("P@example.com".into(), "After".into()));

    // An empty patch changes nothing and still answers the user.
    client
        .patch(format!("/users/{}", user.id))
        .json(&json!({}))
        .await
        .assert_status(200);
    let actions: Vec<String> = audit_actions(&db)
        .await
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    assert_eq!(
        actions,
        ["user.create", "user.update", "user.update", "user.update"]
    );
}

#[db_test]
async fn patch_errors(client: TestClient<App>, db: TestDb) {
    let taken = create_user(&client, "taken@example.com", "Taken").await;
    let user = create_user(&client, "mine@example.com", "Mine").await;
    let path = format!("/users/{}", user.id);

    client
        .patch("/users/424242")
        .json(&json!({ "name": "Ghost" }))
        .await
        .assert_status(404);
    client
        .patch(&path)
        .json(&json!({ "email": "not-an-email" }))
        .await
        .assert_status(422)
        .assert_json(&json!({ "error": "email is not a valid address", "field": "email" }));
    client
        .patch(&path)
        .json(&json!({ "name": " " }))
        .await
        .assert_status(422);
    client
        .patch(&path)
        .json(&json!({ "nickname": "x" }))
        .await
        .assert_status(422);
    client
        .patch(&path)
        .json(&json!({ "email": "TAKEN@example.com" }))
        .await
        .assert_status(409)
        .assert_json(&json!({
            "error": "a user with this email already exists",
            "field": "email",
        }));

    // None of it changed anything.
    client
        .get(&path)
        .await
        .assert_json(&serde_json::to_value(&user).unwrap());
    client
        .get(format!("/users/{}", taken.id))
        .await
        .assert_status(200);
    assert_eq!(user_count(&db).await, 2);
}

#[db_test]
async fn delete_then_gone(client: TestClient<App>, db: TestDb) {
    let user = create_user(&client, "bye@example.com", "Bye").await;
    let keep = create_user(&client, "keep@example.com", "Keep").await;
    let path = format!("/users/{}", user.id);

    let res = client.delete(&path).await;
    res.assert_status(204);
    assert!(res.bytes().is_empty());

    client.get(&path).await.assert_status(404);
    client.delete(&path).await.assert_status(404);
    client
        .get(format!("/users/{}", keep.id))
        .await
        .assert_status(200);

    assert_eq!(user_count(&db).await, 1);
    let logged: Option<i64> =
        sqlx::query_scalar("SELECT user_id FROM audit_log WHERE action = 'user.delete'")
            .fetch_optional(&db)
            .await
            .unwrap();
    assert_eq!(logged, Some(user.id));
}

// ---------------------------------------------------------------------------
// Bulk

#[db_test]
async fn bulk_creates_every_user(client: TestClient<App>, db: TestDb) {
    let res = client
        .post("/users/bulk")
        .json(&json!([
            { "email": "b1@example.com", "name": "B1" },
            { "email": "b2@example.com", "name": "B2" },
            { "email": "b3@example.com", "name": "B3" },
        ]))
        .await;
    res.assert_status(201);
    let users: Vec<User> = res.json();
    let emails: Vec<&str> = users.iter().map(|u| u.email.as_str()).collect();
    assert_eq!(
        emails,
        ["b1@example.com", "b2@example.com", "b3@example.com"]
    );

    assert_eq!(user_count(&db).await, 3);
    let detail: Value =
        sqlx::query_scalar("SELECT detail FROM audit_log WHERE action = 'user.bulk_create'")
            .fetch_one(&db)
            .await
            .unwrap();
    let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
    assert_eq!(detail, json!({ "count": 3, "ids": ids }));

    client
        .post("/users/bulk")
        .json(&json!([]))
        .await
        .assert_status(201)
        .assert_json(&json!([]));
}

#[db_test]
async fn bulk_with_an_existing_email_rolls_back_the_whole_batch(
    client: TestClient<App>,
    db: TestDb,
) {
    let existing = create_user(&client, "exists@example.com", "Exists").await;

    client
        .post("/users/bulk")
        .json(&json!([
            { "email": "new1@example.com", "name": "New 1" },
            { "email": "new2@example.com", "name": "New 2" },
            { "email": "Exists@example.com", "name": "Clash" },
            { "email": "new3@example.com", "name": "New 3" },
        ]))
        .await
        .assert_status(409)
        .assert_json(&json!({
            "error": "a user with this email already exists",
            "field": "email",
            "index": 2,
        }));

    // Rows 0 and 1 were inserted before the failure and are gone again.
    let emails: Vec<String> = sqlx::query_scalar("SELECT email FROM users ORDER BY id")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(emails, ["exists@example.com"]);
    assert_eq!(
        audit_actions(&db).await,
        [("tests".into(), "user.create".into())]
    );

    // The connection is healthy: the same batch without the clash goes through.
    client
        .post("/users/bulk")
        .json(&json!([
            { "email": "new1@example.com", "name": "New 1" },
            { "email": "new2@example.com", "name": "New 2" },
        ]))
        .await
        .assert_status(201);
    let list: Vec<User> = client.get("/users").await.json();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0], existing);
}

#[db_test]
async fn bulk_with_a_duplicate_inside_the_batch_stores_nothing(
    client: TestClient<App>,
    db: TestDb,
) {
    client
        .post("/users/bulk")
        .json(&json!([
            { "email": "twin@example.com", "name": "One" },
            { "email": "other@example.com", "name": "Other" },
            { "email": "TWIN@example.com", "name": "Two" },
        ]))
        .await
        .assert_status(409)
        .assert_json(&json!({
            "error": "a user with this email already exists",
            "field": "email",
            "index": 2,
        }));
    assert_eq!(user_count(&db).await, 0);
    assert!(audit_actions(&db).await.is_empty());
}

#[db_test]
async fn bulk_with_an_invalid_row_is_422_naming_it(client: TestClient<App>, db: TestDb) {
    client
        .post("/users/bulk")
        .json(&json!([
            { "email": "ok@example.com", "name": "Ok" },
            { "email": "ok2@example.com", "name": "Ok 2" },
            { "email": "ok3@example.com", "name": "" },
        ]))
        .await
        .assert_status(422)
        .assert_json(&json!({ "error": "name must not be empty", "field": "name", "index": 2 }));

    let too_many: Vec<Value> = (0..=example_app::api::MAX_BULK)
        .map(|i| json!({ "email": format!("u{i}@example.com"), "name": "U" }))
        .collect();
    client
        .post("/users/bulk")
        .json(&too_many)
        .await
        .assert_status(422)
        .assert_json(&json!({ "error": "at most 500 users per request", "field": "users" }));

    assert_eq!(user_count(&db).await, 0);
}

// ---------------------------------------------------------------------------
// Authentication

#[db_test]
async fn requests_without_a_valid_token_are_401(client: TestClient<RealAuthApp>, db: TestDb) {
    let body = json!({ "email": "x@example.com", "name": "X" });
    let requests = [
        client.get("/users"),
        client.get("/users/1"),
        client.post("/users").json(&body),
        client.patch("/users/1").json(&body),
        client.delete("/users/1"),
        client.post("/users/bulk").json(&json!([body])),
    ];
    for request in requests {
        request
            .await
            .assert_status(401)
            .assert_header("www-authenticate", "Bearer")
            .assert_json(&json!({ "error": "missing bearer token" }));
    }

    for authorization in [
        "Bearer wrong-token-0000000000",
        "Bearer env-token-012345678",
        "Bearer env-token-01234567890",
        "Basic ZW52LXRva2VuLTAxMjM0NTY3ODk=",
    ] {
        let res = client
            .post("/users")
            .header("authorization", authorization)
            .json(&body)
            .await;
        res.assert_status(401);
    }
    assert_eq!(user_count(&db).await, 0);
}

#[db_test]
async fn a_configured_token_is_accepted(client: TestClient<RealAuthApp>, db: TestDb) {
    let client = client.with_bearer(ENV_TOKEN);
    create_user(&client, "env@example.com", "Env").await;
    client.get("/users").await.assert_status(200);
    assert_eq!(
        audit_actions(&db).await,
        [("ci".into(), "user.create".into())]
    );
}

#[db_test]
async fn tokens_seeded_in_the_table_are_accepted_until_revoked(
    client: TestClient<RealAuthApp>,
    db: TestDb,
) {
    seed_token(&db, "deploy-bot", "table-token-abcdefghijklmnop", "write").await;

    let res = client
        .post("/users")
        .bearer("table-token-abcdefghijklmnop")
        .json(&json!({ "email": "bot@example.com", "name": "Bot" }))
        .await;
    res.assert_status(201);
    assert_eq!(
        audit_actions(&db).await,
        [("deploy-bot".into(), "user.create".into())]
    );

    sqlx::query("UPDATE api_tokens SET revoked_at = now() WHERE name = 'deploy-bot'")
        .execute(&db)
        .await
        .unwrap();
    client
        .get("/users")
        .bearer("table-token-abcdefghijklmnop")
        .await
        .assert_status(401)
        .assert_json(&json!({ "error": "invalid bearer token" }));
}

#[db_test]
async fn read_only_tokens_can_read_but_not_write(client: TestClient<RealAuthApp>, db: TestDb) {
    let user_id: i64 = sqlx::query_scalar(
        "INSERT INTO users (email, name) VALUES ('r@example.com', 'R') RETURNING id",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    seed_token(&db, "dashboard", "read-token-abcdefghijklmnop", "read").await;
    let client = client.with_bearer("read-token-abcdefghijklmnop");

    client.get("/users").await.assert_status(200);
    client
        .get(format!("/users/{user_id}"))
        .await
        .assert_status(200);

    let forbidden = json!({ "error": "this token is read-only" });
    client
        .post("/users")
        .json(&json!({ "email": "w@example.com", "name": "W" }))
        .await
        .assert_status(403)
        .assert_json(&forbidden);
    client
        .patch(format!("/users/{user_id}"))
        .json(&json!({ "name": "Changed" }))
        .await
        .assert_status(403);
    client
        .delete(format!("/users/{user_id}"))
        .await
        .assert_status(403)
        .assert_json(&forbidden);

    let name: String = sqlx::query_scalar("SELECT name FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(name, "R");
    assert_eq!(user_count(&db).await, 1);
}

#[db_test]
async fn an_app_built_asynchronously_runs_in_the_test_transaction(
    client: TestClient<ProvisionedApp>,
    db: TestDb,
) {
    // The row its start-up wrote is the test's.
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM api_tokens")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(names, ["provisioned"]);

    client.get("/users").await.assert_status(401);
    let client = client.with_bearer(PROVISIONED_TOKEN);
    create_user(&client, "boot@example.com", "Boot").await;
    assert_eq!(
        audit_actions(&db).await,
        [("provisioned".into(), "user.create".into())]
    );
}

#[db_test]
async fn the_bypassed_principal_is_what_the_app_sees(
    writer: TestClient<App>,
    reader: TestClient<ReadOnlyApp>,
    db: TestDb,
) {
    // Both clients run on the test's transaction: the reader sees the writer's user.
    let user = create_user(&writer, "shared@example.com", "Shared").await;
    reader
        .get(format!("/users/{}", user.id))
        .await
        .assert_status(200);
    reader
        .delete(format!("/users/{}", user.id))
        .await
        .assert_status(403);
    assert_eq!(user_count(&db).await, 1);
}

// ---------------------------------------------------------------------------
// Concurrency

#[db_test]
async fn concurrent_creates_from_spawned_tasks(client: TestClient<App>, db: TestDb) {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let email = format!("task{i}@example.com");
                let user = create_user(&client, &email, &format!("Task {i}")).await;
                client
                    .get(format!("/users/{}", user.id))
                    .await
                    .assert_status(200);
                user.id
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 16);

    assert_eq!(user_count(&db).await, 16);
    let listed: Vec<User> = client.get("/users").await.json();
    assert_eq!(listed.iter().map(|u| u.id).collect::<Vec<_>>(), ids);
}

#[db_test]
async fn concurrent_duplicates_create_exactly_one_user(client: TestClient<App>, db: TestDb) {
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .post("/users")
                    .json(&json!({ "email": "race@example.com", "name": format!("Racer {i}") }))
                    .await
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses.sort_unstable();
    let mut expected = vec![409; 9];
    expected.insert(0, 201);
    assert_eq!(statuses, expected);
    assert_eq!(user_count(&db).await, 1);
    assert_eq!(audit_actions(&db).await.len(), 1);
}

// ---------------------------------------------------------------------------
// Hostile input

const INJECTION_NAMES: &[&str] = &[
    "Robert'); DROP TABLE users;--",
    "' OR '1'='1",
    "\"; DELETE FROM audit_log; --",
    "$1 $2 $$ $tag$ E'\\\\x00'",
    "%_\\%' UNION SELECT token FROM api_tokens --",
    "名前 🙂 <script>alert(1)</script>",
];

const INJECTION_EMAILS: &[&str] = &[
    "x'OR'1'='1@example.com",
    "robert');DROP/**/TABLE/**/users;--@example.com",
    "\"quoted\"@example.com",
    "a$1$$b@example.com",
];

#[db_test]
async fn injection_strings_are_stored_verbatim(client: TestClient<App>, db: TestDb) {
    let mut created = Vec::new();
    for (i, name) in INJECTION_NAMES.iter().enumerate() {
        created.push(create_user(&client, &format!("n{i}@example.com"), name).await);
    }
    for email in INJECTION_EMAILS {
        created.push(create_user(&client, email, email).await);
    }

    for user in &created {
        let (email, name): (String, String) =
            sqlx::query_as("SELECT email, name FROM users WHERE id = $1")
                .bind(user.id)
                .fetch_one(&db)
                .await
                .unwrap();
        assert_eq!((&email, &name), (&user.email, &user.name));
        client
            .get(format!("/users/{}", user.id))
            .await
            .assert_json(&serde_json::to_value(user).unwrap());
    }
    assert_eq!(created[0].name, INJECTION_NAMES[0]);
    assert_eq!(created[INJECTION_NAMES.len()].email, INJECTION_EMAILS[0]);

    // Every table is still there and nothing else was touched.
    assert_eq!(user_count(&db).await, created.len() as i64);
    assert_eq!(audit_actions(&db).await.len(), created.len());
    let tokens: i64 = sqlx::query_scalar("SELECT count(*) FROM api_tokens")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(tokens, 0);
}

#[db_test]
async fn injection_strings_through_patch_bulk_path_and_query(client: TestClient<App>, db: TestDb) {
    let user = create_user(&client, "target@example.com", "Target").await;

    for name in INJECTION_NAMES {
        let res = client
            .patch(format!("/users/{}", user.id))
            .json(&json!({ "name": name }))
            .await;
        res.assert_status(200);
        assert_eq!(res.json::<User>().name, *name);
    }

    let batch: Vec<Value> = INJECTION_EMAILS
        .iter()
        .map(|email| json!({ "email": email, "name": INJECTION_NAMES[0] }))
        .collect();
    let res = client.post("/users/bulk").json(&batch).await;
    res.assert_status(201);
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT email FROM users WHERE id <> $1 ORDER BY id")
            .bind(user.id)
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(stored, INJECTION_EMAILS);

    // Hostile path and query values never reach SQL: they fail to parse.
    client
        .get("/users/1%3B%20DROP%20TABLE%20users")
        .await
        .assert_status(400);
    client
        .get("/users")
        .query(&[("limit", "1; DROP TABLE users"), ("offset", "0")])
        .await
        .assert_status(400);
    client
        .get("/users")
        .query(&[("limit", "1 OR 1=1")])
        .await
        .assert_status(400);

    assert_eq!(user_count(&db).await, 1 + INJECTION_EMAILS.len() as i64);
}
