//! Bearer-token authentication.
//!
//! Every route but `/health` goes through [`verify_auth`]. It reads
//! `Authorization: Bearer <token>`, checks the token against the configured
//! [`AuthMode`], and puts the resulting [`CurrentUser`] into the request's
//! extensions, where handlers take it as an extractor.
//!
//! Tokens come from two places: the `API_TOKENS` environment variable
//! (see [`AuthMode::from_env`]) and the `api_tokens` table. Tokens are compared
//! in constant time ([`constant_time_eq`]), and every candidate is compared, so
//! the time taken does not tell which token matched or how much of it did.
//!
//! Tests build the router with [`AuthMode::AllowAll`] to skip tokens
//! altogether and choose the principal themselves.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use serde::Serialize;

use crate::AppState;
use crate::error::ApiError;

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CurrentUser {
    /// The name of the token used (`api_tokens.name`, or the name given in `API_TOKENS`).
    pub token_name: String,
    /// Whether the token may change data (`POST`, `PATCH`, `DELETE`).
    pub can_write: bool,
}

impl CurrentUser {
    /// A principal with write access, for [`AuthMode::AllowAll`].
    pub fn writer(token_name: impl Into<String>) -> Self {
        CurrentUser {
            token_name: token_name.into(),
            can_write: true,
        }
    }

    /// A read-only principal.
    pub fn reader(token_name: impl Into<String>) -> Self {
        CurrentUser {
            token_name: token_name.into(),
            can_write: false,
        }
    }

    /// Fails with 403 unless the principal may write.
    pub fn require_write(&self) -> Result<(), ApiError> {
        if self.can_write {
            Ok(())
        } else {
            Err(ApiError::Forbidden("this token is read-only"))
        }
    }
}

/// A token given in configuration rather than in the `api_tokens` table.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticToken {
    /// The name reported as [`CurrentUser::token_name`].
    pub name: String,
    /// The secret.
    pub token: String,
    /// Whether it may write.
    pub can_write: bool,
}

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticToken")
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .field("can_write", &self.can_write)
            .finish()
    }
}

/// How requests are authenticated.
#[derive(Debug, Clone)]
pub enum AuthMode {
    /// Accept these tokens, and every active (not revoked) row of `api_tokens`.
    Tokens(Vec<StaticToken>),
    /// Accept every request, authenticated as this principal. For tests only.
    AllowAll(CurrentUser),
}

impl AuthMode {
    /// Reads `API_TOKENS`: a comma-separated list of `name:token` or bare
    /// `token` entries (a bare token is named `env-<position>`). A token ending
    /// in `:ro` (`name:token:ro`) is read-only. Unset or empty means only the
    /// `api_tokens` table is consulted.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("API_TOKENS") {
            Ok(value) => Self::parse_tokens(&value),
            Err(std::env::VarError::NotPresent) => Ok(AuthMode::Tokens(Vec::new())),
            Err(e) => Err(format!("API_TOKENS is not valid: {e}")),
        }
    }

    /// Parses the `API_TOKENS` format (see [`AuthMode::from_env`]).
    pub fn parse_tokens(value: &str) -> Result<Self, String> {
        let mut tokens = Vec::new();
        for (i, entry) in value.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let parts: Vec<&str> = entry.split(':').collect();
            let (name, token, can_write) = match parts.as_slice() {
                [token] => (format!("env-{i}"), *token, true),
                [name, token] => (name.to_string(), *token, true),
                [name, token, "ro"] => (name.to_string(), *token, false),
                _ => {
                    return Err(format!(
                        "API_TOKENS entry {i} is not `token`, `name:token` or `name:token:ro`"
                    ));
                }
            };
            if name.is_empty() || token.len() < 16 {
                return Err(format!(
                    "API_TOKENS entry {i} ({name:?}) needs a name and a token of at least 16 characters"
                ));
            }
            tokens.push(StaticToken {
                name,
                token: token.to_string(),
                can_write,
            });
        }
        Ok(AuthMode::Tokens(tokens))
    }
}

