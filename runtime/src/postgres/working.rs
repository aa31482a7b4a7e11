//! The working database (`_w`): a clone of the template that every
//! transaction-mode test of a hash shares, each test in a transaction of its
//! own that is rolled back, through one pool per process. The template
//! itself stays idle, so it can still be cloned.

use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};

use super::engine::{Engine, create_database_sql};
use crate::config;
use crate::hint::sqlstate;

impl Engine {
    /// The pool of the working database of `<source>_<hash>`. The working
    /// database is made last, under the build lock, so while it exists the
    /// template is complete: connecting to it is the fast path. When it is
    /// missing the template is built first (retried, in case someone drops
    /// it meanwhile).
    pub(super) async fn working_pool(
        &self,
        working: &str,
        migrator: &Migrator,
        source: &str,
        hash: &str,
    ) -> Result<PgPool, String> {
        let mut attempt = 0;
        let pool = loop {
            attempt += 1;
            match self.connect_pool(working).await {
                Ok(pool) => break pool,
                Err(e) if sqlstate(&e).as_deref() == Some("3D000") && attempt <= 3 => {
                    self.create_template(migrator, source, hash).await?;
                }
                Err(e) => {
                    return Err(format!(
                        "db-test: cannot connect to working database {working} on {}: {e}",
                        self.display_url
                    ));
                }
            }
        };
        tracing::debug!(%working, "db-test: pool ready");
        Ok(pool)
    }

    /// Clones the working database from the template (under the build lock).
    pub(super) async fn create_working(
        admin: &mut PgConnection,
        working: &str,
        template: &str,
    ) -> Result<(), sqlx::Error> {
        Self::admin_exec(admin, &create_database_sql(working, Some(template))).await
    }

    async fn connect_pool(&self, database: &str) -> Result<PgPool, sqlx::Error> {
        let opts = self.options_for(database);
        let pool = PgPoolOptions::new()
            .max_connections(config::pool_size())
            .min_connections(0)
            .acquire_timeout(config::acquire_timeout())
            .test_before_acquire(false)
            // Every test connection gets db-test's commit guard once, for
            // its lifetime (see `shared::prepare_session`).
            .after_connect(|conn, _meta| Box::pin(crate::shared::prepare_session(conn)))
            .connect_lazy_with(opts);
        // Connect once now, so that a missing database is reported here.
        match tokio::time::timeout(config::connect_timeout(), pool.acquire()).await {
            Ok(Ok(conn)) => drop(conn),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(sqlx::Error::PoolTimedOut),
        }
        Ok(pool)
    }
}
