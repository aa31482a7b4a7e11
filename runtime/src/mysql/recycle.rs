//! Recycling a used per-test database (`isolation = "database"`) into a
//! spare for the next test of the process, without DDL where the test left
//! the schema alone.
//!
//! A fresh clone costs a `CREATE DATABASE` and a `CREATE TABLE` per table,
//! each a few ms of the server's time even in memory, and `DROP DATABASE`
//! after the test. A used database whose schema is still the template's
//! only needs its rows: the tables holding rows are emptied with `TRUNCATE`
//! (not `DELETE`, whose deleted rows stay in unique indexes until purged,
//! where concurrent inserts of the same values take locks on them and can
//! deadlock, which they never do in a fresh clone), one transaction copies
//! the template's own rows back, and an `ALTER TABLE … AUTO_INCREMENT` sets
//! back the counters (so the next test's first id is the one a fresh clone
//! gives). A table whose template has rows (`_sqlx_migrations`, seed data)
//! is left alone when its `CHECKSUM TABLE` still equals the template's (of
//! the rows' bytes: a change of case that the collation calls equal still
//! counts): a `TRUNCATE` recreates the table and is the dearest statement
//! of a reset.
//!
//! Whether the schema is still the template's is asked in one round trip of
//! `SHOW` statements, which read each table's definition directly:
//! `information_schema` opens every table for each of its views and costs
//! ten times as much on MariaDB (about 10 ms against 1 ms here). What a
//! test may change, and where it shows:
//!
//! | change | seen in |
//! |---|---|
//! | a table or view created, dropped, renamed | `SHOW FULL TABLES` |
//! | columns, indexes, keys, checks, engine, options, partitions | `SHOW CREATE TABLE` |
//! | a view's definition | `SHOW CREATE VIEW` |
//! | triggers | `information_schema.triggers` (any: not recycled) |
//! | procedures, functions | `mysql.proc` (MariaDB) or `information_schema.routines` |
//! | events | `mysql.event` or `information_schema.events` (any: not recycled) |
//! | the database's character set and collation | `SHOW CREATE DATABASE` |
//!
//! Anything else (a failed check, an error, a table the test dropped) means
//! the database is dropped instead, never reused.

use std::collections::HashMap;

use futures_util::TryStreamExt;
use sqlx::mysql::MySqlConnection;
use sqlx::{Column, Either, Executor, Row};

use super::engine::{literal, quote};
use super::template::{TARGET, copy_rows_sql};

/// How to bring a used per-test database back to its template's state.
pub(super) struct Recycle {
    /// The template's [`Survey::signature`].
    signature: String,
    /// The template's base tables and views, as surveyed.
    tables: Vec<String>,
    views: Vec<String>,
    /// Each base table's `AUTO_INCREMENT` in the template.
    auto_increments: HashMap<String, u64>,
    /// The routines and events queries of this server ([`Catalog`]).
    catalog: Catalog,
    /// The tables holding rows in the template: each one's statements
    /// copying them back into it once emptied (with [`TARGET`] for the
    /// database), and its `CHECKSUM TABLE` in the template.
    seeded: Vec<Seeded>,
}

/// A table holding rows in the template (see [`Recycle::seeded`]).
struct Seeded {
    table: String,
    copy: String,
    checksum: Option<i64>,
}

/// Where this server keeps routines and events: MariaDB (and MySQL 5.7)
/// in `mysql.proc`/`mysql.event`, read by primary key; MySQL 8 only in its
/// data dictionary, through `information_schema` (fast there).
#[derive(Clone, Copy)]
enum Catalog {
    Tables,
    InformationSchema,
}

/// What one survey of a database found.
struct Survey {
    /// Every `SHOW` and catalog row, the database's own name and each
    /// table's `AUTO_INCREMENT` left out: equal for a template and an
    /// unchanged clone.
    signature: String,
    /// Each base table's `AUTO_INCREMENT` (1 where `SHOW CREATE TABLE`
    /// names none).
    auto_increments: HashMap<String, u64>,
    /// Triggers or events: copying rows back would fire triggers.
    active: bool,
    /// A table kind whose state a row reset does not restore (a MariaDB
    /// `SEQUENCE`, a system-versioned table keeping deleted rows).
    stateful: bool,
    /// `CHECKSUM TABLE` of the tables asked for, in their order (`None`
    /// for a table that is gone).
    checksums: Vec<Option<i64>>,
    /// Of the tables asked to probe, those holding rows.
    filled: Vec<String>,
    /// Sessions in the database other than the surveying one (when asked).
    others: i64,
}

