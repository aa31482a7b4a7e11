//! The working database (`_w`): a clone of the template that every
//! transaction-mode test of a hash shares, each test in a transaction of its
//! own that is rolled back, through the process's slots (a pool of one per
//! connection, see [`crate::slots`]). The template itself stays idle, so it
//! can still be cloned.

use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, Postgres};

use super::engine::{Engine, create_database_sql};
use crate::config;
use crate::hint::sqlstate;
use crate::slots::Slots;

impl Engine {
    /// The slots of the working database of `<source>_<hash>`. The working
    /// database is made last, under the build lock, so while it exists the
    /// template is complete: connecting to it is the fast path. When it is
    /// missing the template is built first (retried, in case someone drops
    /// it meanwhile).
    pub(super) async fn working_slots(
        &self,
        working: &str,
        migrator: &Migrator,
        source: &str,
        hash: &str,
    ) -> Result<Slots<Postgres>, String> {
        let mut attempt = 0;
        let slots = loop {
            attempt += 1;
            match self.connect_slots(working).await {
                Ok(slots) => break slots,
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
        Ok(slots)
    }

    /// Clones the working database from the template (under the build lock).
    pub(super) async fn create_working(
        admin: &mut PgConnection,
        working: &str,
        template: &str,
    ) -> Result<(), sqlx::Error> {
        Self::admin_exec(admin, &create_database_sql(working, Some(template))).await?;
        super::engine::copy_database_settings(admin, template, working).await
    }

    async fn connect_slots(&self, database: &str) -> Result<Slots<Postgres>, sqlx::Error> {
        let opts = self.options_for(database);
        let slots = Slots::new(config::pool_size(), config::acquire_timeout(), move |_| {
            PgPoolOptions::new()
                .max_connections(1)
                .min_connections(0)
                .acquire_timeout(config::acquire_timeout())
                .test_before_acquire(false)
                // Every test connection gets db-test's commit guard once, for
                // its lifetime (see `shared::prepare_session`).
                .after_connect(|conn, _meta| Box::pin(crate::shared::prepare_session(conn)))
                // See `read_queued_error`.
                .after_release(crate::slots::read_queued_error::<sqlx::Postgres>)
                .connect_lazy_with(opts.clone())
        });
        // Connect once now, so that a missing database is reported here.
        match tokio::time::timeout(config::connect_timeout(), slots.checkout_connection()).await {
            // The first test takes it from the slot.
            Ok(Ok((conn, home))) => home.park(conn),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(sqlx::Error::PoolTimedOut),
        }
        Ok(slots)
    }
}
