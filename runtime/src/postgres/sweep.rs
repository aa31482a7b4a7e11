//! Clean-up of what other processes left on the server: the per-test
//! databases of killed runs (their owner's lock is gone), and the databases
//! of outdated templates (per hash, never while a process uses the hash).

use std::collections::{HashMap, HashSet};

use sqlx::{Executor, PgConnection};

use super::engine::{AdvisoryLock, Engine, OWNER_LOCK, drop_database_sql, marked_sql};
use super::naming::{self, Kind, Parsed};
use super::template::{built_at, unix_seconds};
use crate::config;

/// The databases of a hash other than the current one, in the sweep.
struct OtherHash<'a> {
    /// Each with whether it has db-test's mark.
    databases: Vec<(Parsed<'a>, bool)>,
    /// Its template is past the grace period, or gone.
    outdated: bool,
}

impl Engine {
    /// Removes per-test databases left by killed runs: nobody is connected
    /// to them and their owner's lock is gone from the server, so their
    /// process is dead, whichever host or PID namespace it ran in.
    pub(super) async fn drop_leftovers(&self, prefix: &str) {
        let Ok(mut conn) = self.admin_pool.acquire().await else {
            return;
        };
        // Only db-test's own (see `engine::MARK`).
        let unconnected: Vec<String> = match sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT d.datname::text FROM pg_database d WHERE starts_with(d.datname, $1) \
             AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datid = d.oid) AND {}",
            marked_sql("d.oid")
        )))
        .bind(naming::tests_under(prefix))
        .fetch_all(&mut *conn)
        .await
        {
            Ok(rows) => rows,
            Err(_) => return,
        };
        if unconnected.is_empty() {
            return;
        }
        // Read after the list: an owner alive when the list was taken, and
        // so holding its lock since before it created the database, is in it.
        let Ok(live) = Self::live_owners(&mut conn).await else {
            return;
        };
        for name in unconnected {
            let Some(Parsed {
                kind: Some(Kind::Test(owner)),
                ..
            }) = naming::parse(&name).filter(|p| p.prefix == prefix)
            else {
                continue;
            };
            if owner.id == self.owner || live.contains(&owner.id) {
                continue;
            }
            tracing::info!(database = %name, "db-test: dropping a leftover test database");
            let _ = Self::drop_quietly(&mut conn, &name).await;
        }
    }

    /// Drops the databases of outdated migrations of this same source
    /// (`dbtest_<base>_<source>`), one hash at a time, and only a hash
    /// - whose template was built more than DB_TEST_OUTDATED_AFTER ago
    ///   (another checkout may still be running the older migrations) or is
    ///   gone (an orphaned working database, a half-built template),
    /// - whose hash lock ([`HASH_LOCK`](super::engine::HASH_LOCK)) nobody
    ///   holds: every process using a hash holds it shared for its
    ///   lifetime, and this sweep holds it exclusively while it drops, so
    ///   nobody starts using it meanwhile,
    /// - none of whose databases has a connection or a live owner.
    ///
    /// The template goes last, so it is never gone while its working
    /// database or a clone of it remains.
    pub(super) async fn sweep_outdated(
        &self,
        admin: &mut PgConnection,
        source: &str,
        current_hash: &str,
    ) {
        let now = unix_seconds();
        let grace = config::outdated_after().as_secs() as i64;
        let all: Vec<(String, Option<String>, bool)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT d.datname::text, shobj_description(d.oid, 'pg_database'), {} \
             FROM pg_database d WHERE starts_with(d.datname, $1)",
                marked_sql("d.oid")
            )))
            .bind(naming::under(source))
            .fetch_all(&mut *admin)
            .await
            .unwrap_or_default();
        // By hash prefix. A hash without a template is outdated. Only
        // db-test's own databases are dropped: those with its mark (see
        // `engine::MARK`), and, of a hash whose template has db-test's
        // label, all (made before templates were marked).
        let mut hashes: HashMap<&str, OtherHash> = HashMap::new();
        let mut labelled: HashSet<&str> = HashSet::new();
        for (name, comment, marked) in &all {
            let Some(parsed) = naming::parse(name) else {
                continue;
            };
            if parsed.source != source || parsed.hash == current_hash {
                continue;
            }
            let entry = hashes.entry(parsed.prefix).or_insert(OtherHash {
                databases: Vec::new(),
                outdated: true,
            });
            if parsed.kind == Some(Kind::Template) {
                entry.outdated = now - built_at(comment.as_deref()) >= grace;
                if built_at(comment.as_deref()) > 0 {
                    labelled.insert(parsed.prefix);
                }
            }
            entry.databases.push((parsed, *marked));
        }
        for (prefix, other) in hashes {
            if !other.outdated {
                continue;
            }
            let mut names: Vec<Parsed> = other
                .databases
                .into_iter()
                .filter(|(_, marked)| *marked || labelled.contains(prefix))
                .map(|(parsed, _)| parsed)
                .collect();
            if names.is_empty() {
                continue;
            }
            let lock = AdvisoryLock::hash(prefix);
            if !lock.try_lock(admin).await.unwrap_or(false) {
                continue; // in use
            }
            // In use all the same: a holder in another database (advisory
            // locks are per database), a connection (a user of an older
            // db-test, psql), or a per-test database whose owner lives.
            let busy: bool = sqlx::query_scalar(
                "SELECT exists(SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
                   AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 2 \
                   AND pid <> pg_backend_pid()) \
                 OR exists(SELECT 1 FROM pg_stat_activity WHERE starts_with(datname, $3))",
            )
            .bind(lock.class as i64)
            .bind(lock.key as i64)
            .bind(naming::under(prefix))
            .fetch_one(&mut *admin)
            .await
            .unwrap_or(true);
            let owners_alive = match Self::live_owners(admin).await {
                Ok(live) => names
                    .iter()
                    .any(|p| matches!(p.kind, Some(Kind::Test(o)) if live.contains(&o.id))),
                Err(_) => true,
            };
            if !busy && !owners_alive {
                // The template last.
                names.sort_by_key(|p| p.kind == Some(Kind::Template));
                for Parsed { name, .. } in names {
                    tracing::info!(database = %name, "db-test: dropping a database of outdated migrations");
                    if Self::drop_quietly(admin, name).await.is_err() {
                        break;
                    }
                }
            }
            lock.unlock(admin).await;
        }
    }

    /// Owner ids whose process holds its owner lock, on any host.
    async fn live_owners(conn: &mut PgConnection) -> Result<HashSet<u32>, sqlx::Error> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' \
             AND classid = $1::bigint::oid AND objsubid = 2",
        )
        .bind(OWNER_LOCK as i64)
        .fetch_all(&mut *conn)
        .await?;
        Ok(ids.into_iter().map(|id| id as u32).collect())
    }

    /// Drops one of our databases without waiting for anyone: the callers
    /// checked that nobody is connected, and ignore a failure.
    async fn drop_quietly(admin: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
        admin
            .execute(sqlx::AssertSqlSafe(drop_database_sql(admin, name, false)))
            .await
            .map(|_| ())
    }
}
