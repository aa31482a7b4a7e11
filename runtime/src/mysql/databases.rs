//! Per-test databases (`isolation = "database"`): a spare or a new clone
//! for each test, then, in the background, its pool closed and the
//! database recycled into a spare ([`super::recycle`]) or dropped; or kept
//! for a failed test.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sqlx::Executor;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};

use super::engine::{Engine, MAX_NAME_LEN, quote, test_database_owner};
use super::template::{ClonePlan, Template, clone_into};
use crate::config;
use crate::shared::TEARDOWN_GRACE;

impl Engine {
    /// A per-test database: a spare (with its pool, connected) if one is
    /// ready, otherwise a new clone of the template (and no pool yet).
    pub(crate) async fn create_test_database(
        &'static self,
        template: &Template,
    ) -> Result<(String, Option<MySqlPool>), String> {
        self.drop_leftovers_once(template);
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let recycled = template.recycled.notified();
            tokio::pin!(recycled);
            recycled.as_mut().enable();
            let spare = template
                .spares
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop();
            if let Some((name, pool)) = spare {
                template.running.fetch_add(1, Ordering::Relaxed);
                return Ok((name, Some(pool)));
            }
            // With no other test running, nothing else would use the time:
            // wait for the database being recycled (a few ms) rather than
            // clone a new one. With others running, clone: their databases
            // come back as spares for the tests after this one.
            if template.recycling.load(Ordering::Relaxed) == 0
                || template.running.load(Ordering::Relaxed) > 0
                || tokio::time::timeout_at(deadline.into(), recycled)
                    .await
                    .is_err()
            {
                break;
            }
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}_d{:08x}_{n}", template.prefix, self.owner);
        debug_assert!(name.len() <= MAX_NAME_LEN);
        // Before taking an admin connection: reading it takes one.
        let plan = template.clone_plan(self).await?;
        let mut admin = self.admin().await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE {}",
                quote(&name)
            )))
            .await
            .map_err(|e| {
                format!(
                    "db-test: creating database {name} on {}: {e}",
                    self.display_url
                )
            })?;
        if let Err(e) = clone_into(&mut admin, &plan.script, &name).await {
            let _ = admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {}",
                    quote(&name)
                )))
                .await;
            return Err(format!(
                "db-test: cloning template {} into {name} on {}: {e}",
                template.template, self.display_url
            ));
        }
        template.running.fetch_add(1, Ordering::Relaxed);
        Ok((name, None))
    }

    /// The test using `name` is over: closes its pool, then recycles the
    /// database into a spare (or drops it), in the background on the shared
    /// runtime, off the test's time. A failure there is the engine's, not the test's: it is
    /// logged, and a database left behind is this process's, swept by the
    /// next one.
    pub(crate) fn release_test_database(
        &'static self,
        template: Arc<Template>,
        name: String,
        pool: MySqlPool,
        test: &'static str,
    ) {
        template.recycling.fetch_add(1, Ordering::Relaxed);
        template.running.fetch_sub(1, Ordering::Relaxed);
        crate::run::shared_runtime().spawn(async move {
            let closed = self.close_test_pool(&name, &pool, test).await;
            if !(closed && self.recycle_test_database(&template, &name).await)
                && let Err(e) = self.drop_test_database(&name).await
            {
                tracing::warn!("{e}");
            }
            template.recycling.fetch_sub(1, Ordering::Relaxed);
            template.recycled.notify_waiters();
        });
    }

    /// Releases the named locks (`GET_LOCK`) the idle sessions of a test's
    /// pool hold. Its pool is closed in the background, and the server
    /// releases a session's locks only once it has processed the
    /// disconnect: the next test could otherwise find a lock still held
    /// that a `#[sqlx::test]` would find free.
    pub(crate) async fn release_session_locks(
        pool: &MySqlPool,
        held: Option<sqlx::pool::PoolConnection<sqlx::MySql>>,
    ) {
        let mut idle: Vec<_> = held.into_iter().collect();
        while let Some(conn) = pool.try_acquire() {
            idle.push(conn);
        }
        let release = idle
            .iter_mut()
            .map(|conn| conn.execute("DO RELEASE_ALL_LOCKS()"));
        let _ = tokio::time::timeout(TEARDOWN_GRACE, futures_util::future::join_all(release)).await;
    }

    /// Closes the pool of a test's database; a connection that a task of
    /// the test still holds after the grace period is killed (`false`).
    pub(crate) async fn close_test_pool(&self, name: &str, pool: &MySqlPool, test: &str) -> bool {
        if tokio::time::timeout(TEARDOWN_GRACE, pool.close())
            .await
            .is_ok()
        {
            return true;
        }
        tracing::warn!(
            test,
            database = %name,
            "db-test: a task still held a connection to the test's database \
             {TEARDOWN_GRACE:?} after the test ended; its connections were killed"
        );
        self.kill_sessions(name, true).await;
        false
    }

    /// A test's database that is not recycled (dropped or kept) is no
    /// longer in use.
    pub(crate) fn end_test_database(&self, template: &Template) {
        template.running.fetch_sub(1, Ordering::Relaxed);
    }

    /// Resets a used per-test database to the template's state and keeps it
    /// as a spare for the next test of this process, with a pool connected
    /// to it (a new connection: no session state of the test's); `false`
    /// when that is not possible (the test changed the schema, the template
    /// has triggers, enough spares), and the caller drops it. No file is
    /// created or removed: rows are deleted and copied back, and
    /// `AUTO_INCREMENT`s that moved are set back (see [`super::recycle`]).
    pub(crate) async fn recycle_test_database(&self, template: &Template, name: &str) -> bool {
        let Ok(ClonePlan {
            recycle: Some(plan),
            ..
        }) = template.clone_plan(self).await
        else {
            return false;
        };
        if template
            .spares
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            >= config::max_databases()
        {
            return false;
        }
        let Ok(mut admin) = self.admin().await else {
            return false;
        };
        if let Err(why) = plan.reset(&mut admin, name).await {
            tracing::debug!(database = %name, why, "db-test: dropping a test database instead of recycling it");
            return false;
        }
        drop(admin);
        let pool = self.test_pool(name);
        if let Err(e) = pool.acquire().await {
            tracing::debug!(database = %name, "db-test: dropping a test database instead of recycling it: {e}");
            pool.close().await;
            return false;
        }
        template
            .spares
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_string(), pool));
        true
    }

    /// The pool of a test's own database (not connected yet).
    pub(crate) fn test_pool(&self, name: &str) -> MySqlPool {
        MySqlPoolOptions::new()
            // One more than the setting: the test's `Db` may keep one aside
            // (`generic::sticky`) while the test holds that many itself.
            .max_connections(config::database_pool_size() + 1)
            .acquire_timeout(config::acquire_timeout())
            // The database is the test's alone: a connection used within
            // the last second is handed out without sqlx's ping (a round
            // trip per acquire); one idle longer is pinged, and replaced if
            // the server ended its session meanwhile (`wait_timeout`, a
            // restart, a `KILL`).
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= std::time::Duration::from_secs(1) {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(self.options_for(name))
    }

    /// Drops a per-test database.
    pub(crate) async fn drop_test_database(&self, name: &str) -> Result<(), String> {
        if test_database_owner(name) != Some(self.owner) {
            return Err(format!(
                "db-test: refusing to drop {name}: not a database of this process"
            ));
        }
        let mut admin = self.admin().await?;
        let dropped = admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {}",
                quote(name)
            )))
            .await;
        dropped.map(|_| ()).map_err(|e| {
            format!(
                "db-test: dropping database {name} on {}: {e}",
                self.display_url
            )
        })
    }

    /// Keeps a failed test's database: marks it so that no sweep drops it.
    pub(crate) async fn keep_test_database(&self, name: &str) -> Result<(), String> {
        let mut admin = self.admin().await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE TABLE {}.`_dbtest_kept` (kept_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)",
                quote(name)
            )))
            .await
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "db-test: keeping database {name} on {}: {e}",
                    self.display_url
                )
            })
    }
}
