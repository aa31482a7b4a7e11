//! Per-test databases (`isolation = "database"`): a clone of the template
//! for each test, or a spare (a used one reset to the template's state)
//! claimed instead; afterwards recycled into a spare, dropped, or kept for a
//! failed test.

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor, PgConnection, Postgres, Row};

use super::engine::{
    Engine, Template, create_database_sql, drop_database_sql, marked_sql, quote_literal,
    rename_database_sql,
};
use super::naming::{self, Kind, Owner};
use crate::config;
use crate::hint::sqlstate;

/// How to bring a used per-test database back to the template's state.
#[derive(Debug, Clone)]
pub(super) struct Recycle {
    /// Empties the tables and puts the sequences back: a `DO` block that
    /// truncates only the tables holding rows (a `TRUNCATE` costs a few ms
    /// per table, an emptiness check microseconds), or, where PL/pgSQL is
    /// not available, `TRUNCATE … CASCADE` of every table; then a `setval`
    /// of each sequence that moved to exactly where it was in the template
    /// (`last_value` and `is_called`: a migration's `setval`, not only the
    /// sequence's `START`). See [`sequence_reset`].
    reset: String,
    /// A query returning the schema fingerprint.
    fingerprint_sql: String,
    /// The template's fingerprint.
    fingerprint: String,
}