/// What a survey asks of the rows besides the schema.
#[derive(Clone, Copy, Default)]
struct Rows<'a> {
    /// Tables whose `CHECKSUM TABLE` is wanted.
    checksummed: &'a [&'a str],
    /// Tables to ask whether they hold rows.
    probed: &'a [&'a str],
    /// Whether to count the other sessions in the database.
    count_others: bool,
}

/// Stands for the surveyed database's name in a signature.
const SELF: &str = "\u{1}dbtest-self\u{1}";

/// The count of sessions in the database named by the SQL literal `db`,
/// other than the asking one.
fn other_sessions_sql(db: &str) -> String {
    format!(
        "SELECT COUNT(*) FROM information_schema.processlist \
         WHERE db = {db} AND id <> CONNECTION_ID()"
    )
}

/// Survey the schema of `database` (its tables and views as named), the
/// rows of the tables `checksummed` (`CHECKSUM TABLE`), and which of the
/// tables `probed` hold rows; in one round trip.
async fn survey(
    conn: &mut MySqlConnection,
    database: &str,
    tables: &[String],
    views: &[String],
    rows: Rows<'_>,
    catalog: Catalog,
) -> Result<Survey, sqlx::Error> {
    let Rows {
        checksummed,
        probed,
        count_others,
    } = rows;
    let q = quote(database);
    let l = literal(database);
    let mut script = format!("SHOW FULL TABLES FROM {q};\n");
    for table in tables {
        script.push_str(&format!("SHOW CREATE TABLE {q}.{};\n", quote(table)));
    }
    for view in views {
        script.push_str(&format!("SHOW CREATE VIEW {q}.{};\n", quote(view)));
    }
    // Not `SHOW TRIGGERS`, which builds every trigger's row in a temporary
    // table with text columns and costs twice as much on MariaDB; any
    // trigger at all means "not recycled".
    script.push_str(&format!(
        "SELECT COUNT(*) FROM information_schema.triggers WHERE event_object_schema = {l};\n"
    ));
    script.push_str(&match catalog {
        Catalog::Tables => format!(
            "SELECT CAST(name AS CHAR), CAST(type AS CHAR), MD5(body), MD5(param_list), \
             MD5(returns), CAST(security_type AS CHAR), CAST(sql_mode AS CHAR) \
             FROM mysql.proc WHERE db = {l} ORDER BY 1, 2;\n\
             SELECT COUNT(*) FROM mysql.event WHERE db = {l};\n"
        ),
        Catalog::InformationSchema => format!(
            "SELECT CAST(routine_name AS CHAR), CAST(routine_type AS CHAR), \
             MD5(routine_definition), CAST(security_type AS CHAR), CAST(sql_mode AS CHAR) \
             FROM information_schema.routines WHERE routine_schema = {l} ORDER BY 1, 2;\n\
             SELECT COUNT(*) FROM information_schema.events WHERE event_schema = {l};\n"
        ),
    });
    script.push_str(&format!("SHOW CREATE DATABASE {q};\n"));
    if !checksummed.is_empty() {
        let list = checksummed
            .iter()
            .map(|t| format!("{q}.{}", quote(t)))
            .collect::<Vec<_>>()
            .join(", ");
        script.push_str(&format!("CHECKSUM TABLE {list};\n"));
    }
    if !probed.is_empty() {
        let probes = probed
            .iter()
            .map(|t| {
                format!(
                    "SELECT {} AS t, EXISTS (SELECT 1 FROM {q}.{}) AS filled",
                    literal(t),
                    quote(t)
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        script.push_str(&probes);
        script.push_str(";\n");
    }
    if count_others {
        script.push_str(&other_sessions_sql(&l));
        script.push_str(";\n");
    }

    // Result sets, in the script's order: the rows of each.
    let mut sets: Vec<Vec<Vec<Option<String>>>> = vec![Vec::new()];
    let mut steps = sqlx::raw_sql(sqlx::AssertSqlSafe(script)).fetch_many(&mut *conn);
    while let Some(step) = steps.try_next().await? {
        match step {
            Either::Left(_) => sets.push(Vec::new()),
            Either::Right(row) => {
                let values = (0..row.columns().len())
                    .map(|i| text(&row, i))
                    .collect::<Result<Vec<_>, _>>()?;
                sets.last_mut().expect("one set at least").push(values);
            }
        }
    }
    drop(steps);
    // One set per statement (each ends with its result), then an empty one.
    let statements = tables.len()
        + views.len()
        + 5
        + usize::from(!checksummed.is_empty())
        + usize::from(!probed.is_empty())
        + usize::from(count_others);
    if sets.len() != statements + 1 {
        return Err(sqlx::Error::Protocol(format!(
            "db-test: a survey of {statements} statements returned {} results",
            sets.len() - 1
        )));
    }
    let triggers_at = 1 + tables.len() + views.len();
    let events_at = triggers_at + 2;
    let mut signature = String::new();
    let mut auto_increments = HashMap::new();
    let mut stateful = false;
    let checksums_at = events_at + 2;
    let probes_at = checksums_at + usize::from(!checksummed.is_empty());
    let others_at = probes_at + usize::from(!probed.is_empty());
    let mut checksums = Vec::new();
    let mut filled = Vec::new();
    if !probed.is_empty() {
        // One row per table: (name, 0 or 1).
        for row in &sets[probes_at] {
            if let [Some(table), Some(flag)] = row.as_slice()
                && flag != "0"
            {
                filled.push(table.clone());
            }
        }
    }
    if !checksummed.is_empty() {
        // One row per table, in order: (name, checksum or NULL).
        for row in &sets[checksums_at] {
            let value = row.get(1).cloned().flatten();
            checksums.push(value.and_then(|v| v.parse().ok()));
        }
        if checksums.len() != checksummed.len() {
            return Err(sqlx::Error::Protocol(format!(
                "db-test: CHECKSUM TABLE of {} tables returned {} rows",
                checksummed.len(),
                checksums.len()
            )));
        }
    }
    for (i, set) in sets.iter().enumerate() {
        if (i == checksums_at && !checksummed.is_empty())
            || (i == probes_at && !probed.is_empty())
            || (i == others_at && count_others)
        {
            // Rows, not schema: compared table by table.
            continue;
        }
        for row in set {
            let mut values: Vec<String> = row
                .iter()
                .map(|v| v.clone().unwrap_or_else(|| "\u{2}".into()))
                .collect();
            if i == 0
                && values
                    .get(1)
                    .is_some_and(|kind| kind != "BASE TABLE" && kind != "VIEW")
            {
                stateful = true;
            }
            if (1..=tables.len()).contains(&i)
                && let [table, create, ..] = values.as_mut_slice()
            {
                let (stripped, value) = without_auto_increment(create);
                auto_increments.insert(table.clone(), value);
                if stripped.contains("WITH SYSTEM VERSIONING") {
                    stateful = true;
                }
                *create = stripped;
            }
            for v in &mut values {
                *v = v.replace(database, SELF);
            }
            signature.push_str(&values.join("\u{1f}"));
            signature.push('\u{1e}');
        }
        signature.push('\u{1d}');
    }
    let count = |at: usize| {
        sets[at]
            .first()
            .and_then(|row| row.first().cloned().flatten())
    };
    let active =
        count(triggers_at).as_deref() != Some("0") || count(events_at).as_deref() != Some("0");
    let others = if count_others {
        count(others_at)
            .and_then(|n| n.parse().ok())
            .unwrap_or(i64::MAX)
    } else {
        0
    };
    Ok(Survey {
        signature,
        auto_increments,
        active,
        stateful,
        checksums,
        filled,
        others,
    })
}

/// A column as text (`SHOW` output, catalog strings and counts; binary as
/// lossy UTF-8; other types by their type's name).
fn text(row: &sqlx::mysql::MySqlRow, i: usize) -> Result<Option<String>, sqlx::Error> {
    if let Ok(v) = row.try_get::<Option<String>, _>(i) {
        return Ok(v);
    }
    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
        return Ok(v.map(|n| n.to_string()));
    }
    if let Ok(v) = row.try_get::<Option<Vec<u8>>, _>(i) {
        return Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned()));
    }
    // Another type (a date): its type stands for it.
    Ok(Some(format!("\u{3}{}", row.column(i).type_info())))
}

