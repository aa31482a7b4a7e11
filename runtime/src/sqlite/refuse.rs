//! What a SQLite test in transaction mode must not send: reading SQLite's
//! SQL text just enough to find such statements anywhere in a
//! multi-statement string.

/// The top-level statements of `sql`, comments removed, whitespace
/// collapsed, quoted text (`'..'`, `".."`, `` `..` ``, `[..]`) kept as
/// written. A `;` inside the `BEGIN .. END` body of a `CREATE TRIGGER` does
/// not end the statement. The body ends at the first `END` right after a
/// `;` (its statements end with one; a `CASE .. END` never follows one, and
/// `begin`, `case` or `end` may be names in it).
pub(crate) fn statements(sql: &str) -> Vec<String> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut cur = String::new();
    // Inside the body of a CREATE TRIGGER; right after a `;` in it.
    let mut body = false;
    let mut after_semicolon = false;
    let mut i = 0;
    let push_space = |cur: &mut String| {
        if !cur.is_empty() && !cur.ends_with(' ') {
            cur.push(' ');
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b';' if body => {
                cur.push(';');
                after_semicolon = true;
                i += 1;
            }
            b';' => {
                let s = cur.trim().to_string();
                if !s.is_empty() {
                    out.push(s);
                }
                cur.clear();
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                push_space(&mut cur);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i = (i + 2).min(b.len());
                push_space(&mut cur);
            }
            b'\'' | b'"' | b'`' | b'[' => {
                let close = if c == b'[' { b']' } else { c };
                let start = i;
                i += 1;
                while i < b.len() {
                    if b[i] == close {
                        if close != b']' && b.get(i + 1) == Some(&close) {
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    i += 1;
                }
                cur.push_str(&sql[start..i.min(b.len())]);
            }
            c if c.is_ascii_whitespace() => {
                push_space(&mut cur);
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let word = &sql[start..i];
                if body {
                    body = !(after_semicolon && word.eq_ignore_ascii_case("END"));
                } else if word.eq_ignore_ascii_case("BEGIN") && is_trigger(&cur) {
                    body = true;
                }
                after_semicolon = false;
                cur.push_str(word);
            }
            _ => {
                after_semicolon = false;
                let ch = sql[i..].chars().next().expect("in bounds");
                cur.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    let s = cur.trim().to_string();
    if !s.is_empty() {
        out.push(s);
    }
    out
}

/// Whether the statement so far is a `CREATE [TEMP] TRIGGER`.
fn is_trigger(stmt: &str) -> bool {
    let mut words = stmt.split_whitespace().map(str::to_ascii_uppercase);
    if words.next().as_deref() != Some("CREATE") {
        return false;
    }
    match words.next().as_deref() {
        Some("TRIGGER") => true,
        Some("TEMP") | Some("TEMPORARY") => words.next().as_deref() == Some("TRIGGER"),
        _ => false,
    }
}

/// The words of a statement from [`statements`] outside parentheses and
/// quoted text, upper-cased: its keywords and names at the top level.
fn top_level_words(stmt: &str) -> Vec<String> {
    let b = stmt.as_bytes();
    let (mut words, mut depth, mut i) = (Vec::new(), 0usize, 0);
    while i < b.len() {
        match b[i] {
            b'(' => {
                depth += 1;
                i += 1;
            }
            b')' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            c @ (b'\'' | b'"' | b'`' | b'[') => {
                let close = if c == b'[' { b']' } else { c };
                i += 1;
                while i < b.len() {
                    if b[i] == close {
                        if close != b']' && b.get(i + 1) == Some(&close) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$')
                {
                    i += 1;
                }
                // `replace(..)`, the function, is no `REPLACE` statement
                // (`REPLACE INTO`).
                let call = stmt[start..i].eq_ignore_ascii_case("REPLACE")
                    && stmt[i..].trim_start().starts_with('(');
                if depth == 0 && !call {
                    words.push(stmt[start..i].to_ascii_uppercase());
                }
            }
            c if c.is_ascii_digit() => {
                // A number (`1e5`, `0x1F`) is no word.
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    words
}

/// Whether every statement of `sql` only reads, decided by its first
/// keyword: `SELECT`, `VALUES`, `EXPLAIN`, or a `WITH` whose statement (the
/// top-level keyword after its common table expressions) is not `INSERT`,
/// `REPLACE`, `UPDATE` or `DELETE`. Anything else (`CREATE TABLE .. AS
/// SELECT`, `ANALYZE`, `REINDEX`, `PRAGMA`, an unknown word) is not a read.
/// A name such as `updated_at` is one word, never taken for `UPDATE`.
pub(crate) fn is_read(sql: &str) -> bool {
    let stmts = statements(sql);
    !stmts.is_empty()
        && stmts.iter().all(|stmt| {
            let words = top_level_words(stmt);
            match words.first().map(String::as_str) {
                Some("SELECT" | "VALUES" | "EXPLAIN") => true,
                Some("WITH") => !words
                    .iter()
                    .any(|w| matches!(w.as_str(), "INSERT" | "REPLACE" | "UPDATE" | "DELETE")),
                _ => false,
            }
        })
}

/// Whether a statement of `sql` is `PRAGMA [schema.]foreign_keys = OFF`
/// (or `0`, `FALSE`, `NO`; also `(OFF)`).
pub(crate) fn turns_foreign_keys_off(sql: &str) -> bool {
    crate::sqltext::contains_any_ignore_case(sql, &["FOREIGN_KEYS"])
        && statements(sql).iter().any(|stmt| {
            let words: Vec<String> = stmt
                .split(|c: char| c.is_whitespace() || matches!(c, '=' | '(' | ')' | '.'))
                .filter(|w| !w.is_empty())
                .map(|w| {
                    w.trim_matches(|c| c == '\'' || c == '"')
                        .to_ascii_uppercase()
                })
                .collect();
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            match words.as_slice() {
                ["PRAGMA", "FOREIGN_KEYS", value] | ["PRAGMA", _, "FOREIGN_KEYS", value] => {
                    matches!(*value, "OFF" | "0" | "FALSE" | "NO")
                }
                _ => false,
            }
        })
}

/// The body of a `sqlite3 .dump` file, as a fixture of a transaction-mode
/// test runs it: the file is `PRAGMA foreign_keys=OFF; BEGIN TRANSACTION;
/// ... COMMIT;`, and the test's transaction has begun already (where that
/// `PRAGMA` does nothing, and `BEGIN` fails). The foreign keys are deferred
/// instead (`PRAGMA defer_foreign_keys`, which works inside a transaction),
/// so rows may come in any order, as with the keys off; then checked again
/// as the test goes on. None if `sql` is not in that shape.
pub(crate) fn dump_body(sql: &str) -> Option<String> {
    /// `sql` after `word` and what may follow it (spaces, `;`), if `sql`
    /// starts with it, in any case.
    fn after<'a>(sql: &'a str, words: &[&str]) -> Option<&'a str> {
        let mut rest = sql.trim_start();
        for word in words {
            let head = rest.get(..word.len())?;
            if !head.eq_ignore_ascii_case(word) {
                return None;
            }
            rest = rest[word.len()..].trim_start();
        }
        rest.strip_prefix(';')
    }
    let (keys_off, rest) = match after(sql, &["PRAGMA", "foreign_keys", "=", "OFF"]) {
        Some(rest) => (true, rest),
        None => (false, sql),
    };
    let body = after(rest, &["BEGIN", "TRANSACTION"])?;
    let body = body.trim_end();
    let body = body.strip_suffix(';').unwrap_or(body).trim_end();
    let commit = body.len().checked_sub("COMMIT".len())?;
    if !body.get(commit..)?.eq_ignore_ascii_case("COMMIT")
        || body[..commit]
            .trim_end()
            .chars()
            .last()
            .is_some_and(|c| c != ';')
    {
        return None;
    }
    let body = &body[..commit];
    Some(if keys_off {
        format!("PRAGMA defer_foreign_keys = ON;\n{body}\nPRAGMA defer_foreign_keys = OFF;")
    } else {
        body.to_string()
    })
}

/// Why a SQLite test in transaction mode must not run `sql`, if it must not.
/// Whether one of the statements of `sql` is DDL (`CREATE`, `ALTER`, `DROP`).
pub(crate) fn has_ddl(sql: &str) -> bool {
    if !crate::sqltext::contains_any_ignore_case(sql, &["CREATE", "ALTER", "DROP"]) {
        return false;
    }
    statements(sql).iter().any(|stmt| {
        let first = stmt
            .split(|c: char| !c.is_ascii_alphabetic())
            .find(|w| !w.is_empty())
            .unwrap_or("");
        ["CREATE", "ALTER", "DROP"]
            .iter()
            .any(|k| first.eq_ignore_ascii_case(k))
    })
}

pub(crate) fn refuse(sql: &str) -> Option<String> {
    // Most statements mention none of these words: no need to read them.
    if !crate::sqltext::contains_any_ignore_case(
        sql,
        &[
            "COMMIT", "END", "ROLLBACK", "BEGIN", "RELEASE", "VACUUM", "ATTACH", "DETACH",
        ],
    ) {
        return None;
    }
    for stmt in statements(sql) {
        let upper = stmt.to_ascii_uppercase();
        let words: Vec<&str> = upper
            .split(|c: char| c.is_whitespace() || c == '(')
            .filter(|w| !w.is_empty())
            .collect();
        let Some(first) = words.first() else {
            continue;
        };
        let rest = &words[1..];
        let after_transaction = rest.strip_prefix(&["TRANSACTION"]).unwrap_or(rest);
        let why = match *first {
            "COMMIT" | "END" => Some(ENDS),
            "ROLLBACK" if after_transaction.first() != Some(&"TO") => Some(ENDS),
            "ROLLBACK" | "RELEASE" if names_ours(after_transaction) => Some(OURS),
            "BEGIN" => Some(BEGINS),
            "VACUUM" | "ATTACH" | "DETACH" => Some(OUTSIDE),
            _ => None,
        };
        if let Some(why) = why {
            return Some(format!("`{stmt}` {why}"));
        }
    }
    None
}

/// Follows the savepoints `sql` opens and releases (see
/// `Dialect::track_savepoints`): `SAVEPOINT name` opens one; `RELEASE
/// [SAVEPOINT] name` releases the innermost one of that name and every one
/// opened after it. Names compare in any case, quotes taken off.
pub(crate) fn track_savepoints(sql: &str, open: &mut Vec<String>) {
    // The rest of the statement after `keyword` (and a space), if it starts
    // with it.
    fn after<'a>(stmt: &'a str, keyword: &str) -> Option<&'a str> {
        let head = stmt.get(..keyword.len())?;
        let rest = &stmt[keyword.len()..];
        (head.eq_ignore_ascii_case(keyword) && rest.starts_with(' ')).then(|| rest.trim())
    }
    // A name as SQLite compares it: unquoted, in any case.
    fn name(text: &str) -> String {
        let quoted = text.len() >= 2
            && matches!(
                (text.as_bytes()[0], text.as_bytes()[text.len() - 1]),
                (b'"', b'"') | (b'`', b'`') | (b'[', b']') | (b'\'', b'\'')
            );
        let inner = if quoted {
            &text[1..text.len() - 1]
        } else {
            text
        };
        inner.to_ascii_uppercase()
    }
    for stmt in statements(sql) {
        if let Some(rest) = after(&stmt, "SAVEPOINT") {
            open.push(name(rest));
        } else if let Some(rest) = after(&stmt, "RELEASE") {
            let rest = after(rest, "SAVEPOINT").unwrap_or(rest);
            let released = name(rest);
            if let Some(i) = open.iter().rposition(|n| *n == released) {
                open.truncate(i);
            }
        }
    }
}

/// Whether `ROLLBACK TO`/`RELEASE` names a savepoint of db-test or sqlx.
fn names_ours(words: &[&str]) -> bool {
    words.iter().any(|w| {
        let w = w.trim_matches(|c| matches!(c, '"' | '`' | '[' | ']' | '\''));
        w == "DB_TEST_AUTO" || w.starts_with("_SQLX_SAVEPOINT")
    })
}

const ENDS: &str = "would end the test's transaction and commit or discard the test's data. \
     Use `db.begin()` and `tx.commit()` / `tx.rollback()` instead (they become savepoints \
     under test), or `isolation = \"database\"` for a test that must really commit.";
const OURS: &str = "names a savepoint that db-test or sqlx manages in the test's transaction \
     (`db_test_auto`, `_sqlx_savepoint_N`). Use `db.begin()` and `tx.commit()` / \
     `tx.rollback()`, or savepoints of your own.";
const BEGINS: &str = "would start a transaction, but the test already runs in one (SQLite \
     cannot nest them). Use `db.begin()` (a savepoint under test), or `isolation = \
     \"database\"` for a test that must control its transactions.";
const OUTSIDE: &str = "cannot run inside a transaction, and each test in transaction mode \
     runs in one. Use `isolation = \"database\"` for this test.";

#[cfg(test)]
mod tests {
    #[test]
    fn a_read_is_told_by_its_first_keyword() {
        use super::is_read;
        assert!(is_read(
            "SELECT count(*) FROM parent p WHERE p.updated_at IS NULL"
        ));
        assert!(is_read("select \"update\" from t; VALUES (1)"));
        assert!(is_read(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"
        ));
        assert!(is_read("-- INSERT\nEXPLAIN QUERY PLAN DELETE FROM t"));
        assert!(!is_read("WITH d AS (SELECT 1) DELETE FROM t WHERE id IN d"));
        // `replace()` is a function; `REPLACE INTO` a write.
        assert!(is_read(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
             SELECT replace(count(x), '1', '2') FROM c"
        ));
        assert!(is_read(
            "WITH a AS (SELECT 1) SELECT REPLACE ('ab', 'a', 'b')"
        ));
        assert!(!is_read(
            "WITH a AS (SELECT 1 AS x) REPLACE INTO t SELECT x FROM a"
        ));
        assert!(!is_read(
            "WITH a AS (SELECT 1 AS x) REPLACE INTO t(x) SELECT x FROM a"
        ));
        assert!(!is_read("CREATE TABLE r AS SELECT x FROM c"));
        assert!(!is_read("ANALYZE"));
        assert!(!is_read("REINDEX t"));
        assert!(!is_read("PRAGMA user_version = 3"));
        assert!(!is_read("SELECT 1; INSERT INTO t VALUES (1)"));
        assert!(!is_read("UPDATE t SET a = 1"));
        assert!(!is_read(""));
    }

    #[test]
    fn ddl_is_found_by_its_first_word_not_a_column_name() {
        assert!(super::has_ddl("ALTER TABLE t ADD COLUMN c"));
        assert!(super::has_ddl(
            "INSERT INTO t VALUES (1); create index i on t (a)"
        ));
        assert!(super::has_ddl("  DROP TABLE t"));
        assert!(!super::has_ddl(
            "INSERT INTO t (created_at, dropped) VALUES (1, 2)"
        ));
        assert!(!super::has_ddl("SELECT 'CREATE TABLE x'"));
    }

    use super::refuse;

    #[test]
    fn follows_the_tests_own_savepoints() {
        let mut open = Vec::new();
        super::track_savepoints("SAVEPOINT a; SAVEPOINT \"a b\"; savepoint [a c]", &mut open);
        assert_eq!(open, ["A", "A B", "A C"]);
        super::track_savepoints("RELEASE \"a b\"", &mut open);
        assert_eq!(open, ["A"]);
        super::track_savepoints("SAVEPOINT a; ROLLBACK TO a; RELEASE SAVEPOINT A", &mut open);
        assert_eq!(open, ["A"]);
        super::track_savepoints(
            "INSERT INTO releases VALUES (1); RELEASE nothing",
            &mut open,
        );
        assert_eq!(open, ["A"]);
        super::track_savepoints("release a", &mut open);
        assert!(open.is_empty());
    }

    #[test]
    fn refuses_what_ends_the_transaction_anywhere() {
        for sql in [
            "COMMIT",
            "commit transaction;",
            "END",
            "INSERT INTO t VALUES (1); COMMIT",
            "ROLLBACK",
            "rollback transaction",
            "SELECT 'a;b'; end transaction",
            "BEGIN IMMEDIATE",
            "begin; insert into t values (1)",
            "RELEASE db_test_auto",
            "ROLLBACK TO SAVEPOINT db_test_auto",
            "RELEASE SAVEPOINT _sqlx_savepoint_1",
            "VACUUM",
            "VACUUM INTO '/tmp/x.db'",
            "ATTACH DATABASE 'x.db' AS x",
            "SELECT 1 /* ; */; COMMIT -- done",
            // `begin`, `case` and `end` as names in a trigger's body.
            "CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1 AS begin; END; COMMIT",
            "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 3 AS begin; END; END TRANSACTION",
            "CREATE TRIGGER tr AFTER INSERT ON t WHEN NEW.begin > 0 BEGIN SELECT 1; END; COMMIT",
            "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1 AS \"end\", x AS case_; END; COMMIT",
        ] {
            assert!(refuse(sql).is_some(), "{sql:?}");
        }
    }

    #[test]
    fn leaves_everything_else_alone() {
        for sql in [
            "SELECT 1",
            "SAVEPOINT mine",
            "RELEASE mine",
            "ROLLBACK TO mine",
            "ROLLBACK TRANSACTION TO SAVEPOINT mine",
            "SELECT 'COMMIT'",
            "SELECT \"end\" FROM t",
            "SELECT [end] FROM t",
            "SELECT 1 -- ; COMMIT",
            "SELECT 1 /* ; COMMIT */",
            "INSERT INTO t (note) VALUES ('end; commit')",
            "SELECT CASE WHEN 1 THEN 2 END",
            "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE u SET n = n + 1; END",
            "CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN \
             UPDATE u SET n = CASE WHEN n > 1 THEN 0 ELSE n END; DELETE FROM v; END; SELECT 1",
            "UPDATE t SET backend = 1",
        ] {
            assert_eq!(refuse(sql), None, "{sql:?}");
        }
    }

    #[test]
    fn a_dump_files_own_transaction_is_taken_off() {
        let dump =
            "PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\nINSERT INTO t VALUES(1);\nCOMMIT;\n";
        let words =
            |sql: Option<String>| sql.map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "));
        assert_eq!(
            words(super::dump_body(dump)).as_deref(),
            Some(
                "PRAGMA defer_foreign_keys = ON; INSERT INTO t VALUES(1); \
                 PRAGMA defer_foreign_keys = OFF;"
            )
        );
        assert_eq!(
            words(super::dump_body(
                "begin transaction; INSERT INTO t VALUES(1); commit"
            ))
            .as_deref(),
            Some("INSERT INTO t VALUES(1);")
        );
        assert_eq!(
            words(super::dump_body("BEGIN TRANSACTION; COMMIT;")).as_deref(),
            Some("")
        );
        // Not a dump: left as it is (and refused, if it must be).
        assert_eq!(super::dump_body("INSERT INTO t VALUES(1); COMMIT;"), None);
        assert_eq!(
            super::dump_body("BEGIN TRANSACTION; INSERT INTO t VALUES(1)"),
            None
        );
        assert_eq!(
            super::dump_body("BEGIN TRANSACTION; SELECT 'x COMMIT'"),
            None
        );
    }

    #[test]
    fn foreign_keys_turned_off_is_told() {
        for sql in [
            "PRAGMA foreign_keys = OFF",
            "pragma foreign_keys=off; INSERT INTO t VALUES (1)",
            "PRAGMA main.foreign_keys = 0",
            "PRAGMA foreign_keys(false)",
            "PRAGMA foreign_keys = 'no'",
        ] {
            assert!(super::turns_foreign_keys_off(sql), "{sql}");
        }
        for sql in [
            "PRAGMA foreign_keys = ON",
            "PRAGMA foreign_keys",
            "PRAGMA defer_foreign_keys = OFF",
            "SELECT 'PRAGMA foreign_keys = OFF'",
        ] {
            assert!(!super::turns_foreign_keys_off(sql), "{sql}");
        }
    }
}