/// Catalog rows that make up a database's schema and server-side state,
/// hashed. Two databases with the same fingerprint and empty tables are
/// interchangeable for a test. `{extra}` adds per-schema parts;
/// `{attcompression}` and `{prosqlbody}` are columns that older servers do
/// not have (`NULL` there). Parts with columns that can be `NULL` are
/// `format()`s, where a `NULL` prints as nothing (`NULL` for `%L`) instead
/// of making the whole row vanish from the hash, as with `||`. Besides the
/// schema itself, the state an `ALTER` can leave on it counts: table and
/// column options, replica identity, row level security, enabled triggers
/// (the internal ones of foreign keys too), sequence options and which
/// column owns a sequence, owners, function attributes, comments
/// (the database's too), and operators, operator classes and families,
/// collations, casts, text search configurations, foreign servers. A
/// sequence's position is not here: the reset puts it back exactly.
const FINGERPRINT_SQL: &str = r#"
WITH ns AS (
    SELECT oid, nspname FROM pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema')
      AND nspname NOT LIKE 'pg\_toast%' AND nspname NOT LIKE 'pg\_temp%'
), rel AS (
    SELECT c.* FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
)
SELECT md5(coalesce(string_agg(x, '|' ORDER BY x), '')) FROM (
    SELECT format('n:%s:%s:%L', nspname, nspowner::regrole, nspacl) FROM pg_namespace n WHERE n.oid IN (SELECT oid FROM ns)
    UNION ALL SELECT format('c:%s:%s:%s:%L:%s:%s:%s:%L:%s:%L:%s:%s:%s', oid::regclass, relkind, relpersistence, relacl,
        relrowsecurity, relforcerowsecurity, relreplident, reloptions, relispartition, pg_get_expr(relpartbound, oid),
        relam, reltablespace, relowner::regrole) FROM rel
    UNION ALL SELECT format('a:%s:%s:%s:%s:%L:%s:%s:%s:%s:%s:%L:%L:%s', a.attrelid::regclass, a.attname,
        format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity,
        a.attgenerated, a.attstorage, a.attcollation, a.attstattarget, a.attoptions, a.attacl, {attcompression})
        FROM pg_attribute a JOIN rel ON rel.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attnum > 0 AND NOT a.attisdropped
    UNION ALL SELECT 'g:' || conrelid::regclass::text || ':' || conname || ':' || pg_get_constraintdef(oid) || ':' || condeferrable::text || condeferred::text FROM pg_constraint WHERE connamespace IN (SELECT oid FROM ns)
    UNION ALL SELECT format('i:%s:%s:%s', pg_get_indexdef(indexrelid), indisreplident, indisclustered) FROM pg_index WHERE indrelid IN (SELECT oid FROM rel)
    UNION ALL SELECT format('p:%s:%s:%s:%L:%s:%s:%s:%s:%s:%s:%L:%s', p.oid::regprocedure, md5(coalesce(p.prosrc, '')),
        md5(coalesce({prosqlbody}, '')), p.proacl, p.prorettype::regtype, p.prosecdef, p.provolatile, p.proisstrict,
        p.proleakproof, p.proparallel, p.proconfig, p.proowner::regrole) FROM pg_proc p WHERE p.pronamespace IN (SELECT oid FROM ns)
    UNION ALL SELECT 't:' || t.oid::regtype::text || ':' || t.typtype::text FROM pg_type t WHERE t.typnamespace IN (SELECT oid FROM ns) AND t.typtype <> 'b'
    UNION ALL SELECT 'e:' || enumtypid::regtype::text || ':' || enumlabel || ':' || enumsortorder FROM pg_enum
    UNION ALL SELECT 'x:' || extname || ':' || extversion FROM pg_extension
    UNION ALL SELECT format('r:%s:%s:%s:%s', tgrelid::regclass, tgname, tgenabled,
        CASE WHEN tgisinternal THEN tgfoid || ':' || tgtype ELSE pg_get_triggerdef(oid) END) FROM pg_trigger
    UNION ALL SELECT format('w:%s:%s:%s:%s', ev_class::regclass, rulename, ev_enabled, md5(pg_get_ruledef(oid))) FROM pg_rewrite WHERE ev_class IN (SELECT oid FROM rel)
    UNION ALL SELECT format('o:%s:%s:%s:%s:%s:%L:%L', polrelid::regclass, polname, polcmd, polpermissive, polroles::regrole[],
        pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid)) FROM pg_policy
    UNION ALL SELECT format('q:%s:%s:%s:%s:%s:%s:%s:%s', s.seqrelid::regclass, s.seqtypid::regtype, s.seqstart, s.seqincrement,
        s.seqmax, s.seqmin, s.seqcache, s.seqcycle) FROM pg_sequence s JOIN rel ON rel.oid = s.seqrelid
    UNION ALL SELECT format('se:%s:%s:%s:%s', stxrelid::regclass, stxname, stxkind, stxkeys) FROM pg_statistic_ext WHERE stxnamespace IN (SELECT oid FROM ns)
    UNION ALL SELECT format('da:%s:%s:%s:%L', defaclrole::regrole, defaclnamespace, defaclobjtype, defaclacl) FROM pg_default_acl
    UNION ALL SELECT 'l:' || (SELECT count(*) FROM pg_largeobject_metadata)
    UNION ALL SELECT 'v:' || (SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database())
    UNION ALL SELECT 'd:' || coalesce((SELECT setconfig::text FROM pg_db_role_setting WHERE setrole = 0 AND setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())), '')
    UNION ALL SELECT format('db:%s:%L:%s:%s', datdba::regrole, datacl, datconnlimit, datallowconn) FROM pg_database WHERE datname = current_database()
    UNION ALL SELECT 'ev:' || evtname || ':' || evtenabled::text FROM pg_event_trigger
    UNION ALL SELECT 'pub:' || pubname FROM pg_publication
    UNION ALL SELECT format('cm:%s:%s', pg_describe_object(classoid, objoid, objsubid), md5(description)) FROM pg_description WHERE objoid >= 16384
    UNION ALL SELECT 'dcm:' || coalesce((SELECT md5(description) FROM pg_shdescription WHERE objoid = (SELECT oid FROM pg_database WHERE datname = current_database())), '')
    UNION ALL SELECT format('dep:%s:%s:%s', pg_describe_object(classid, objid, objsubid), pg_describe_object(refclassid, refobjid, refobjsubid), deptype) FROM pg_depend
        WHERE classid = 'pg_class'::regclass AND objid IN (SELECT oid FROM rel WHERE relkind = 'S') AND deptype IN ('a', 'i')
    UNION ALL SELECT format('op:%s:%s:%s', o.oid::regoperator, o.oprcode::regproc, o.oprowner::regrole) FROM pg_operator o WHERE o.oprnamespace IN (SELECT oid FROM ns)
    UNION ALL SELECT format('oc:%s:%s:%s', c.opcnamespace::regnamespace, c.opcname, c.opcmethod) FROM pg_opclass c WHERE c.opcnamespace IN (SELECT oid FROM ns)
    UNION ALL SELECT format('of:%s:%s:%s', f.opfnamespace::regnamespace, f.opfname, f.opfmethod) FROM pg_opfamily f WHERE f.opfnamespace IN (SELECT oid FROM ns)
    UNION ALL SELECT format('co:%s:%s', c.collnamespace::regnamespace, c.collname) FROM pg_collation c WHERE c.collnamespace IN (SELECT oid FROM ns)
    UNION ALL SELECT format('ca:%s:%s:%s:%s', c.castsource::regtype, c.casttarget::regtype, c.castfunc::regprocedure, c.castcontext) FROM pg_cast c WHERE c.oid >= 16384
    UNION ALL SELECT format('ts:%s:%s', c.cfgnamespace::regnamespace, c.cfgname) FROM pg_ts_config c WHERE c.cfgnamespace IN (SELECT oid FROM ns)
    UNION ALL SELECT format('fs:%s:%L', s.srvname, s.srvoptions) FROM pg_foreign_server s
    {extra}
) f(x)
"#;