/// Compares two byte strings in time that depends only on their lengths, not
/// on where they differ: an xor fold over every byte, with no early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Fold the length difference in, and walk all of `a` whatever `b` is.
    let mut diff = (a.len() ^ b.len()) as u64;
    for (i, &x) in a.iter().enumerate() {
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// The token of an `Authorization: Bearer <token>` header (scheme matched
/// case-insensitively), if there is one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The middleware: authenticates the request (or answers 401), refuses writes
/// with a read-only token (403), and stores the [`CurrentUser`] in the
/// request's extensions.
pub async fn verify_auth(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let user = authenticate(&state, request.headers()).await?;
    // Reads are open to every token; anything else needs write access.
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        user.require_write()?;
    }
    request.extensions_mut().insert(user);
    Ok(next.run(request).await)
}

async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<CurrentUser, ApiError> {
    let static_tokens = match &*state.auth {
        AuthMode::AllowAll(user) => return Ok(user.clone()),
        AuthMode::Tokens(tokens) => tokens,
    };
    let Some(presented) = bearer_token(headers) else {
        return Err(ApiError::Unauthorized("missing bearer token"));
    };
    let presented = presented.as_bytes();

    let mut found: Option<CurrentUser> = None;
    for candidate in static_tokens {
        if constant_time_eq(presented, candidate.token.as_bytes()) && found.is_none() {
            found = Some(CurrentUser {
                token_name: candidate.name.clone(),
                can_write: candidate.can_write,
            });
        }
    }

    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT name, token, scope FROM api_tokens WHERE revoked_at IS NULL")
            .fetch_all(&state.db)
            .await?;
    for (name, token, scope) in rows {
        if constant_time_eq(presented, token.as_bytes()) && found.is_none() {
            found = Some(CurrentUser {
                token_name: name,
                can_write: scope == "write",
            });
        }
    }

    found.ok_or(ApiError::Unauthorized("invalid bearer token"))
}

/// Handlers take the principal as a parameter. It is always there behind
/// [`verify_auth`]; without it the request is refused with 401.
impl<S: Send + Sync> FromRequestParts<S> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<CurrentUser>()
            .cloned()
            .ok_or(ApiError::Unauthorized("not authenticated"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn constant_time_eq_matches_only_equal_strings() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"secret-token-123", b"secret-token-123"));
        assert!(!constant_time_eq(b"secret-token-123", b"secret-token-124"));
        assert!(!constant_time_eq(b"secret-token-123", b"secret-token-12"));
        assert!(!constant_time_eq(b"secret-token-12", b"secret-token-123"));
        assert!(!constant_time_eq(b"a", b""));
        assert!(!constant_time_eq(b"", b"a"));
        // A prefix padded with NULs must not match.
        assert!(!constant_time_eq(b"ab\0", b"ab"));
    }

    #[test]
    fn bearer_tokens_are_parsed() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        for (value, expected) in [
            ("Bearer abc", Some("abc")),
            ("bearer  abc ", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearerabc", None),
        ] {
            headers.insert(AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer_token(&headers), expected, "{value:?}");
        }
    }

    #[test]
    fn api_tokens_env_format() {
        let AuthMode::Tokens(tokens) = AuthMode::parse_tokens(
            " ci:0123456789abcdef , 0123456789ABCDEF,reader:ro-0123456789abcdef:ro,",
        )
        .unwrap() else {
            panic!("expected tokens");
        };
        let summary: Vec<_> = tokens
            .iter()
            .map(|t| (t.name.as_str(), t.token.as_str(), t.can_write))
            .collect();
        assert_eq!(
            summary,
            [
                ("ci", "0123456789abcdef", true),
                ("env-1", "0123456789ABCDEF", true),
                ("reader", "ro-0123456789abcdef", false),
            ]
        );
        assert!(!format!("{tokens:?}").contains("0123456789abcdef"));
        assert!(AuthMode::parse_tokens("short").is_err());
        assert!(AuthMode::parse_tokens("a:b:c:d").is_err());
        assert!(AuthMode::parse_tokens(":0123456789abcdef").is_err());
        assert!(matches!(AuthMode::parse_tokens(""), Ok(AuthMode::Tokens(t)) if t.is_empty()));
    }
}
