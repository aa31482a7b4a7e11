//! The API's error type and the JSON body every error is sent with.
//!
//! Bodies are `{"error": "...", "field": "...", "index": n}`, where `field` and
//! `index` appear only when they apply. Internal errors are logged with
//! `tracing` and answered with a generic 500: no SQL text, no driver message.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answered to the client.
#[derive(Debug)]
pub enum ApiError {
    /// 401: no usable credentials.
    Unauthorized(&'static str),
    /// 403: valid credentials without the needed permission.
    Forbidden(&'static str),
    /// 404.
    NotFound(&'static str),
    /// 409: a unique value is already taken.
    Conflict {
        /// What is taken.
        message: &'static str,
        /// The field holding it.
        field: &'static str,
        /// The position in a batch, for bulk requests.
        index: Option<usize>,
    },
    /// 422: a field failed validation.
    Validation {
        /// What is wrong.
        message: String,
        /// The field at fault.
        field: &'static str,
        /// The position in a batch, for bulk requests.
        index: Option<usize>,
    },
    /// A request that could not be decoded (bad JSON, bad path or query, body
    /// too large), with the status axum chose for it.
    Rejected(StatusCode, String),
    /// 500. The error is logged, never sent.
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// A 422 for `field`.
    pub fn validation(field: &'static str, message: impl Into<String>) -> Self {
        ApiError::Validation {
            message: message.into(),
            field,
            index: None,
        }
    }

    /// Attaches the position of the failing item in a batch.
    pub fn at_index(self, i: usize) -> Self {
        match self {
            ApiError::Conflict { message, field, .. } => ApiError::Conflict {
                message,
                field,
                index: Some(i),
            },
            ApiError::Validation { message, field, .. } => ApiError::Validation {
                message,
                field,
                index: Some(i),
            },
            other => other,
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Rejected(status, _) => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The JSON body of an error response.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    /// A message meant for the API's user.
    pub error: &'a str,
    /// The request field at fault, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'a str>,
    /// The index of the failing item of a batch, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (error, field, index): (&str, Option<&str>, Option<usize>) = match &self {
            ApiError::Unauthorized(m) | ApiError::Forbidden(m) | ApiError::NotFound(m) => {
                (m, None, None)
            }
            ApiError::Conflict {
                message,
                field,
                index,
            } => (message, Some(field), *index),
            ApiError::Validation {
                message,
                field,
                index,
            } => (message, Some(field), *index),
            ApiError::Rejected(_, message) => (message, None, None),
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "request failed");
                ("internal server error", None, None)
            }
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error,
                field,
                index,
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(Box::new(e))
    }
}

/// Turns a unique violation of `users_email_key` into a 409 on `email`, and
/// anything else into a 500.
pub fn email_conflict_or_internal(e: sqlx::Error) -> ApiError {
    let is_duplicate_email = e.as_database_error().is_some_and(|d| {
        d.code().as_deref() == Some("23505") && d.constraint() == Some("users_email_key")
    });
    if is_duplicate_email {
        ApiError::Conflict {
            message: "a user with this email already exists",
            field: "email",
            index: None,
        }
    } else {
        ApiError::from(e)
    }
}