/// [`FINGERPRINT_SQL`] for a server of this version (`server_version_num`),
/// with these per-schema parts.
fn fingerprint_sql(extra: &str, server_version: u32) -> String {
    let (attcompression, prosqlbody) = if server_version >= 140000 {
        ("a.attcompression", "p.prosqlbody::text")
    } else {
        ("NULL", "NULL::text")
    };
    FINGERPRINT_SQL
        .replace("{extra}", extra)
        .replace("{attcompression}", attcompression)
        .replace("{prosqlbody}", prosqlbody)
}

/// The statement of [`Recycle::reset`] that puts each sequence back where
/// it stands in the template: `(name, last_value, is_called)`, names as
/// `format('%I.%I')` prints them. It reads each sequence's own row (one
/// page; `is_called` is only there) and `setval`s only those that moved, so
/// a `setval(.., false)`, `ALTER SEQUENCE .. RESTART [WITH]` or `nextval`
/// is undone exactly. A sequence the test dropped makes it fail, and the
/// database is dropped.
fn sequence_reset(states: &[(String, i64, bool)]) -> String {
    states
        .iter()
        .map(|(seq, value, called)| {
            format!(
                "SELECT pg_catalog.setval({}::regclass, {value}, {called}) FROM {seq} \
                 WHERE (last_value, is_called) IS DISTINCT FROM ({value}::int8, {called})",
                quote_literal(seq)
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// The `DO` block of [`Recycle::reset`] for these tables (`format('%I.%I')`
/// names): truncates those holding rows, and again those that hold rows
/// after that (an `ON TRUNCATE` trigger's audit row: statement triggers
/// fire after the truncation); rows still there after a few rounds fail
/// the reset, and the database is dropped. None if a name would break out
/// of the block.
fn reset_block(tables: &[String]) -> Option<String> {
    const TAG: &str = "$db_test_reset$";
    if tables.iter().any(|t| t.contains(TAG)) {
        return None;
    }
    let list = tables
        .iter()
        .map(|t| quote_literal(t))
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "DO {TAG}
DECLARE
    t text;
    dirty text[];
    found boolean;
BEGIN
    FOR attempt IN 1..4 LOOP
        dirty := '{{}}';
        FOREACH t IN ARRAY ARRAY[{list}]::text[] LOOP
            EXECUTE 'SELECT EXISTS (SELECT 1 FROM ' || t || ')' INTO found;
            IF found THEN
                dirty := dirty || t;
            END IF;
        END LOOP;
        EXIT WHEN cardinality(dirty) = 0;
        IF attempt = 4 THEN
            RAISE EXCEPTION 'db-test: tables hold rows after the reset: %', dirty;
        END IF;
        EXECUTE 'TRUNCATE TABLE ' || array_to_string(dirty, ', ') || ' CASCADE';
    END LOOP;
END
{TAG}"
    ))
}

/// Counts the connections to the current database other than this one.
const OTHER_CONNECTIONS_SQL: &str = "SELECT count(*) FROM pg_catalog.pg_stat_activity \
     WHERE datname = current_database() AND pid <> pg_backend_pid()";

/// A database of one test's own (`isolation = "database"`).
pub(crate) struct TestDatabase {
    pub(crate) name: String,
    pub(crate) options: PgConnectOptions,
}

impl Engine {
    /// Gives one test a database of its own: a used one recycled to the
    /// template's state if there is one (see `recycle_test_database`),
    /// otherwise a fresh clone of the template. The template itself is never
    /// connected to: cloning needs it idle.
    pub(crate) async fn create_test_database(
        &self,
        template: &Template,
    ) -> Result<TestDatabase, String> {
        template
            .leftovers_checked
            .get_or_init(|| self.drop_leftovers(&template.prefix))
            .await;
        // The owner lock must be held before a database carries our id.
        self.with_owner_conn(async |_| Ok(())).await?;
        let name = self.new_name(template, Kind::Test)?;
        // A clone holds its permit until its database is ready.
        let _permit;
        if !self.claim_spare(template, &name).await? {
            // The permit first, then the connection: a clone waiting for its
            // permit holds no admin connection, so DB_TEST_MAX_DATABASES
            // clones run at once.
            _permit = self.clones.acquire().await.expect("semaphore never closed");
            self.clone_template(template, &name).await?;
        }
        self.recycle_plan(template, &name).await;
        Ok(TestDatabase {
            // No other test shares this database: no lock wait in it is
            // another test's doing.
            options: self.own_database_options(&name),
            name,
        })
    }

    /// Renames one of the template's spares to `name`, if there is one. Of
    /// two processes racing for a spare, the second finds it gone and tries
    /// the next.
    async fn claim_spare(&self, template: &Template, name: &str) -> Result<bool, String> {
        let mut conn = self.admin_to_create().await?;
        // Only db-test's own (see `engine::MARK`).
        let mut spares: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT d.datname::text FROM pg_database d WHERE starts_with(d.datname, $1) AND {} \
             LIMIT 8",
            marked_sql("d.oid")
        )))
        .bind(naming::spares_under(&template.prefix))
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_default();
        // Threads of one process start at different spares.
        if !spares.is_empty() {
            let n = self
                .clone_counter
                .load(std::sync::atomic::Ordering::Relaxed);
            let start = n as usize % spares.len();
            spares.rotate_left(start);
        }
        for spare in spares {
            let claim = rename_database_sql(&spare, name);
            if conn.execute(sqlx::AssertSqlSafe(claim)).await.is_ok() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Clones the template into `name`. The template itself is never
    /// connected to: cloning needs it idle.
    async fn clone_template(&self, template: &Template, name: &str) -> Result<(), String> {
        let mut conn = self.admin_to_create().await?;
        let sql = create_database_sql(name, Some(&template.template));
        let mut rebuilt = false;
        loop {
            match Self::admin_exec(&mut conn, &sql).await {
                Ok(()) => {
                    return super::engine::copy_database_settings(&mut conn, &template.template, name)
                        .await
                        .map_err(|e| {
                            format!(
                                "db-test: cannot give test database {name} its template's settings on {}: {e}",
                                self.display_url
                            )
                        });
                }
                // The template is gone (dropped by hand, or swept while this
                // process's owner connection was down): build it again, then
                // clone.
                Err(e) if sqlstate(&e).as_deref() == Some("3D000") && !rebuilt => {
                    tracing::info!(template = %template.template, "db-test: the template is gone; building it again");
                    self.create_template(template.migrator.get(), &template.source, &template.hash)
                        .await?;
                    rebuilt = true;
                }
                Err(e) => {
                    return Err(format!(
                        "db-test: cannot create test database {name} on {}: {e}",
                        self.display_url
                    ));
                }
            }
        }
    }

    /// An admin connection to create a test database with.
    async fn admin_to_create(&self) -> Result<PoolConnection<Postgres>, String> {
        self.admin_pool.acquire().await.map_err(|e| {
            format!(
                "db-test: cannot connect to {} to create a test database: {e}",
                self.display_url
            )
        })
    }

    /// A new name for a database of this process's, of `kind`
    /// ([`Kind::Test`] or [`Kind::Spare`]).
    fn new_name(&self, template: &Template, kind: fn(Owner) -> Kind) -> Result<String, String> {
        let n = self
            .clone_counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let owner = Owner { id: self.owner, n };
        naming::fits(naming::name(&template.prefix, kind(owner)))
    }

    /// How to reset a used per-test database, worked out once per template
    /// and process on a database just cloned (or a spare just claimed), so in
    /// the template's exact state. None when the template holds rows (seed
    /// data), materialized views or foreign tables: those databases are
    /// dropped, never recycled.
    async fn recycle_plan(&self, template: &Template, fresh: &str) -> Option<Recycle> {
        template
            .recycle
            .get_or_init(|| async {
                let mut conn = self.options_for(fresh).connect().await.ok()?;
                let tables: Vec<(String, String, i64)> = sqlx::query_as(
                    "SELECT format('%I.%I', n.nspname, c.relname), c.relkind::text, \
                     (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text::bigint \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE c.relkind IN ('r', 'p', 'm', 'f') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'",
                )
                .fetch_all(&mut conn)
                .await
                .ok()?;
                let mut truncate = Vec::new();
                let mut extra = String::new();
                for (table, kind, rows) in &tables {
                    if table.ends_with("._sqlx_migrations") {
                        // Kept, and checked unchanged.
                        extra.push_str(&format!(
                            "UNION ALL SELECT 'm:' || (SELECT count(*) || ':' || coalesce(max(version), 0) FROM {table})\n"
                        ));
                        continue;
                    }
                    if kind == "m" || kind == "f" || *rows > 0 {
                        return None;
                    }
                    truncate.push(table.clone());
                }
                // Tried once here, on a database in the template's state,
                // where it has nothing to do.
                let truncate = match reset_block(&truncate) {
                    Some(block) if conn.execute(sqlx::AssertSqlSafe(block.clone())).await.is_ok() => block,
                    _ if truncate.is_empty() => String::from("SELECT 1 WHERE false"),
                    // A single `TRUNCATE` cannot undo what an `ON TRUNCATE`
                    // trigger writes (after it): such a template is not
                    // recycled without the block.
                    _ if sqlx::query_scalar::<_, bool>(
                        "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE NOT tgisinternal AND tgtype & 32 <> 0)",
                    )
                    .fetch_one(&mut conn)
                    .await
                    .unwrap_or(true) => return None,
                    _ => format!("TRUNCATE TABLE {} CASCADE", truncate.join(", ")),
                };
                // Where each sequence stands in the template's state, read
                // from the sequence itself: `pg_sequence_last_value` is NULL
                // before the first `nextval` and after `setval(.., false)`
                // or `ALTER SEQUENCE .. RESTART`, whatever the value.
                let sequences: Vec<String> = sqlx::query_scalar(
                    "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE c.relkind = 'S' AND c.relpersistence <> 't' \
                     AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'",
                )
                .fetch_all(&mut conn)
                .await
                .ok()?;
                let mut reset = truncate;
                if !sequences.is_empty() {
                    let read = sequences
                        .iter()
                        .map(|seq| format!("SELECT {}, last_value, is_called FROM {seq}", quote_literal(seq)))
                        .collect::<Vec<_>>()
                        .join(" UNION ALL ");
                    let states: Vec<(String, i64, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(read))
                        .fetch_all(&mut conn)
                        .await
                        .ok()?;
                    reset.push_str("; ");
                    reset.push_str(&sequence_reset(&states));
                }
                let fingerprint_sql = fingerprint_sql(&extra, conn.server_version_num().unwrap_or(0));
                let fingerprint: String = sqlx::query_scalar(sqlx::AssertSqlSafe(fingerprint_sql.clone()))
                    .fetch_one(&mut conn)
                    .await
                    .ok()?;
                let _ = conn.close().await;
                Some(Recycle { reset, fingerprint_sql, fingerprint })
            })
            .await
            .clone()
    }

    /// Puts a used per-test database back as a spare for the next test,
    /// instead of dropping it: its tables are emptied (sequences restarted)
    /// and, only if its schema and server-side state then match the
    /// template's exactly and nobody else is connected, it is renamed to a
    /// spare. `CREATE DATABASE` costs 100-350 ms on a small machine; this
    /// costs a few. Anything unexpected: the database is dropped instead.
    ///
    /// `reuse` is a connection the test already opened to the database (its
    /// pool's, detached), and whether the pool's other connections are still
    /// on their way out; without one a new connection is made.
    pub(crate) async fn recycle_test_database(
        &self,
        template: &Template,
        name: &str,
        reuse: Option<(PgConnection, bool)>,
    ) -> Result<(), String> {
        match self.try_recycle(template, name, reuse).await {
            Ok(()) => Ok(()),
            Err(why) => {
                tracing::debug!(database = %name, why, "db-test: dropping a test database instead of recycling it");
                self.drop_test_database(name).await
            }
        }
    }

    async fn try_recycle(
        &self,
        template: &Template,
        name: &str,
        reuse: Option<(PgConnection, bool)>,
    ) -> Result<(), &'static str> {
        let plan = template.recycle.get().cloned().flatten().ok_or(
            "this template cannot be recycled (rows, materialized views or foreign tables)",
        )?;
        let mut conn = match reuse {
            Some((mut conn, others_closing)) => {
                if others_closing && !Self::wait_until_zero(&mut conn, OTHER_CONNECTIONS_SQL).await
                {
                    return Err("the test left connections open");
                }
                conn
            }
            None => {
                tokio::time::timeout(config::connect_timeout(), self.options_for(name).connect())
                    .await
                    .map_err(|_| "connect timed out")?
                    .map_err(|_| "cannot connect")?
            }
        };
        // One round trip. `now() = statement_timestamp()` holds only outside
        // a transaction block: a transaction the test left open on this
        // connection would swallow the reset (and roll it back on close).
        // `RESET ALL` undoes session settings that change how the
        // fingerprint prints names (search_path).
        let sql = format!(
            "SELECT now() = statement_timestamp(), ({OTHER_CONNECTIONS_SQL}); RESET ALL; {}; {}",
            plan.reset, plan.fingerprint_sql
        );
        for attempt in 0..2 {
            let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                .fetch_all(&mut conn)
                .await
                .map_err(|_| "emptying the tables failed")?;
            // The first statement's row, the fingerprint's; the sequences'
            // rows between them.
            let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
                return Err("unexpected result from the reset");
            };
            if rows.len() < 2 {
                return Err("unexpected result from the reset");
            }
            if !first.try_get::<bool, _>(0).unwrap_or(false) {
                return Err("the test left a transaction open");
            }
            if last.try_get::<String, _>(0).ok().as_deref() != Some(plan.fingerprint.as_str()) {
                return Err("the test changed the schema");
            }
            if first.try_get::<i64, _>(1).unwrap_or(1) == 0 {
                break;
            }
            // Other connections were still there: closing ones from the
            // test's pool, or one the test leaked. Wait for them, then reset
            // again, in case one wrote after the reset.
            if attempt == 1 || !Self::wait_until_zero(&mut conn, OTHER_CONNECTIONS_SQL).await {
                return Err("the test left connections open");
            }
        }
        let _ = conn.close().await;
        let spare = self
            .new_name(template, Kind::Spare)
            .map_err(|_| "spare name too long")?;
        let mut admin = self
            .admin_pool
            .acquire()
            .await
            .map_err(|_| "no admin connection")?;
        // A rename waits in steps of 100 ms for backends still on their way
        // out (including the one just closed); polling here takes ~1 ms.
        let gone = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = {}",
            quote_literal(name)
        );
        if !Self::wait_until_zero(&mut admin, &gone).await {
            return Err("connections stayed open");
        }
        Self::admin_exec(&mut admin, &rename_database_sql(name, &spare))
            .await
            .map_err(|_| "rename failed")
    }

    /// Polls a `count(*)` query until it returns 0, for up to 2 s.
    async fn wait_until_zero(conn: &mut PgConnection, count_sql: &str) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            let n: i64 = match sqlx::query_scalar(sqlx::AssertSqlSafe(count_sql.to_owned()))
                .fetch_one(&mut *conn)
                .await
            {
                Ok(n) => n,
                Err(_) => return false,
            };
            if n == 0 {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Drops a test's database (and any connection the test left open to it).
    pub(crate) async fn drop_test_database(&self, name: &str) -> Result<(), String> {
        let mut conn = self.admin_pool.acquire().await.map_err(|e| e.to_string())?;
        let drop = drop_database_sql(&conn, name, true);
        Self::admin_exec(&mut conn, &drop)
            .await
            .map_err(|e| format!("db-test: cannot drop test database {name}: {e}"))
    }

    /// Keeps a failed test's database under a name the leftover sweep skips.
    pub(crate) async fn keep_test_database(&self, name: &str) -> Result<String, String> {
        let kept = naming::kept(name);
        let mut conn = self.admin_pool.acquire().await.map_err(|e| e.to_string())?;
        Self::admin_exec(&mut conn, &rename_database_sql(name, &kept))
            .await
            .map_err(|e| format!("db-test: cannot keep test database {name}: {e}"))?;
        Ok(kept)
    }
}
