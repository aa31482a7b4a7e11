//! The API's data: rows, request bodies and their validation.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// The longest email accepted (RFC 5321's path limit).
pub const MAX_EMAIL_LEN: usize = 254;
/// The longest name accepted, in characters.
pub const MAX_NAME_LEN: usize = 200;

/// A user, as stored and as returned by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct User {
    /// Database id.
    pub id: i64,
    /// Email address, unique regardless of case.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Creation time, RFC 3339 in UTC with microseconds.
    pub created_at: String,
    /// Time of the last change, RFC 3339 in UTC with microseconds.
    pub updated_at: String,
}

/// The columns of [`User`], in the form the API returns them, as a string
/// literal: `concat!("SELECT ", user_columns!(), " FROM users")` keeps every
/// query a `&'static str`, so no SQL is ever assembled at run time.
#[macro_export]
macro_rules! user_columns {
    () => {
        r#"id, email, name,
        to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at,
        to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS updated_at"#
    };
}

/// The body of `POST /users` (and each item of `POST /users/bulk`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Email address.
    pub email: String,
    /// Display name.
    pub name: String,
}

impl NewUser {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), ApiError> {
        validate_email(&self.email)?;
        validate_name(&self.name)
    }
}

/// The body of `PATCH /users/{id}`: absent (or `null`) fields are left alone.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    /// New email address.
    pub email: Option<String>,
    /// New display name.
    pub name: Option<String>,
}

impl UserPatch {
    /// Checks the fields that are present.
    pub fn validate(&self) -> Result<(), ApiError> {
        if let Some(email) = &self.email {
            validate_email(email)?;
        }
        if let Some(name) = &self.name {
            validate_name(name)?;
        }
        Ok(())
    }
}

/// The query of `GET /users`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Page {
    /// How many users to return: 1 to 100, default 50.
    pub limit: Option<i64>,
    /// How many users to skip, default 0.
    pub offset: Option<i64>,
}

impl Page {
    /// The default `limit`.
    pub const DEFAULT_LIMIT: i64 = 50;
    /// The largest `limit`.
    pub const MAX_LIMIT: i64 = 100;

    /// The validated `(limit, offset)`.
    pub fn resolve(self) -> Result<(i64, i64), ApiError> {
        let limit = self.limit.unwrap_or(Self::DEFAULT_LIMIT);
        if !(1..=Self::MAX_LIMIT).contains(&limit) {
            return Err(ApiError::validation(
                "limit",
                format!("limit must be between 1 and {}", Self::MAX_LIMIT),
            ));
        }
        let offset = self.offset.unwrap_or(0);
        if offset < 0 {
            return Err(ApiError::validation(
                "offset",
                "offset must not be negative",
            ));
        }
        Ok((limit, offset))
    }
}

/// A deliberately plain email check: one `@`, a non-empty local part, a
/// domain with a dot and no empty labels, no whitespace or control characters,
/// at most [`MAX_EMAIL_LEN`] bytes.
pub fn validate_email(email: &str) -> Result<(), ApiError> {
    let invalid = || ApiError::validation("email", "email is not a valid address");
    if email.len() > MAX_EMAIL_LEN {
        return Err(ApiError::validation(
            "email",
            format!("email must be at most {MAX_EMAIL_LEN} bytes"),
        ));
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid());
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err(invalid());
    };
    if local.is_empty() || domain.contains('@') {
        return Err(invalid());
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 || labels.iter().any(|l| l.is_empty()) {
        return Err(invalid());
    }
    Ok(())
}

/// A name must have a visible character and at most [`MAX_NAME_LEN`] characters.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::validation("name", "name must not be empty"));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(ApiError::validation(
            "name",
            format!("name must be at most {MAX_NAME_LEN} characters"),
        ));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(ApiError::validation(
            "name",
            "name must not contain control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(result: Result<(), ApiError>) -> Option<&'static str> {
        match result {
            Ok(()) => None,
            Err(ApiError::Validation { field, .. }) => Some(field),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn emails() {
        for ok in [
            "a@example.com",
            "first.last+tag@sub.example.co.uk",
            "x'OR'1'='1@example.com",
            "robert');DROP/**/TABLE/**/users;--@example.com",
        ] {
            assert_eq!(field_of(validate_email(ok)), None, "{ok}");
        }
        let too_long = format!("{}@example.com", "a".repeat(250));
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a@@example.com",
            "a@b@example.com",
            "a b@example.com",
            "a@example..com",
            "a@.example.com",
            "a@example.com.",
            "a\n@example.com",
            too_long.as_str(),
        ] {
            assert_eq!(field_of(validate_email(bad)), Some("email"), "{bad:?}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(field_of(validate_name("Ada")), None);
        assert_eq!(field_of(validate_name(&"é".repeat(200))), None);
        for bad in ["", "   ", "\t", "a\u{0}b"] {
            assert_eq!(field_of(validate_name(bad)), Some("name"), "{bad:?}");
        }
        assert_eq!(field_of(validate_name(&"é".repeat(201))), Some("name"));
    }

    #[test]
    fn pages() {
        assert_eq!(Page::default().resolve().unwrap(), (50, 0));
        let page = Page {
            limit: Some(100),
            offset: Some(7),
        };
        assert_eq!(page.resolve().unwrap(), (100, 7));
        for (limit, offset, field) in [(0, 0, "limit"), (101, 0, "limit"), (10, -1, "offset")] {
            let page = Page {
                limit: Some(limit),
                offset: Some(offset),
            };
            assert_eq!(field_of(page.resolve().map(drop)), Some(field));
        }
    }
}
