//! The HTTP handlers.
//!
//! | route | success | errors |
//! | --- | --- | --- |
//! | `GET /health` | 200 | 503 when the database does not answer |
//! | `POST /users` | 201 + user | 409 duplicate email, 422 invalid field |
//! | `GET /users?limit&offset` | 200 + users ordered by id | 422 bad limit/offset |
//! | `GET /users/{id}` | 200 + user | 404 |
//! | `PATCH /users/{id}` | 200 + user | 404, 409, 422 |
//! | `DELETE /users/{id}` | 204 | 404 |
//! | `POST /users/bulk` | 201 + users | 409 / 422 naming the failing `index`; nothing is stored |
//!
//! All but `/health` need a bearer token (401), and writes need a token with
//! write access (403). Every write is logged in `audit_log` in the same
//! transaction.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;
use sqlx::PgConnection;

use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::{ApiError, email_conflict_or_internal};
use crate::models::{NewUser, Page, User, UserPatch};
use crate::user_columns;

/// The most users one `POST /users/bulk` may create.
pub const MAX_BULK: usize = 500;

/// `GET /health`: 200 `{"status":"ok"}` when the database answers.
pub async fn health(State(state): State<AppState>) -> Response {
    match sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(&state.db)
        .await
    {
        Ok(_) => Json(json!({ "status": "ok" })).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable" })),
            )
                .into_response()
        }
    }
}

/// `POST /users`.
pub async fn create_user(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiJson(new): ApiJson<NewUser>,
) -> Result<Response, ApiError> {
    new.validate()?;
    let mut tx = state.db.begin().await?;
    let created = insert_user(&mut tx, &new)
        .await
        .map_err(email_conflict_or_internal)?;
    audit(
        &mut tx,
        &user,
        "user.create",
        Some(created.id),
        json!({ "email": created.email }),
    )
    .await?;
    tx.commit().await?;
    Ok(created_response(&created))
}

/// `POST /users/bulk`: creates every user or none, in one transaction. The
/// error names the `index` of the first failing item.
pub async fn bulk_create(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiJson(batch): ApiJson<Vec<NewUser>>,
) -> Result<(StatusCode, Json<Vec<User>>), ApiError> {
    if batch.len() > MAX_BULK {
        return Err(ApiError::validation(
            "users",
            format!("at most {MAX_BULK} users per request"),
        ));
    }
    for (i, new) in batch.iter().enumerate() {
        new.validate().map_err(|e| e.at_index(i))?;
    }

    // Dropping `tx` on an error rolls back every row inserted before it.
    let mut tx = state.db.begin().await?;
    let mut created = Vec::with_capacity(batch.len());
    for (i, new) in batch.iter().enumerate() {
        let row = insert_user(&mut tx, new)
            .await
            .map_err(|e| email_conflict_or_internal(e).at_index(i))?;
        created.push(row);
    }
    let ids: Vec<i64> = created.iter().map(|u| u.id).collect();
    audit(
        &mut tx,
        &user,
        "user.bulk_create",
        None,
        json!({ "count": ids.len(), "ids": ids }),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `GET /users/{id}`.
pub async fn get_user(
    State(state): State<AppState>,
    _user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<User>, ApiError> {
    let sql = concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1");
    sqlx::query_as::<_, User>(sql)
        .bind(id)
        .fetch_optional(&state.db)
        .await?
        .map(Json)
        .ok_or(USER_NOT_FOUND)
}

/// `GET /users?limit=&offset=`: users ordered by id.
pub async fn list_users(
    State(state): State<AppState>,
    _user: CurrentUser,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Vec<User>>, ApiError> {
    let (limit, offset) = page.resolve()?;
    let sql = concat!(
        "SELECT ",
        user_columns!(),
        " FROM users ORDER BY id LIMIT $1 OFFSET $2"
    );
    let users = sqlx::query_as::<_, User>(sql)
        .bind(limit)
        .bind(offset)
        .fetch_all(&state.db)
        .await?;
    Ok(Json(users))
}

/// `PATCH /users/{id}`: changes the fields present in the body.
pub async fn update_user(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
    ApiJson(patch): ApiJson<UserPatch>,
) -> Result<Json<User>, ApiError> {
    patch.validate()?;
    let mut tx = state.db.begin().await?;
    let sql = concat!(
        "UPDATE users SET email = COALESCE($2, email), name = COALESCE($3, name), updated_at = now() \
         WHERE id = $1 RETURNING ",
        user_columns!(),
        ""
    );
    let updated = sqlx::query_as::<_, User>(sql)
        .bind(id)
        .bind(&patch.email)
        .bind(&patch.name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(email_conflict_or_internal)?
        .ok_or(USER_NOT_FOUND)?;
    audit(
        &mut tx,
        &user,
        "user.update",
        Some(id),
        json!({ "email": patch.email, "name": patch.name }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(updated))
}

/// `DELETE /users/{id}`: 204.
pub async fn delete_user(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, ApiError> {
    let mut tx = state.db.begin().await?;
    let deleted: Option<String> =
        sqlx::query_scalar("DELETE FROM users WHERE id = $1 RETURNING email")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(email) = deleted else {
        return Err(USER_NOT_FOUND);
    };
    audit(
        &mut tx,
        &user,
        "user.delete",
        Some(id),
        json!({ "email": email }),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The answer for unknown paths: a JSON 404.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route")
}

const USER_NOT_FOUND: ApiError = ApiError::NotFound("user not found");

fn created_response(user: &User) -> Response {
    (
        StatusCode::CREATED,
        [(header::LOCATION, format!("/users/{}", user.id))],
        Json(user),
    )
        .into_response()
}

async fn insert_user(conn: &mut PgConnection, new: &NewUser) -> sqlx::Result<User> {
    let sql = concat!(
        "INSERT INTO users (email, name) VALUES ($1, $2) RETURNING ",
        user_columns!(),
        ""
    );
    sqlx::query_as::<_, User>(sql)
        .bind(&new.email)
        .bind(&new.name)
        .fetch_one(conn)
        .await
}

async fn audit(
    conn: &mut PgConnection,
    actor: &CurrentUser,
    action: &str,
    user_id: Option<i64>,
    detail: serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO audit_log (actor, action, user_id, detail) VALUES ($1, $2, $3, $4)")
        .bind(&actor.token_name)
        .bind(action)
        .bind(user_id)
        .bind(sqlx::types::Json(detail))
        .execute(conn)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Extractors whose rejections are JSON errors, like every other error.

/// [`Json`], with rejections (bad JSON, wrong content type, body too large,
/// unknown or missing fields) answered as JSON errors.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    ApiError::Rejected(rejection.status(), rejection.body_text())
}

/// [`Path`], with rejections answered as JSON errors.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(path_rejection(rejection)),
        }
    }
}

fn path_rejection(rejection: PathRejection) -> ApiError {
    ApiError::Rejected(rejection.status(), rejection.body_text())
}

/// [`Query`], with rejections answered as JSON errors.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::Rejected(rejection.status(), rejection.body_text())
}
