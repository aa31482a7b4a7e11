//! Reading SQL text just enough to find statements that would end the
//! test's transaction, wherever they sit in a multi-statement string.

/// The top-level statements of `sql`, each with comments removed and
/// whitespace collapsed; quoted text (`'..'`, `E'..'`, `".."`,
/// `$tag$..$tag$`) is kept as written, so a `;` or a keyword inside it
/// never counts.
fn statements(sql: &str) -> Vec<String> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut i = 0;
    let push_space = |cur: &mut String| {
        if !cur.is_empty() && !cur.ends_with(' ') {
            cur.push(' ');
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
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
                // Comments nest in PostgreSQL.
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                push_space(&mut cur);
            }
            b'\'' | b'"' => {
                // An `E'..'` string lets a backslash escape the quote.
                let escapes = c == b'\''
                    && i > 0
                    && matches!(b[i - 1], b'e' | b'E')
                    && (i < 2 || !b[i - 2].is_ascii_alphanumeric() && b[i - 2] != b'_');
                let start = i;
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == c {
                        // A doubled quote is a quote inside the string.
                        if b.get(i + 1) == Some(&c) {
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
            // `$` inside a name (`a$x$`, PostgreSQL allows it after the
            // first character) starts no quote.
            b'$' if i > 0 && is_name_byte(b[i - 1]) => {
                cur.push('$');
                i += 1;
            }
            b'$' => {
                // `$tag$ .. $tag$` (not `$1`, a parameter).
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|&x| !(x.is_ascii_alphanumeric() || x == b'_' || x >= 0x80))
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(e)
                        if b[e] == b'$' && !b[i + 1..e].first().is_some_and(u8::is_ascii_digit) =>
                    {
                        let tag = &sql[i..=e];
                        let body_start = e + 1;
                        let close = sql[body_start..]
                            .find(tag)
                            .map(|p| body_start + p + tag.len())
                            .unwrap_or(b.len());
                        cur.push_str(&sql[i..close]);
                        i = close;
                    }
                    _ => {
                        cur.push('$');
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_whitespace() => {
                push_space(&mut cur);
                i += 1;
            }
            _ => {
                // Keep multi-byte characters whole.
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

/// The first statement of `sql` that would end the test's transaction:
/// `COMMIT`, `END`, `ROLLBACK` or `ABORT` (with `WORK`/`TRANSACTION`, `AND
/// [NO] CHAIN`), or `PREPARE TRANSACTION`. `ROLLBACK TO SAVEPOINT` and
/// `COMMIT PREPARED` do not (the latter cannot run in a transaction anyway).
pub(crate) fn ends_transaction(sql: &str) -> Option<String> {
    // Most statements mention none of these words: no need to read them.
    if !contains_any_ignore_case(sql, &["COMMIT", "END", "ROLLBACK", "ABORT", "PREPARE"]) {
        return None;
    }
    find_statement(sql, |words| match words {
        ["PREPARE", "TRANSACTION", ..] => true,
        [first, rest @ ..] if matches!(*first, "COMMIT" | "ROLLBACK" | "END" | "ABORT") => {
            !matches!(rest.first(), Some(&"TO") | Some(&"PREPARED"))
                && rest
                    .iter()
                    .all(|w| matches!(*w, "WORK" | "TRANSACTION" | "AND" | "NO" | "CHAIN"))
        }
        _ => false,
    })
}

/// The first statement of `sql` whose upper-cased words `matches`.
fn find_statement(sql: &str, matches: impl Fn(&[&str]) -> bool) -> Option<String> {
    statements(sql).into_iter().find(|stmt| {
        let upper = stmt.to_ascii_uppercase();
        matches(&upper.split_whitespace().collect::<Vec<_>>())
    })
}

/// The statement of `sql` that releases or rolls back to a savepoint db-test
/// (`dbt_auto`) or sqlx (`_sqlx_savepoint_N`) manages in the test's
/// transaction, if any.
pub(crate) fn names_managed_savepoint(sql: &str) -> Option<String> {
    if !contains_any_ignore_case(sql, &["DBT_AUTO", "_SQLX_SAVEPOINT"]) {
        return None;
    }
    find_statement(sql, |words| {
        matches!(words.first(), Some(&"RELEASE") | Some(&"ROLLBACK"))
            && words.iter().any(|w| {
                let w = w.trim_matches(|c| matches!(c, '"' | ';'));
                w == "DBT_AUTO" || w.starts_with("_SQLX_SAVEPOINT")
            })
    })
}

/// Whether `haystack` contains any of `needles` (upper-case ASCII), in any
/// case. One pass over `haystack`, written with plain loops: it runs on
/// every statement a test sends, in the test's own (unoptimised) build,
/// where iterator adapters cost a function call per byte.
pub(crate) fn contains_any_ignore_case(haystack: &str, needles: &[&str]) -> bool {
    let h = haystack.as_bytes();
    // The bytes a needle starts with.
    let mut starts = [false; 256];
    for needle in needles {
        debug_assert!(!needle.bytes().any(|b| b.is_ascii_lowercase()));
        match needle.as_bytes().first() {
            Some(&b) => starts[b as usize] = true,
            None => return true,
        }
    }
    let mut i = 0;
    while i < h.len() {
        let c = upper(h[i]);
        if starts[c as usize] {
            let mut k = 0;
            while k < needles.len() {
                let n = needles[k].as_bytes();
                if n[0] == c && i + n.len() <= h.len() {
                    let mut j = 1;
                    while j < n.len() && upper(h[i + j]) == n[j] {
                        j += 1;
                    }
                    if j == n.len() {
                        return true;
                    }
                }
                k += 1;
            }
        }
        i += 1;
    }
    false
}

/// The settings `sql` may set for the current transaction only, lower-cased:
/// the name after `SET LOCAL` (`ROLE`, `SESSION AUTHORIZATION` and `TIME
/// ZONE` as their settings' names), and the first argument of a
/// `set_config('name', .., local)` whose `local` is not `false`. Read
/// everywhere in the text, dollar-quoted bodies (`DO $$ .. $$`, where such
/// a statement runs too) and string literals alike: a name found in a
/// literal costs a look at its value, nothing more. A name passed as a
/// parameter (`set_config($1, ..)`) is not known, and not listed.
pub(crate) fn local_setting_names(sql: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    if !contains_any_ignore_case(sql, &["LOCAL", "SET_CONFIG"]) {
        return names;
    }
    let tokens = setting_tokens(sql);
    let word = |i: usize| match tokens.get(i) {
        Some(SettingToken::Word(w)) => Some(*w),
        _ => None,
    };
    let is = |i: usize, w: &str| word(i).is_some_and(|x| x.eq_ignore_ascii_case(w));
    for i in 0..tokens.len() {
        let name = if is(i, "SET") && is(i + 1, "LOCAL") {
            match word(i + 2) {
                Some(w) if w.eq_ignore_ascii_case("ROLE") => Some("role".to_string()),
                Some(w) if w.eq_ignore_ascii_case("SESSION") && is(i + 3, "AUTHORIZATION") => {
                    Some("session_authorization".to_string())
                }
                Some(w) if w.eq_ignore_ascii_case("TIME") && is(i + 3, "ZONE") => {
                    Some("timezone".to_string())
                }
                Some(w) => Some(w.to_ascii_lowercase()),
                // A quoted name: `SET LOCAL "request.jwt.claims" = ..`.
                None => match tokens.get(i + 2) {
                    Some(SettingToken::Str(name)) => Some(name.to_ascii_lowercase()),
                    _ => None,
                },
            }
        } else if word(i).is_some_and(|w| {
            let w = w.to_ascii_lowercase();
            w == "set_config" || w == "pg_catalog.set_config"
        }) && matches!(tokens.get(i + 1), Some(SettingToken::Punct(b'(')))
        {
            local_set_config(&tokens[i + 2..])
        } else {
            None
        };
        if let Some(name) = name
            && !names.contains(&name)
        {
            names.push(name);
        }
    }
    names
}

/// The name a `set_config(` call sets for the transaction only, from the
/// tokens after its `(`: its first argument if that is a string literal,
/// unless the third is `false`.
fn local_set_config(tokens: &[SettingToken<'_>]) -> Option<String> {
    let mut args: Vec<&[SettingToken<'_>]> = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, t) in tokens.iter().enumerate() {
        match t {
            SettingToken::Punct(b'(') => depth += 1,
            SettingToken::Punct(b')') if depth == 0 => {
                args.push(&tokens[start..i]);
                break;
            }
            SettingToken::Punct(b')') => depth -= 1,
            SettingToken::Punct(b',') if depth == 0 => {
                args.push(&tokens[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    let session = match args.get(2).and_then(|a| a.first()) {
        Some(SettingToken::Word(w)) => w.eq_ignore_ascii_case("false"),
        Some(SettingToken::Str(s)) => {
            matches!(
                s.to_ascii_lowercase().as_str(),
                "f" | "false" | "off" | "no" | "n" | "0"
            )
        }
        _ => false,
    };
    match args.first().and_then(|a| a.first()) {
        Some(SettingToken::Str(name)) if !session => Some(name.to_ascii_lowercase()),
        _ => None,
    }
}

/// A piece of SQL text, as [`local_setting_names`] reads it.
enum SettingToken<'a> {
    /// A name or keyword (dots included: `app.user_id`), or a parameter.
    Word(&'a str),
    /// A string literal's text (`'..'`, doubled quotes made one; a
    /// `"quoted"` name is read as one too).
    Str(String),
    Punct(u8),
}

/// `sql` as words, literals and punctuation, comments left out.
fn setting_tokens(sql: &str) -> Vec<SettingToken<'_>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let end = sql[i + 2..].find("*/").map_or(b.len(), |p| i + 2 + p + 2);
            i = end;
        } else if c == b'\'' || c == b'"' {
            let mut text = Vec::new();
            i += 1;
            while i < b.len() {
                if b[i] == c {
                    if b.get(i + 1) == Some(&c) {
                        text.push(c);
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                text.push(b[i]);
                i += 1;
            }
            out.push(SettingToken::Str(
                String::from_utf8_lossy(&text).into_owned(),
            ));
        } else if is_name_byte(c) {
            let start = i;
            while i < b.len() && (is_name_byte(b[i]) || b[i] == b'.') {
                i += 1;
            }
            out.push(SettingToken::Word(&sql[start..i]));
        } else {
            if !c.is_ascii_whitespace() {
                out.push(SettingToken::Punct(c));
            }
            i += 1;
        }
    }
    out
}

/// A byte of an unquoted name: a letter, a digit, `_`, `$`, or part of a
/// non-ASCII character.
fn is_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

#[inline(always)]
fn upper(c: u8) -> u8 {
    // One comparison (no call in an unoptimised build): `a..=z`.
    if c.wrapping_sub(b'a') < 26 { c - 32 } else { c }
}

/// Whether a statement is a plain read: it starts with `SELECT` (or
/// `VALUES`, `SHOW`, `TABLE`) and locks and changes nothing that db-test
/// can see (`FOR UPDATE`/`SHARE`, `INTO`, a call of anything but a built-in that
/// writes nothing: sequence functions, `set_config`, advisory locks). Such a
/// statement leaves db-test's savepoint marking the same state, so the next
/// statement needs no new one.
pub(crate) fn is_plain_read(sql: &str) -> bool {
    let head = sql.trim_start();
    let starts = |w: &str| {
        head.len() >= w.len() && head.as_bytes()[..w.len()].eq_ignore_ascii_case(w.as_bytes())
    };
    (starts("SELECT") || starts("VALUES") || starts("SHOW") || starts("TABLE"))
        && !contains_any_ignore_case(head, &[";"])
        && !contains_any_word_ignore_case(head, &["FOR", "INTO"])
        && calls_only_known_functions(head)
}

/// Words that may stand before a `(` in a plain read: SQL keywords, types,
/// and built-in functions that write nothing. Anything else before a `(`
/// may be a function of the app's that writes (`SELECT add_user($1)`),
/// whose rows production commits with the statement.
const READ_ONLY_CALLS: &[&str] = &[
    // Keywords.
    "ALL",
    "AND",
    "ANY",
    "ARRAY",
    "AS",
    "BETWEEN",
    "BY",
    "CASE",
    "CAST",
    "CUBE",
    "DISTINCT",
    "ELSE",
    "EXCEPT",
    "EXISTS",
    "FILTER",
    "FROM",
    "GROUP",
    "HAVING",
    "ILIKE",
    "IN",
    "INTERSECT",
    "IS",
    "JOIN",
    "LATERAL",
    "LIKE",
    "LIMIT",
    "NOT",
    "OFFSET",
    "ON",
    "OR",
    "ORDER",
    "OVER",
    "PARTITION",
    "ROLLUP",
    "ROW",
    "SELECT",
    "SETS",
    "SOME",
    "THEN",
    "UNION",
    "USING",
    "VALUES",
    "WHEN",
    "WHERE",
    "WITHIN",
    // Types.
    "BIT",
    "CHAR",
    "CHARACTER",
    "DECIMAL",
    "FLOAT",
    "INTERVAL",
    "NUMERIC",
    "TIME",
    "TIMESTAMP",
    "TIMESTAMPTZ",
    "VARCHAR",
    // Aggregates and window functions.
    "ARRAY_AGG",
    "AVG",
    "BOOL_AND",
    "BOOL_OR",
    "COUNT",
    "DENSE_RANK",
    "EVERY",
    "FIRST_VALUE",
    "JSONB_AGG",
    "JSONB_OBJECT_AGG",
    "JSON_AGG",
    "JSON_OBJECT_AGG",
    "LAG",
    "LAST_VALUE",
    "LEAD",
    "MAX",
    "MIN",
    "NTILE",
    "PERCENTILE_CONT",
    "PERCENTILE_DISC",
    "RANK",
    "ROW_NUMBER",
    "STRING_AGG",
    "SUM",
    // Scalar functions.
    "ABS",
    "AGE",
    "ARRAY_APPEND",
    "ARRAY_CAT",
    "ARRAY_LENGTH",
    "ARRAY_POSITION",
    "ARRAY_REMOVE",
    "ARRAY_TO_STRING",
    "BTRIM",
    "CARDINALITY",
    "CEIL",
    "CEILING",
    "CHAR_LENGTH",
    "CLOCK_TIMESTAMP",
    "COALESCE",
    "CONCAT",
    "CONCAT_WS",
    "CURRENT_SETTING",
    "DATE",
    "DATE_PART",
    "DATE_TRUNC",
    "DECODE",
    "ENCODE",
    "EXTRACT",
    "FLOOR",
    "FORMAT",
    "GENERATE_SERIES",
    "GEN_RANDOM_UUID",
    "GREATEST",
    "INITCAP",
    "JSONB_ARRAY_ELEMENTS",
    "JSONB_ARRAY_ELEMENTS_TEXT",
    "JSONB_ARRAY_LENGTH",
    "JSONB_BUILD_ARRAY",
    "JSONB_BUILD_OBJECT",
    "JSONB_EACH",
    "JSONB_EXTRACT_PATH",
    "JSONB_EXTRACT_PATH_TEXT",
    "JSONB_SET",
    "JSONB_TYPEOF",
    "JSON_BUILD_ARRAY",
    "JSON_BUILD_OBJECT",
    "LEAST",
    "LEFT",
    "LENGTH",
    "LOWER",
    "LPAD",
    "LTRIM",
    "MAKE_INTERVAL",
    "MD5",
    "MOD",
    "NOW",
    "NULLIF",
    "OCTET_LENGTH",
    "PG_SLEEP",
    "PG_TYPEOF",
    "POSITION",
    "POWER",
    "RANDOM",
    "REGEXP_MATCH",
    "REGEXP_MATCHES",
    "REGEXP_REPLACE",
    "REPEAT",
    "REPLACE",
    "REVERSE",
    "RIGHT",
    "ROUND",
    "ROW_TO_JSON",
    "RPAD",
    "RTRIM",
    "SPLIT_PART",
    "SQRT",
    "STARTS_WITH",
    "STRING_TO_ARRAY",
    "SUBSTR",
    "SUBSTRING",
    "TO_CHAR",
    "TO_DATE",
    "TO_JSON",
    "TO_JSONB",
    "TO_NUMBER",
    "TO_TIMESTAMP",
    "TO_TSQUERY",
    "TO_TSVECTOR",
    "TRIM",
    "TRUNC",
    "TS_RANK",
    "UNNEST",
    "UPPER",
    "PLAINTO_TSQUERY",
    "WEBSEARCH_TO_TSQUERY",
];

/// Whether every call in `sql` (see [`for_each_call`]) is of a built-in of
/// [`READ_ONLY_CALLS`], unqualified or in `pg_catalog`.
pub(crate) fn calls_only_known_functions(sql: &str) -> bool {
    let mut known = true;
    for_each_call(sql, |name, quoted, schema| {
        let builtin = READ_ONLY_CALLS.iter().any(|k| {
            if quoted {
                k.as_bytes().eq_ignore_ascii_case(name) && !name.iter().any(u8::is_ascii_uppercase)
            } else {
                k.as_bytes().eq_ignore_ascii_case(name)
            }
        });
        let catalog = schema.is_none_or(|s| s.eq_ignore_ascii_case(b"pg_catalog"));
        known = builtin && catalog;
        known
    });
    known
}

/// The names of the functions `sql` calls, as the server folds them
/// (unquoted ones lower-cased), but for the built-ins of [`READ_ONLY_CALLS`].
pub(crate) fn called_functions(sql: &str) -> Vec<String> {
    let mut names = Vec::new();
    for_each_call(sql, |name, quoted, _| {
        let name = String::from_utf8_lossy(name);
        let name = if quoted {
            name.into_owned()
        } else {
            name.to_ascii_lowercase()
        };
        if quoted
            || !READ_ONLY_CALLS
                .iter()
                .any(|k| k.eq_ignore_ascii_case(&name))
        {
            names.push(name);
        }
        true
    });
    names
}

/// Calls `f(name, quoted, schema)` for each name (a word, or a `"quoted"`
/// one, possibly `schema.`-qualified) followed by a `(`, with only
/// whitespace or comments between, until `f` returns `false`. A table's
/// name before its column list (`INSERT INTO t (..)`) counts too; string
/// literals do not.
fn for_each_call(sql: &str, mut f: impl FnMut(&[u8], bool, Option<&[u8]>) -> bool) {
    if !sql.contains('(') {
        return;
    }
    let b = sql.as_bytes();
    // The name just read (start, end, quoted), if nothing but whitespace or
    // comments came after it; and the qualifier before it.
    let mut last: Option<(usize, usize, bool)> = None;
    let mut qualifier: Option<(usize, usize)> = None;
    let mut pending_qualifier: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i = sql[i + 2..].find("*/").map_or(b.len(), |p| i + 2 + p + 2);
        } else if c == b'\'' {
            i += 1;
            while i < b.len() {
                if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
            last = None;
            pending_qualifier = None;
        } else if c == b'"' {
            let start = i + 1;
            i += 1;
            while i < b.len() && !(b[i] == b'"' && b.get(i + 1) != Some(&b'"')) {
                i += if b[i] == b'"' { 2 } else { 1 };
            }
            last = Some((start, i.min(b.len()), true));
            qualifier = pending_qualifier.take();
            i += 1;
        } else if is_name_byte(c) {
            let start = i;
            while i < b.len() && is_name_byte(b[i]) {
                i += 1;
            }
            last = Some((start, i, false));
            qualifier = pending_qualifier.take();
        } else if c == b'.' {
            pending_qualifier = last.take().map(|(s, e, _)| (s, e));
            i += 1;
        } else {
            if c == b'('
                && let Some((s, e, quoted)) = last
                && !f(&b[s..e], quoted, qualifier.map(|(qs, qe)| &b[qs..qe]))
            {
                return;
            }
            last = None;
            pending_qualifier = None;
            i += 1;
        }
    }
}

/// Whether `sql` may create a table with `SELECT .. INTO`: the word `INTO`
/// after anything but `INSERT` or `MERGE`. (DDL without a DDL keyword: its
/// temporary table can shadow a table a cached statement reads.)
pub(crate) fn may_select_into(sql: &str) -> bool {
    if !contains_any_ignore_case(sql, &["INTO"]) {
        return false;
    }
    let h = sql.as_bytes();
    let mut previous: &[u8] = &[];
    let mut i = 0;
    while i < h.len() {
        if is_name_byte(h[i]) {
            let start = i;
            while i < h.len() && is_name_byte(h[i]) {
                i += 1;
            }
            let word = &h[start..i];
            if word.eq_ignore_ascii_case(b"INTO")
                && !previous.eq_ignore_ascii_case(b"INSERT")
                && !previous.eq_ignore_ascii_case(b"MERGE")
            {
                return true;
            }
            previous = word;
        } else {
            i += 1;
        }
    }
    false
}

/// Whether `haystack` contains any of `needles` (upper-case ASCII) as a
/// whole word, in any case: not next to a letter, digit, `_` or `$`
/// (whitespace of any kind, a comment or a quote may border it).
pub(crate) fn contains_any_word_ignore_case(haystack: &str, needles: &[&str]) -> bool {
    let h = haystack.as_bytes();
    let mut i = 0;
    while i < h.len() {
        // Only at the start of a word.
        if is_name_byte(h[i]) && (i == 0 || !is_name_byte(h[i - 1])) {
            let mut end = i;
            while end < h.len() && is_name_byte(h[end]) {
                end += 1;
            }
            let mut k = 0;
            while k < needles.len() {
                let n = needles[k].as_bytes();
                if n.len() == end - i {
                    let mut j = 0;
                    while j < n.len() && upper(h[i + j]) == n[j] {
                        j += 1;
                    }
                    if j == n.len() {
                        return true;
                    }
                }
                k += 1;
            }
            i = end;
        } else {
            i += 1;
        }
    }
    false
}

#[cfg(test)]
mod contains_tests {
    use super::contains_any_ignore_case as c;

    #[test]
    fn finds_any_needle_in_any_case_anywhere() {
        assert!(c("select nextval('s')", &["VAL("]));
        assert!(c("DROP TABLE t", &["CREATE", "DROP"]));
        assert!(c("x; commit", &["COMMIT"]));
        assert!(c("CoMmIt", &["COMMIT"]));
        // Needles that share a first byte, the second one matching.
        assert!(c("do $$ begin end $$", &["DO ", "DISCARD"]));
        assert!(c("discard all", &["DO ", "DISCARD"]));
        assert!(c("é; DROP", &["DROP"]));
        assert!(c("anything", &[""]));
    }

    #[test]
    fn misses_what_is_not_there() {
        assert!(!c("SELECT 1", &["COMMIT", "END"]));
        assert!(!c("COMMI", &["COMMIT"]));
        assert!(!c("", &["X"]));
        assert!(!c("ÉND", &["END"]));
        assert!(!c("anything", &[]));
    }
}

#[cfg(test)]
mod managed_savepoint_tests {
    use super::names_managed_savepoint as n;

    #[test]
    fn releasing_db_tests_or_sqlxs_savepoint_is_found() {
        assert!(n("RELEASE SAVEPOINT dbt_auto").is_some());
        assert!(n("release \"dbt_auto\"").is_some());
        assert!(n("SELECT 1; ROLLBACK TO SAVEPOINT _sqlx_savepoint_2").is_some());
        assert!(n("RELEASE SAVEPOINT mine").is_none());
        assert!(n("SELECT 'RELEASE dbt_auto'").is_none());
    }
}

/// `sql`, trimmed, cut after `max` characters (with how much was left
/// out): for messages, which must name a statement, not print a whole
/// fixture file.
pub(crate) fn excerpt(sql: &str, max: usize) -> std::borrow::Cow<'_, str> {
    let sql = sql.trim();
    match sql.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(sql),
        Some((cut, _)) => std::borrow::Cow::Owned(format!(
            "{} … ({} more bytes)",
            sql[..cut].trim_end(),
            sql.len() - cut
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::ends_transaction as ends;
    use super::local_setting_names;

    #[test]
    fn finds_a_commit_anywhere_at_the_top_level() {
        for sql in [
            "COMMIT",
            "commit;",
            " END WORK ",
            "INSERT INTO t VALUES (1); COMMIT",
            "ROLLBACK AND CHAIN; INSERT INTO t VALUES (1); COMMIT",
            "SELECT 1; /* a comment; */ commit -- done",
            "select 'a;b'; abort transaction",
            "COMMIT AND NO CHAIN",
            "PREPARE TRANSACTION 'x'",
            "SELECT $$;$$; END",
            "SELECT E'it\\'s; fine'; COMMIT",
        ] {
            assert!(ends(sql).is_some(), "{sql:?}");
        }
    }

    #[test]
    fn local_settings_are_named() {
        assert_eq!(
            local_setting_names("SET LOCAL app.user_id = '7'"),
            ["app.user_id"]
        );
        assert_eq!(
            local_setting_names("set local App.Tenant to 3; SELECT 1"),
            ["app.tenant"]
        );
        assert_eq!(
            local_setting_names("SET LOCAL search_path=x"),
            ["search_path"]
        );
        assert_eq!(local_setting_names("SET LOCAL ROLE app"), ["role"]);
        assert_eq!(
            local_setting_names("SET LOCAL \"request.jwt.claims\" TO '{}'"),
            ["request.jwt.claims"]
        );
        assert_eq!(
            local_setting_names("SET LOCAL SESSION AUTHORIZATION x; SET LOCAL TIME ZONE 'UTC'"),
            ["session_authorization", "timezone"]
        );
        assert_eq!(
            local_setting_names("SELECT set_config('app.user_id', $1, true)"),
            ["app.user_id"]
        );
        assert_eq!(
            local_setting_names("select pg_catalog.SET_CONFIG('A.b', format('%s', $1), $2)"),
            ["a.b"]
        );
        assert_eq!(
            local_setting_names("DO $$ BEGIN PERFORM set_config('app.x', '1', true); END $$"),
            ["app.x"]
        );
        // Session-wide, or a name not in the text.
        assert!(local_setting_names("SELECT set_config('app.x', '1', false)").is_empty());
        assert!(local_setting_names("SELECT set_config('app.x', '1', 'off')").is_empty());
        assert!(local_setting_names("SELECT set_config($1, $2, true)").is_empty());
        assert!(local_setting_names("SET search_path = x").is_empty());
        assert!(local_setting_names("SELECT localtimestamp -- SET LOCAL x\n").is_empty());
    }

    #[test]
    fn plain_reads() {
        use super::is_plain_read as r;
        assert!(r("SELECT count(*) FROM users"));
        assert!(r("  select email, name from users where id = $1"));
        assert!(!r("SELECT id FROM users FOR UPDATE"));
        assert!(!r("SELECT nextval('s')"));
        assert!(!r("SELECT * INTO t2 FROM t"));
        assert!(!r("SELECT pg_advisory_lock(1)"));
        assert!(!r("SELECT 1; DELETE FROM users"));
        assert!(!r("INSERT INTO users (email) VALUES ('a')"));
        assert!(!r("WITH d AS (DELETE FROM t RETURNING 1) SELECT * FROM d"));
        // Any whitespace around the words.
        assert!(!r("SELECT 1 AS x INTO\nTEMP t"));
        assert!(!r("SELECT id FROM users\n\tFOR\tUPDATE"));
        assert!(!r("SELECT 1 INTO/**/t"));
        assert!(r("SELECT fortune, into_x FROM t"));
        // Calls: built-ins read, an app's function may write.
        assert!(r(
            "SELECT count (*), lower(email), pg_catalog.upper(name) FROM users \
             WHERE id IN ($1, $2) AND EXISTS(SELECT 1) AND x = ANY($3)"
        ));
        assert!(r("SELECT (SELECT max(id) FROM t)::numeric(10, 2)"));
        assert!(!r("SELECT add_user($1)"));
        assert!(!r("SELECT * FROM app.create_order($1, $2)"));
        assert!(!r("SELECT id FROM users WHERE touch(id)"));
        // Quoted, commented, or an allow-listed name in another schema.
        assert!(!r("SELECT \"add_user\"('a')"));
        assert!(!r("SELECT public.\"add_user\"('a')"));
        assert!(!r("SELECT add_user/**/('a')"));
        assert!(!r("SELECT count(*) FROM t WHERE log_it -- x\n ('w')"));
        assert!(!r("SELECT app.lower('X')"));
        assert!(r(
            "SELECT pg_catalog.lower('X'), \"lower\"('y'), 'f(' FROM t"
        ));
        assert!(!r("SELECT \"Lower\"('y')"));
    }

    #[test]
    fn calls_are_named() {
        use super::called_functions as c;
        assert_eq!(c("SELECT app_set_user($1), lower(x)"), ["app_set_user"]);
        assert_eq!(c("SELECT app.\"Set_User\" /* c */ (1)"), ["Set_User"]);
        assert_eq!(c("INSERT INTO users (email) VALUES ('a(')"), ["users"]);
        assert!(c("SELECT 1").is_empty());
    }

    #[test]
    fn select_into_is_told_from_insert_into() {
        use super::may_select_into as m;
        assert!(m("SELECT 1 AS only_col INTO TEMP users"));
        assert!(m("select *\ninto t2 from t"));
        assert!(m("WITH a AS (SELECT 1) SELECT * INTO t FROM a"));
        assert!(!m("INSERT INTO users (email) VALUES ('a')"));
        assert!(!m(
            "merge into t USING s ON true WHEN MATCHED THEN DO NOTHING"
        ));
        assert!(!m("SELECT into_x FROM t"));
    }

    #[test]
    fn a_dollar_in_a_name_starts_no_quote() {
        assert!(ends("SELECT 1 AS a$x$; COMMIT; SELECT 2 AS b$x$").is_some());
        assert!(ends("SELECT 1 AS é$x$; COMMIT; SELECT 2 AS b$x$").is_some());
        assert!(ends("SELECT a_1$x$; COMMIT; SELECT $x$").is_some());
        // A quote after other punctuation is still a quote.
        assert_eq!(ends("SELECT ($x$; COMMIT; $x$)"), None);
        assert_eq!(ends("SELECT 1,$x$; COMMIT; $x$"), None);
    }

    #[test]
    fn leaves_everything_else_alone() {
        for sql in [
            "SELECT 1",
            "ROLLBACK TO SAVEPOINT a",
            "rollback to a",
            "COMMIT PREPARED 'x'",
            "DO $$ BEGIN PERFORM 1; END $$",
            "DO $body$ BEGIN COMMIT; END $body$",
            "SELECT 'COMMIT'",
            "SELECT '; COMMIT'",
            "SELECT \"end\" FROM t",
            "SELECT 1 -- ; COMMIT",
            "SELECT 1 /* ; COMMIT /* nested */ ; COMMIT */",
            "UPDATE t SET x = $1; SELECT $2",
            "SELECT E'\\'; COMMIT; --'",
            "INSERT INTO t (note) VALUES ('end')",
            "SELECT 'é'; SELECT 'ü'",
        ] {
            assert_eq!(ends(sql), None, "{sql:?}");
        }
    }

    #[test]
    fn an_excerpt_cuts_long_text_and_says_how_much() {
        assert_eq!(super::excerpt("  SELECT 1  ", 20), "SELECT 1");
        let long = format!("INSERT INTO t VALUES {}", "(1),".repeat(100));
        let cut = super::excerpt(&long, 30);
        assert!(cut.starts_with("INSERT INTO t VALUES (1),(1)"), "{cut}");
        assert!(
            cut.ends_with(&format!("({} more bytes)", long.len() - 30)),
            "{cut}"
        );
        assert_eq!(super::excerpt("ééé", 2), "éé … (2 more bytes)");
    }
}
