//! A small users API built with axum and sqlx, in the shape of a FastAPI
//! service, and the reference user of `db-test`.
//!
//! - [`app`] builds the router from an [`AppState`]; [`app_with_auth`] is the
//!   short form tests use, with [`AuthMode::AllowAll`] to skip tokens.
//! - [`db::connect`] opens the pool, [`MIGRATOR`] holds `migrations/`.
//! - Routes and status codes are listed in [`api`].
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use example_app::{AppState, AuthMode, app, db};
//!
//! let db = db::connect("postgres://localhost/app").await?;
//! db::migrate(&db).await?;
//! let router = app(AppState::new(db, AuthMode::from_env()?));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, router).await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use db_test::Db;

pub mod api;
pub mod auth;
pub mod db;
pub mod error;
pub mod models;

pub use auth::{AuthMode, CurrentUser, StaticToken};
pub use error::ApiError;
pub use models::{NewUser, User, UserPatch};

/// The largest request body accepted, in bytes. Larger bodies get 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The schema migrations in `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: Db,
    /// How requests are authenticated.
    pub auth: Arc<AuthMode>,
}

impl AppState {
    /// State for `db`, authenticating with `auth`.
    pub fn new(db: Db, auth: AuthMode) -> Self {
        AppState {
            db,
            auth: Arc::new(auth),
        }
    }
}

/// The application's router.
pub fn app(state: AppState) -> Router {
    let authenticated = Router::new()
        .route("/users", post(api::create_user).get(api::list_users))
        .route("/users/bulk", post(api::bulk_create))
        .route(
            "/users/{id}",
            get(api::get_user)
                .patch(api::update_user)
                .delete(api::delete_user),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::verify_auth,
        ));

    Router::new()
        .route("/health", get(api::health))
        .merge(authenticated)
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// [`app`] for `db` with the given [`AuthMode`]. Tests use
/// `app_with_auth(db, AuthMode::AllowAll(CurrentUser::writer("tests")))`.
pub fn app_with_auth(db: Db, auth: AuthMode) -> Router {
    app(AppState::new(db, auth))
}