/// `SHOW CREATE TABLE` output without its ` AUTO_INCREMENT=n` option, and n
/// (1 when absent, as MySQL shows none then).
fn without_auto_increment(create: &str) -> (String, u64) {
    const KEY: &str = " AUTO_INCREMENT=";
    // The table options follow the last `)`: a column's `AUTO_INCREMENT`
    // attribute has no `=`, but a comment could hold anything.
    let options_at = create.rfind(')').unwrap_or(0);
    if let Some(at) = create[options_at..].find(KEY).map(|i| i + options_at) {
        let digits: String = create[at + KEY.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = digits.parse() {
            let mut out = create[..at].to_string();
            out.push_str(&create[at + KEY.len() + digits.len()..]);
            return (out, n);
        }
    }
    (create.to_string(), 1)
}

/// How to recycle clones of `template`: None if its schema has triggers,
/// events, sequences or system-versioned tables (a row reset would fire
/// them or not restore them).
pub(super) async fn plan(
    admin: &mut MySqlConnection,
    template: &str,
) -> Result<Option<Recycle>, sqlx::Error> {
    let catalog = match admin
        .execute("SELECT 1 FROM mysql.proc LIMIT 0; SELECT 1 FROM mysql.event LIMIT 0")
        .await
    {
        Ok(_) => Catalog::Tables,
        Err(_) => Catalog::InformationSchema,
    };
    let mut tables = Vec::new();
    let mut views = Vec::new();
    for row in sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SHOW FULL TABLES FROM {}",
        quote(template)
    )))
    .fetch_all(&mut *admin)
    .await?
    {
        let (name, kind) = (text(&row, 0)?, text(&row, 1)?);
        match (name, kind.as_deref()) {
            (Some(name), Some("VIEW")) => views.push(name),
            (Some(name), Some("BASE TABLE")) => tables.push(name),
            // A sequence: its state is not reset by rows.
            _ => return Ok(None),
        }
    }
    let mut copies = Vec::new();
    for table in &tables {
        if let Some(copy) = copy_rows_sql(admin, template, table).await? {
            copies.push((table.clone(), copy));
        }
    }
    let names: Vec<&str> = copies.iter().map(|(t, _)| t.as_str()).collect();
    let survey = survey(
        admin,
        template,
        &tables,
        &views,
        Rows {
            checksummed: &names,
            ..Rows::default()
        },
        catalog,
    )
    .await?;
    if survey.active || survey.stateful {
        return Ok(None);
    }
    let seeded = copies
        .into_iter()
        .zip(survey.checksums)
        .map(|((table, copy), checksum)| Seeded {
            table,
            copy,
            checksum,
        })
        .collect();
    Ok(Some(Recycle {
        signature: survey.signature,
        tables,
        views,
        auto_increments: survey.auto_increments,
        catalog,
        seeded,
    }))
}

