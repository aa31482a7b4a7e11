//! Stopping what a finished test left running on the server: the statement
//! of a test that timed out, the connections a leftover task still holds.
//! Only the test's own backends are ever signalled.

use super::engine::{Engine, engine};

/// What to do to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// `pg_cancel_backend`: stop the running statement, keep the session.
    Cancel,
    /// `pg_terminate_backend`: end the session.
    Terminate,
}

impl Signal {
    fn function(self) -> &'static str {
        match self {
            Signal::Cancel => "pg_cancel_backend",
            Signal::Terminate => "pg_terminate_backend",
        }
    }
}

/// Which backends.
#[derive(Debug, Clone)]
pub(crate) enum Backends {
    /// The one whose `application_name` starts with this test's tag (set by
    /// `SET LOCAL` when the test's transaction begins).
    Tagged(String),
    /// Every backend connected to this per-test database, except the caller.
    Database(String),
}

impl Engine {
    /// Signals the test's backends; returns how many were signalled.
    pub(crate) async fn signal(&self, which: &Backends, signal: Signal) -> Result<u64, String> {
        let mut conn = self.admin_pool.acquire().await.map_err(|e| e.to_string())?;
        let sql = match which {
            Backends::Tagged(_) => format!(
                "SELECT count(*) FILTER (WHERE {}(pid))::int8 FROM pg_stat_activity \
                 WHERE starts_with(application_name, $1) AND pid <> pg_backend_pid()",
                signal.function()
            ),
            Backends::Database(_) => format!(
                "SELECT count(*) FILTER (WHERE {}(pid))::int8 FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                signal.function()
            ),
        };
        let key = match which {
            Backends::Tagged(tag) => tag,
            Backends::Database(name) => name,
        };
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
            .bind(key)
            .fetch_one(&mut *conn)
            .await
            .map(|n| n as u64)
            .map_err(|e| e.to_string())
    }
}

/// Signals the test's backends from the shared runtime, whatever runtime the
/// caller is on. Errors are only logged: this is clean-up.
pub(crate) async fn signal_backends(which: Backends, signal: Signal) -> u64 {
    crate::clock::on_shared(async move {
        let result = match engine().await {
            Ok(engine) => engine.signal(&which, signal).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(n) => {
                if n > 0 {
                    tracing::debug!(?which, ?signal, n, "db-test: signalled a finished test's backends");
                }
                n
            }
            Err(e) => {
                tracing::warn!(?which, ?signal, error = %e, "db-test: could not signal a test's backends");
                0
            }
        }
    })
    .await
}
