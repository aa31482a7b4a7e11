//! Connecting to PostgreSQL and migrating the schema.

use std::fmt;
use std::time::Duration;

use db_test::Db;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, PgPool};

/// How long [`connect`] waits for the server before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `url` and wraps the pool in a [`Db`].
pub async fn connect(url: &str) -> Result<Db, ConnectError> {
    connect_pool(url, CONNECT_TIMEOUT).await.map(Db::from_pool)
}

/// Opens a pool on `url`, checking first that one connection can be made
/// within `timeout` (so that a refused connection is reported at once, with
/// the server's own error).
pub async fn connect_pool(url: &str, timeout: Duration) -> Result<PgPool, ConnectError> {
    let error = |reason: String| ConnectError {
        url: redact_url(url),
        reason,
    };
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| error(format!("DATABASE_URL is not a valid PostgreSQL URL ({e})")))?;
    match tokio::time::timeout(timeout, PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
        Ok(Err(e)) => return Err(error(e.to_string())),
        Err(_) => return Err(error(format!("no answer within {} s", timeout.as_secs()))),
    }
    PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(timeout)
        .connect_with(options)
        .await
        .map_err(|e| error(e.to_string()))
}

/// Runs the migrations in `migrations/` that the database lacks.
pub async fn migrate(db: &Db) -> Result<(), sqlx::migrate::MigrateError> {
    let mut conn = db.acquire().await?;
    crate::MIGRATOR.run(&mut *conn).await
}

/// The database could not be reached.
#[derive(Debug)]
pub struct ConnectError {
    url: String,
    reason: String,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "could not connect to PostgreSQL at {}: {}. Check that the server is running and that DATABASE_URL is right.",
            self.url, self.reason
        )
    }
}

impl std::error::Error for ConnectError {}

/// `url` with its password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cr3t@db.internal:5432/app?sslmode=require"),
            "postgres://app:***@db.internal:5432/app?sslmode=require"
        );
        assert_eq!(
            redact_url("postgresql://app:p@ss@localhost/app"),
            "postgresql://app:***@localhost/app"
        );
        assert_eq!(
            redact_url("postgres://app@localhost/app"),
            "postgres://app@localhost/app"
        );
        assert_eq!(
            redact_url("postgres://localhost/app?user=a@b"),
            "postgres://localhost/app?user=a@b"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