impl Recycle {
    /// Resets `name`, a used clone, to the template's state; `Err` with
    /// the reason when it cannot be (the caller drops it).
    pub(super) async fn reset(
        &self,
        admin: &mut MySqlConnection,
        name: &str,
    ) -> Result<(), String> {
        let seeded: Vec<&str> = self.seeded.iter().map(|s| s.table.as_str()).collect();
        // The tables empty in the template: a test that filled one gets it
        // emptied.
        let empty: Vec<&str> = self
            .tables
            .iter()
            .map(String::as_str)
            .filter(|t| !seeded.contains(t))
            .collect();
        let now = survey(
            admin,
            name,
            &self.tables,
            &self.views,
            Rows {
                checksummed: &seeded,
                probed: &empty,
                count_others: true,
            },
            self.catalog,
        )
        .await
        .map_err(|e| format!("surveying its schema: {e}"))?;
        // A session the test opened itself (a pool of its own built from the
        // options it was given, a task's connection) could write after the
        // reset: such a database is dropped, not handed to the next test.
        // Its pool was closed just before, and the server may not have
        // processed those disconnects yet: counted again for a moment.
        if now.others > 0 && !self.alone(admin, name).await {
            return Err("another session is still connected to it".into());
        }
        if now.signature != self.signature || now.active || now.stateful {
            return Err("the test changed its schema".into());
        }
        // Emptied with TRUNCATE, not DELETE: deleted rows stay in InnoDB's
        // indexes, marked, until purged, and an insert of the same unique
        // value then takes shared locks on them, with which concurrent
        // inserts of the next test deadlock (a fresh clone has none).
        // Tables already empty are left alone, and so are tables whose rows
        // are still the template's (their checksums are equal): a TRUNCATE
        // recreates the table, the dearest statement of a reset.
        let mut filled = now.filled.clone();
        let mut copies = String::new();
        let target = name.replace('`', "``");
        for (seed, now) in self.seeded.iter().zip(&now.checksums) {
            if seed.checksum.is_some() && *now == seed.checksum {
                continue;
            }
            // Not among `filled`: only the template's empty tables are probed.
            filled.push(seed.table.clone());
            copies.push_str(&seed.copy.replace(TARGET, &target));
        }
        let mut sql =
            String::from("SET @dbtest_fk = @@FOREIGN_KEY_CHECKS, FOREIGN_KEY_CHECKS = 0;\n");
        for table in &filled {
            sql.push_str(&format!(
                "TRUNCATE TABLE {}.{};\n",
                quote(name),
                quote(table)
            ));
        }
        if !copies.is_empty() {
            sql.push_str("START TRANSACTION;\n");
            sql.push_str(&copies);
            sql.push_str("COMMIT;\n");
        }
        sql.push_str("SET FOREIGN_KEY_CHECKS = @dbtest_fk;\n");
        for (table, value) in &self.auto_increments {
            // TRUNCATE set the counter back to 1 (the copy, past its rows);
            // a table left alone has the counter the test left.
            let wrong = if filled.contains(table) {
                *value > 1
            } else {
                now.auto_increments.get(table) != Some(value)
            };
            if wrong {
                sql.push_str(&format!(
                    "ALTER TABLE {}.{} AUTO_INCREMENT = {value};\n",
                    quote(name),
                    quote(table)
                ));
            }
        }
        let reset = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *admin)
            .await;
        if let Err(e) = reset {
            // Whatever of the reset ran stays in the database, which is
            // dropped; the admin connection must not stay in a transaction.
            let _ = admin.execute("ROLLBACK").await;
            return Err(format!("resetting its rows: {e}"));
        }
        Ok(())
    }

    /// Whether no session but `admin` is in `name`, within 200 ms.
    async fn alone(&self, admin: &mut MySqlConnection, name: &str) -> bool {
        for _ in 0..10 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let others: Result<i64, _> =
                sqlx::query_scalar(sqlx::AssertSqlSafe(other_sessions_sql(&literal(name))))
                    .persistent(false)
                    .fetch_one(&mut *admin)
                    .await;
            match others {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_increment_option_is_split_off() {
        let create = "CREATE TABLE `t` (\n  `id` bigint(20) NOT NULL AUTO_INCREMENT,\n  \
                      PRIMARY KEY (`id`)\n) ENGINE=InnoDB AUTO_INCREMENT=17 DEFAULT CHARSET=utf8mb4";
        let (stripped, n) = without_auto_increment(create);
        assert_eq!(n, 17);
        assert!(stripped.ends_with(") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"));
        assert!(stripped.contains("NOT NULL AUTO_INCREMENT,"));
        let (same, one) = without_auto_increment("CREATE TABLE `t` (`a` int) ENGINE=InnoDB");
        assert_eq!(
            (same.as_str(), one),
            ("CREATE TABLE `t` (`a` int) ENGINE=InnoDB", 1)
        );
    }

    #[test]
    fn literals_are_quoted() {
        assert_eq!(literal("a'b\\c"), "'a''b\\\\c'");
    }
}
