//! The implicit-commit trap: MySQL and MariaDB commit the current
//! transaction before (and after) DDL and a few other statements. In a test's
//! rolled-back transaction such a statement would commit the test's writes
//! into the shared working database, so db-test refuses it before it reaches
//! the server.
//!
//! [`implicit_commit`] reads a (possibly multi-statement) SQL string the way
//! the server splits it: string literals (`'..'`, `".."`, with backslash
//! escapes and doubled quotes), backtick identifiers, comments (`# ..`,
//! `-- ..`, `/* .. */`) are skipped, while the text of MySQL's executable
//! comments (`/*! .. */`, `/*!50700 .. */`, MariaDB's `/*M! .. */`) is read
//! as code, since the server runs it; a server skips a versioned one (a
//! version above its own, `/*M!` on MySQL), so a text with one is read a
//! second time with those as plain comments. Each statement is then classified by
//! its first words. A string holding a backslash is read twice, with and
//! without backslash escapes (`NO_BACKSLASH_ESCAPES` in the session's
//! `sql_mode` changes where it ends), and a third time with `".."` as an
//! identifier, in which a backslash escapes nothing (`ANSI_QUOTES`) if it
//! also holds a `"`; it is refused if any reading is. A client character
//! set in which a backslash can be the second byte of a character (`big5`,
//! `cp932`, `gbk`, `gb18030`, `sjis`) moves where strings end in yet
//! another way: a `SET` that names one of them is refused.
//!
//! Refused (they commit): `CREATE`/`ALTER`/`DROP`/`RENAME`/`TRUNCATE` of
//! anything (tables, databases, indexes, views, routines, triggers, events,
//! users, ...) except `CREATE [OR REPLACE] TEMPORARY TABLE` and `DROP
//! TEMPORARY TABLE`; `LOCK`/`UNLOCK`; `START ..` (`TRANSACTION`, replicas);
//! `BEGIN`; `COMMIT`; `ROLLBACK` (not `ROLLBACK [WORK] TO`); MariaDB's
//! compound statements outside stored programs (`BEGIN NOT ATOMIC`, `IF`,
//! `CASE`, `WHILE`, `LOOP`, `REPEAT`, `FOR`, a labelled block), whose
//! bodies are not read; any `SET` of `autocommit` (backticks or not); `SET
//! STATEMENT .. FOR` of a refused statement; `SET PASSWORD`, `SET DEFAULT
//! ROLE`; `GRANT`/`REVOKE`; `LOAD DATA`/`LOAD XML`/`LOAD INDEX`; `ANALYZE`,
//! `OPTIMIZE`, `REPAIR`, `CHECK TABLE`; `FLUSH`, `RESET`, `XA`, `CACHE
//! INDEX`, `STOP`, `CHANGE MASTER`/`CHANGE REPLICATION`,
//! `INSTALL`/`UNINSTALL`; `PREPARE .. FROM '..'` and `EXECUTE IMMEDIATE
//! '..'` of such a statement (adjacent literals joined, `'COM' 'MIT'`, and
//! escapes decoded, `'\nCOMMIT'`, as the server does), and
//! `PREPARE`/`EXECUTE IMMEDIATE` of a variable or any other expression
//! (`CONCAT(..)`, `_latin1'..'`: its text cannot be checked).
//!
//! Not detected here: a stored procedure that commits (`CALL`): its body
//! is on the server. A `CALL` is followed by a check of the test's
//! transaction instead ([`calls_procedure`]).

use std::cell::RefCell;
use std::rc::Rc;

/// One token: only what classification needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A keyword or unquoted identifier, upper-cased.
    Word(String),
    /// A string literal's contents.
    Str(String),
    /// A backtick-quoted identifier, upper-cased: never a keyword, but
    /// `SET \`autocommit\` = 0` names the variable.
    Ident(String),
    /// A user variable (`@name`); `@@` system variables are words.
    Var,
    /// `;`
    End,
    /// Any other character.
    Punct(char),
}

/// How the server may read quoted text, depending on the session's
/// `sql_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// A backslash escapes the next character in `'..'` and `".."` strings
    /// (the default).
    Escapes,
    /// A backslash is an ordinary character (`NO_BACKSLASH_ESCAPES`).
    NoEscapes,
    /// `".."` is an identifier, in which a backslash is an ordinary
    /// character; it escapes in `'..'` strings (`ANSI_QUOTES`).
    AnsiQuotes,
}

/// The text of the quoted string, identifier or name starting at `start`
/// (its opening quote), and where it ends: a doubled quote stands for one,
/// and a backslash escapes the next byte where `reading` says so (never in
/// a backtick-quoted identifier).
fn quoted(bytes: &[u8], start: usize, reading: Reading) -> (String, usize) {
    let quote = bytes[start];
    let escapes = match reading {
        Reading::Escapes => quote != b'`',
        Reading::NoEscapes => false,
        Reading::AnsiQuotes => quote == b'\'',
    };
    let mut text = Vec::new();
    let mut i = start + 1;
    while i < bytes.len() {
        let b = bytes[i];
        if escapes && b == b'\\' && i + 1 < bytes.len() {
            // As the server decodes them: `'\nCOMMIT'` is a line break
            // before a word, not the word `nCOMMIT`.
            match bytes[i + 1] {
                b'0' => text.push(0),
                b'b' => text.push(0x08),
                b'n' => text.push(b'\n'),
                b'r' => text.push(b'\r'),
                b't' => text.push(b'\t'),
                b'Z' => text.push(0x1a),
                // Kept with their backslash (patterns of `LIKE`).
                b'%' | b'_' => text.extend_from_slice(&bytes[i..i + 2]),
                other => text.push(other),
            }
            i += 2;
        } else if b == quote {
            if bytes.get(i + 1) == Some(&quote) {
                text.push(quote);
                i += 2;
            } else {
                i += 1;
                break;
            }
        } else {
            text.push(b);
            i += 1;
        }
    }
    (String::from_utf8_lossy(&text).into_owned(), i)
}

/// `sql`'s tokens. Each statement is classified three times in a row
/// (refused? session state? a `CALL`?), on one thread: the last string's
/// tokens are kept per thread and per reading, not lexed again.
/// `skip_versioned`: see [`lex`].
fn tokens(sql: &str, reading: Reading, skip_versioned: bool) -> Rc<Vec<Token>> {
    type Last = RefCell<[Option<(String, Rc<Vec<Token>>)>; 6]>;
    thread_local! {
        static LAST: Last = const { RefCell::new([None, None, None, None, None, None]) };
    }
    // Not kept: a long script (a fixture) is classified once.
    const KEPT_UP_TO: usize = 16 * 1024;
    LAST.with(|last| {
        let slot = reading as usize + 3 * usize::from(skip_versioned);
        if let Some((kept, tokens)) = &last.borrow()[slot]
            && kept == sql
        {
            return tokens.clone();
        }
        let tokens = Rc::new(lex(sql, reading, skip_versioned));
        last.borrow_mut()[slot] =
            (sql.len() <= KEPT_UP_TO).then(|| (sql.to_owned(), tokens.clone()));
        tokens
    })
}

/// Splits `sql` into tokens, reading executable comments as code and
/// quoted text as `reading` says. With `skip_versioned`, the executable
/// comments that a server may skip are read as plain comments: those with
/// a version (`/*!50700 .. */`: skipped by a server older than it; MariaDB
/// skips `/*!99999 .. */`), and MariaDB's `/*M! .. */` (a plain comment to
/// MySQL). Which way the server reads one decides where the strings and
/// comments after it start (`/*!99999 ' */ COMMIT; ...`), so such a text is
/// read both ways (see [`has_versioned_comment`]).
fn lex(sql: &str, reading: Reading, skip_versioned: bool) -> Vec<Token> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    // Inside `/*! .. */`: its closing `*/` ends it.
    let mut in_exec_comment = false;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c' => i += 1,
            b'*' if in_exec_comment && bytes.get(i + 1) == Some(&b'/') => {
                in_exec_comment = false;
                i += 2;
            }
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-')
                && bytes
                    .get(i + 2)
                    .is_none_or(|b| b.is_ascii_whitespace() || b.is_ascii_control()) =>
            {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let exec = match bytes.get(i + 2) {
                    Some(b'!') => Some(i + 3),
                    Some(b'M') if bytes.get(i + 3) == Some(&b'!') => Some(i + 4),
                    _ => None,
                };
                // Skipped as a plain comment, in the reading where the
                // server skips it.
                let exec = exec.filter(|&j| {
                    !(skip_versioned
                        && (bytes[i + 2] == b'M' || bytes.get(j).is_some_and(u8::is_ascii_digit)))
                });
                match exec {
                    Some(mut j) if !in_exec_comment => {
                        // An optional version number: `/*!50700 ...`.
                        while j < bytes.len() && bytes[j].is_ascii_digit() {
                            j += 1;
                        }
                        in_exec_comment = true;
                        i = j;
                    }
                    _ => {
                        // A plain comment (or an optimizer hint `/*+ */`).
                        i += 2;
                        while i < bytes.len()
                            && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/'))
                        {
                            i += 1;
                        }
                        i = (i + 2).min(bytes.len());
                    }
                }
            }
            b'\'' | b'"' | b'`' => {
                let quote = c;
                let text;
                (text, i) = quoted(bytes, i, reading);
                out.push(
                    if quote == b'`' || (quote == b'"' && reading == Reading::AnsiQuotes) {
                        Token::Ident(text.to_ascii_uppercase())
                    } else {
                        Token::Str(text)
                    },
                );
            }
            b';' => {
                out.push(Token::End);
                i += 1;
            }
            b'@' if bytes.get(i + 1) == Some(&b'@') => {
                // `@@autocommit`, `@@session.autocommit`: the words follow.
                i += 2;
            }
            b'@' => {
                i += 1;
                if matches!(bytes.get(i), Some(b'\'' | b'"' | b'`')) {
                    // `@'quoted name'`, read as the server reads a string
                    // (`@'a\'b'` is one name).
                    (_, i) = quoted(bytes, i, reading);
                } else {
                    while i < bytes.len() && is_word_byte(bytes[i]) {
                        i += 1;
                    }
                }
                out.push(Token::Var);
            }
            _ if is_word_byte(c) => {
                let start = i;
                while i < bytes.len() && is_word_byte(bytes[i]) {
                    i += 1;
                }
                out.push(Token::Word(sql[start..i].to_ascii_uppercase()));
            }
            _ => {
                // A whole UTF-8 character.
                let ch = sql[i..].chars().next().unwrap_or('?');
                out.push(Token::Punct(ch));
                i += ch.len_utf8();
            }
        }
    }
    out
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Whether `sql` has an executable comment a server may skip (see [`lex`]):
/// `/*!` followed by a version, or `/*M!`. Such a text is read both ways.
fn has_versioned_comment(sql: &str) -> bool {
    sql.contains("/*M!")
        || sql
            .match_indices("/*!")
            .any(|(at, _)| sql.as_bytes().get(at + 3).is_some_and(u8::is_ascii_digit))
}

/// How to read `sql`'s strings: with backslash escapes, and also without
/// when it holds a backslash (`NO_BACKSLASH_ESCAPES` in the session's
/// `sql_mode` moves where such a string ends), and with `".."` as an
/// identifier when it also holds a `"` (`ANSI_QUOTES`).
fn readings(sql: &str) -> &'static [Reading] {
    use Reading::*;
    if !sql.contains('\\') {
        &[Escapes]
    } else if sql.contains('"') {
        &[Escapes, NoEscapes, AnsiQuotes]
    } else {
        &[Escapes, NoEscapes]
    }
}

/// The statement of `sql` that would commit the current transaction, as
/// its first words (`CREATE TABLE`, `COMMIT`, ...), or `None`. A string
/// with a backslash is read both ways, with and without backslash escapes:
/// the session's `sql_mode` decides which one the server uses.
pub(crate) fn implicit_commit(sql: &str) -> Option<String> {
    facts(sql).commits
}

/// The `sql_mode`s of the test connections this process opened:
/// [`MODE_PLAIN`] once one was read with neither `NO_BACKSLASH_ESCAPES` nor
/// `ANSI_QUOTES`/`ANSI`; [`MODE_EVERY_WAY`] once one had either, or could
/// not be read. Bits are only ever set.
static SESSION_MODES: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
const MODE_PLAIN: u8 = 1;
const MODE_EVERY_WAY: u8 = 2;

/// Notes the `sql_mode` a test connection had when it was opened (`None`:
/// it could not be read).
pub(crate) fn note_session_mode(sql_mode: Option<&str>) {
    let plain = sql_mode.is_some_and(|mode| {
        let mode = mode.to_ascii_uppercase();
        !mode.contains("NO_BACKSLASH_ESCAPES") && !mode.contains("ANSI")
    });
    let bit = if plain { MODE_PLAIN } else { MODE_EVERY_WAY };
    SESSION_MODES.fetch_or(bit, std::sync::atomic::Ordering::AcqRel);
}

/// [`implicit_commit`] in a test's session: read with backslash escapes
/// alone when every test connection this process opened had a `sql_mode`
/// without `NO_BACKSLASH_ESCAPES` and `ANSI_QUOTES`, and the session may not
/// have changed it since (`cautious`: the test sent a `SET`, `PREPARE`,
/// `EXECUTE`, `CALL`, ... (see [`leaves_session_state`]), this text does,
/// or the connection went out of db-test's sight); else read every way.
/// So `'Don\'t panic; start ...'` is not read as a `START` statement where
/// the server cannot read it so.
pub(crate) fn session_commit(sql: &str, cautious: bool) -> Option<String> {
    let facts = facts(sql);
    let modes = SESSION_MODES.load(std::sync::atomic::Ordering::Acquire);
    if cautious || modes != MODE_PLAIN {
        facts.commits
    } else {
        facts.commits_plain
    }
}

/// What the checks of one statement's text found: every statement a test
/// sends is read once for all of them.
#[derive(Clone)]
struct Facts {
    /// [`implicit_commit`].
    commits: Option<String>,
    /// The same, read with backslash escapes only: what the server does in
    /// a session whose `sql_mode` is known to have neither
    /// `NO_BACKSLASH_ESCAPES` nor `ANSI_QUOTES` (see [`session_commit`]).
    commits_plain: Option<String>,
    /// [`leaves_session_state`].
    leaves_state: bool,
    /// [`calls_procedure`].
    calls: bool,
    /// [`GENERATION`] when read: a table or function noted since may change
    /// the first two.
    generation: u64,
}

/// Bumped whenever [`note`] learns a name.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The facts of the texts read so far. Tests send the same few texts again
/// and again, and reading one costs tens of microseconds in a debug build.
static MEMO: std::sync::Mutex<Option<Memo>> = std::sync::Mutex::new(None);

type Memo = std::collections::HashMap<Box<str>, Facts, std::hash::BuildHasherDefault<TextHasher>>;

/// A hash of a statement's text: 8 bytes a step. SipHash, the default, is
/// built without optimisation in a test build and would cost the memo most
/// of what it saves; nothing here needs its resistance to chosen keys.
#[derive(Default)]
struct TextHasher(u64);

impl std::hash::Hasher for TextHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut h = self.0 ^ bytes.len() as u64;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            h = (h ^ word).wrapping_mul(K).rotate_left(29);
        }
        for &byte in chunks.remainder() {
            h = (h ^ u64::from(byte)).wrapping_mul(K);
        }
        self.0 = h;
    }
}

/// Texts longer than this (fixtures, scripts) are read every time.
const MEMO_TEXT: usize = 4096;
/// At most this many texts are remembered; then the memo starts over.
const MEMO_ENTRIES: usize = 4096;

fn facts(sql: &str) -> Facts {
    use std::sync::atomic::Ordering;
    let generation = GENERATION.load(Ordering::Acquire);
    let memo = || MEMO.lock().unwrap_or_else(|e| e.into_inner());
    if sql.len() <= MEMO_TEXT
        && let Some(found) = memo().as_ref().and_then(|m| m.get(sql))
        && found.generation == generation
    {
        return found.clone();
    }
    let found = read(sql, generation);
    if sql.len() <= MEMO_TEXT {
        let mut memo = memo();
        let map = memo.get_or_insert_with(Default::default);
        if map.len() >= MEMO_ENTRIES {
            map.clear();
        }
        map.insert(sql.into(), found.clone());
    }
    found
}

/// Reads `sql` once in each of its [`readings`], and each of those both
/// ways if it has a versioned comment ([`has_versioned_comment`]).
fn read(sql: &str, generation: u64) -> Facts {
    let mut facts = Facts {
        commits: None,
        commits_plain: None,
        leaves_state: false,
        calls: crate::sqltext::contains_any_word_ignore_case(sql, &["CALL"]),
        generation,
    };
    let skips: &[bool] = if has_versioned_comment(sql) {
        &[false, true]
    } else {
        &[false]
    };
    for &skip_versioned in skips {
        for &reading in readings(sql) {
            read_one(sql, reading, skip_versioned, &mut facts);
        }
    }
    facts
}

/// One reading of [`read`].
fn read_one(sql: &str, reading: Reading, skip_versioned: bool, facts: &mut Facts) {
    let tokens = tokens(sql, reading, skip_versioned);
    let commits = tokens
        .split(|t| *t == Token::End)
        .find_map(|s| statement_commits(s).or_else(|| writes_non_transactional(s)));
    if let Some(commits) = commits {
        // The readings with backslash escapes are what a session whose
        // `sql_mode` is known to be plain can do (see `session_commit`).
        if reading == Reading::Escapes && facts.commits_plain.is_none() {
            facts.commits_plain = Some(commits.clone());
        }
        if facts.commits.is_none() {
            facts.commits = Some(commits);
        }
    }
    facts.leaves_state = facts.leaves_state || leaves_session_state_in(&tokens);
    facts.calls = facts.calls
        || tokens
            .split(|t| *t == Token::End)
            .any(|s| matches!(word(s.first()), "CALL" | "EXECUTE"));
}

/// The tables of the working databases this process uses whose engine
/// cannot roll back (MyISAM, MEMORY, ...), upper-cased.
static NON_TRANSACTIONAL: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Notes the tables of a working database whose engine cannot roll back,
/// and the views through which a write reaches one (see
/// [`writes_non_transactional`]).
pub(crate) fn note_non_transactional_tables(names: Vec<String>) {
    note(&NON_TRANSACTIONAL, names);
}

/// The stored routines of the working databases this process uses that may
/// write a table whose engine cannot roll back, upper-cased.
static NON_TRANSACTIONAL_ROUTINES: std::sync::RwLock<Vec<String>> =
    std::sync::RwLock::new(Vec::new());

/// Notes the procedures and functions of a working database that may write
/// a table whose engine cannot roll back (see [`writes_non_transactional`]).
pub(crate) fn note_non_transactional_routines(names: Vec<String>) {
    note(&NON_TRANSACTIONAL_ROUTINES, names);
}

fn note(list: &std::sync::RwLock<Vec<String>>, names: Vec<String>) {
    let mut known = list.write().unwrap_or_else(|e| e.into_inner());
    for name in names {
        let name = name.to_ascii_uppercase();
        if !known.contains(&name) {
            known.push(name);
            // Texts read before may read differently now.
            GENERATION.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

/// An `INSERT`, `REPLACE`, `UPDATE`, `DELETE` or `LOAD DATA` whose target
/// is a table that cannot roll back (or a view of one), or any statement
/// that names a stored routine that may write one (`CALL p()`, `SELECT
/// f()`): what it writes would stay in the shared working database. (Names
/// where a target can stand are checked: a column or a table read in a
/// subquery of the same name errs on the side of refusing.)
fn writes_non_transactional(s: &[Token]) -> Option<String> {
    let routines = NON_TRANSACTIONAL_ROUTINES
        .read()
        .unwrap_or_else(|e| e.into_inner());
    if !routines.is_empty()
        && let Some(name) = s.iter().find_map(|t| match t {
            Token::Word(w) | Token::Ident(w) if routines.contains(w) => Some(w),
            _ => None,
        })
    {
        return Some(format!(
            "a call of `{}` (a stored routine that writes a table whose engine cannot roll back)",
            name.to_ascii_lowercase()
        ));
    }
    drop(routines);
    let first = word(s.first());
    if !matches!(first, "INSERT" | "REPLACE" | "UPDATE" | "DELETE" | "LOAD") {
        return None;
    }
    let tables = NON_TRANSACTIONAL.read().unwrap_or_else(|e| e.into_inner());
    if tables.is_empty() {
        return None;
    }
    // Where the targets end: the values or columns of an INSERT, the SET of
    // an UPDATE, the WHERE of a DELETE. An UPDATE's targets may be in
    // parentheses (`UPDATE (t) SET ..`); a `LOAD DATA` is read whole.
    let end = s
        .iter()
        .position(|t| {
            first != "LOAD"
                && (matches!(t, Token::Punct('(')) && first != "DELETE" && first != "UPDATE"
                    || matches!(t, Token::Word(w) if matches!(w.as_str(),
                    "VALUES" | "VALUE" | "SET" | "SELECT" | "WHERE" | "ORDER" | "LIMIT" | "ON")))
        })
        .unwrap_or(s.len());
    s[1..end.max(1)].iter().find_map(|t| match t {
        Token::Word(w) | Token::Ident(w) if tables.contains(w) => Some(format!(
            "{first} into `{}` (a table whose engine cannot roll back, or a view of \
             one)",
            w.to_ascii_lowercase()
        )),
        _ => None,
    })
}

fn word(t: Option<&Token>) -> &str {
    match t {
        Some(Token::Word(w)) => w,
        _ => "",
    }
}

/// The first words of a statement, for the message.
fn head(statement: &[Token], n: usize) -> String {
    statement
        .iter()
        .take_while(|t| matches!(t, Token::Word(_)))
        .take(n)
        .map(|t| word(Some(t)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn statement_commits(s: &[Token]) -> Option<String> {
    let w = |i: usize| word(s.get(i));
    let found = |n: usize| Some(head(s, n));
    match w(0) {
        "CREATE" => {
            let mut i = 1;
            if w(i) == "OR" && w(i + 1) == "REPLACE" {
                i += 2;
            }
            // Only a temporary *table* does not commit (MariaDB's
            // `CREATE TEMPORARY SEQUENCE` does).
            if w(i) == "TEMPORARY" && w(i + 1) == "TABLE" {
                return None;
            }
            found(i + 1)
        }
        "DROP" => {
            if w(1) == "TEMPORARY" && w(2) == "TABLE" {
                return None;
            }
            found(2)
        }
        // MariaDB's `BACKUP LOCK`/`BACKUP STAGE`: they commit, and leave the
        // session holding a lock that fails the next test on it.
        "BACKUP" => found(2),
        "ALTER" | "RENAME" | "TRUNCATE" | "GRANT" | "REVOKE" | "FLUSH" | "RESET" | "XA"
        | "INSTALL" | "UNINSTALL" | "LOCK" | "UNLOCK" | "START" | "STOP" | "COMMIT" | "ANALYZE"
        | "OPTIMIZE" | "REPAIR" => found(2),
        // MariaDB runs compound statements outside stored programs; their
        // bodies (a COMMIT, DDL) are not read here: refused whole.
        "BEGIN" if w(1) == "NOT" && w(2) == "ATOMIC" => {
            Some("BEGIN NOT ATOMIC (a compound statement)".to_string())
        }
        "IF" | "CASE" | "WHILE" | "LOOP" | "REPEAT" | "FOR" | "DECLARE" => {
            Some(format!("{} (a compound statement)", w(0)))
        }
        // A labelled compound statement: `label: BEGIN ..`.
        _ if s.get(1) == Some(&Token::Punct(':')) && !w(0).is_empty() => {
            Some(format!("{}: (a labelled compound statement)", w(0)))
        }
        "BEGIN" => found(2),
        "ROLLBACK" => {
            let next = if w(1) == "WORK" { w(2) } else { w(1) };
            if next != "TO" {
                found(2)
            } else {
                names_ours(s).then(|| format!("ROLLBACK TO {OURS}"))
            }
        }
        "RELEASE" => names_ours(s).then(|| format!("RELEASE {OURS}")),
        // Setting one of db-test's own would move it (MySQL deletes a
        // savepoint of the same name first).
        "SAVEPOINT" => s
            .iter()
            .any(names_db_test)
            .then(|| format!("SAVEPOINT {OURS}")),
        "CHECK" if matches!(w(1), "TABLE" | "TABLES") => found(2),
        "CACHE" if w(1) == "INDEX" => found(2),
        "CHANGE" if matches!(w(1), "MASTER" | "REPLICATION") => found(2),
        "LOAD" if matches!(w(1), "DATA" | "XML" | "INDEX") => found(2),
        "SET" => {
            if matches!(w(1), "PASSWORD") || (w(1) == "DEFAULT" && w(2) == "ROLE") {
                return found(3);
            }
            if let Some(set) = sets_unreadable_charset(s) {
                return Some(set);
            }
            let autocommit = |t: &Token| match t {
                Token::Word(w) | Token::Ident(w) => w == "AUTOCOMMIT",
                _ => false,
            };
            if w(1) == "STATEMENT" {
                // MariaDB's `SET STATEMENT var = value, .. FOR statement`:
                // the statement after the first FOR is what runs.
                let settings_end = s
                    .iter()
                    .position(|t| *t == Token::Word("FOR".into()))
                    .unwrap_or(s.len());
                if s[..settings_end].iter().any(autocommit) {
                    return Some("SET STATEMENT autocommit".to_string());
                }
                return s
                    .get(settings_end + 1..)
                    .and_then(statement_commits)
                    .map(|f| format!("SET STATEMENT .. FOR {f}"));
            }
            s.iter()
                .any(autocommit)
                .then(|| "SET autocommit".to_string())
        }
        "PREPARE" => {
            // PREPARE name FROM 'text' | @var
            match literal_text(s.get(3..).unwrap_or_default()) {
                Some(text) => implicit_commit(&text).map(|f| format!("PREPARE .. FROM '{f} ..'")),
                None => Some("PREPARE .. FROM a variable or an expression".to_string()),
            }
        }
        "EXECUTE" if w(1) == "IMMEDIATE" => match literal_text(s.get(2..).unwrap_or_default()) {
            Some(text) => implicit_commit(&text).map(|f| format!("EXECUTE IMMEDIATE '{f} ..'")),
            None => Some("EXECUTE IMMEDIATE of a variable or an expression".to_string()),
        },
        _ => None,
    }
}

/// The text of the string literals that start `tokens`, joined as the
/// server joins adjacent literals (`'COM' 'MIT'` is `COMMIT`); `None` if
/// the text is an expression whose value is not known here: a variable,
/// `CONCAT(..)`, an introducer (`_latin1'..'`, `X'..'`), or literals that
/// `||` joins (`PIPES_AS_CONCAT`). Whatever else follows the literals
/// (`USING ..`, or words that make the statement a syntax error in a
/// reading of the string that the server does not use) leaves the text as
/// it is.
fn literal_text(tokens: &[Token]) -> Option<String> {
    let mut text = String::new();
    let mut n = 0;
    while let Some(Token::Str(part)) = tokens.get(n) {
        text.push_str(part);
        n += 1;
    }
    let joined_further = matches!(tokens.get(n), Some(Token::Punct('|')));
    (n > 0 && !joined_further).then_some(text)
}

/// A `SET` that names a client character set in which a backslash can be
/// the second byte of a character (`SET NAMES gbk`, `SET CHARACTER SET
/// sjis`, `SET character_set_client = 'big5'`, or a user variable set to
/// one, for a later `SET character_set_client = @v`): the server would
/// then end strings where this reader does not, and could run DDL it did
/// not see. (A variable's value is not known here: restoring a saved
/// character set, as a `mysqldump` file does, stays possible.)
fn sets_unreadable_charset(s: &[Token]) -> Option<String> {
    const UNREADABLE: [&str; 5] = ["BIG5", "CP932", "GBK", "GB18030", "SJIS"];
    s.iter()
        .find_map(|t| match t {
            Token::Word(w) | Token::Ident(w) => UNREADABLE.contains(&w.as_str()).then(|| w.clone()),
            Token::Str(text) => {
                let up = text.to_ascii_uppercase();
                UNREADABLE.contains(&up.as_str()).then_some(up)
            }
            _ => None,
        })
        .map(|charset| format!("SET .. {charset} (a client character set)"))
}

/// Names a savepoint of db-test's or sqlx's, in a refused statement.
const OURS: &str =
    "of a savepoint db-test or sqlx manages (`db_test_auto`, `db_test_probe`, `_sqlx_savepoint_N`)";

/// Whether a `ROLLBACK TO`/`RELEASE` statement names a savepoint db-test or
/// sqlx manages in the test's transaction.
fn names_ours(s: &[Token]) -> bool {
    s.iter().any(|t| {
        names_db_test(t)
            || matches!(t, Token::Word(w) | Token::Ident(w) if w.starts_with("_SQLX_SAVEPOINT"))
    })
}

/// A savepoint of db-test's own: `db_test_auto`, and `db_test_probe`, with
/// which db-test checks that the test's transaction is open.
fn names_db_test(t: &Token) -> bool {
    matches!(t, Token::Word(w) | Token::Ident(w) if w == "DB_TEST_AUTO" || w == "DB_TEST_PROBE")
}

/// Whether `sql` may call a stored procedure, whose body may commit where
/// db-test cannot read it: a `CALL`, an `EXECUTE` (of a statement prepared
/// from any text, `IMMEDIATE` or not), or the word `CALL` anywhere, even in
/// a string (`SET STATEMENT .. FOR CALL`, `PREPARE s FROM 'CALL p()'`).
pub(crate) fn calls_procedure(sql: &str) -> bool {
    facts(sql).calls
}

/// Whether `sql` may leave state in the session that `ROLLBACK` does not
/// undo: a temporary table (`CREATE`, which in transaction mode can only be
/// `CREATE TEMPORARY`), a user variable (`@name` anywhere), a named lock
/// (`GET_LOCK`), a prepared statement (`PREPARE`), a `HANDLER`, a session
/// setting (`SET`), or any of these in a procedure (`CALL`), in text run
/// by `EXECUTE`, or in a stored function of the working database (its name
/// anywhere in `sql`), or a write naming a table with a trigger (or a
/// view) where some trigger may leave such state. Errs on the safe side:
/// such a test's connection is closed at its end rather than handed to the
/// next test.
pub(crate) fn leaves_session_state(sql: &str) -> bool {
    facts(sql).leaves_state
}

/// The stored functions of the working databases this process uses,
/// upper-cased: a function can set user variables or take a `GET_LOCK`,
/// and its call reads like a built-in's.
static STORED_FUNCTIONS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Notes the stored functions of a working database (see
/// [`leaves_session_state`]).
pub(crate) fn note_stored_functions(names: Vec<String>) {
    note(&STORED_FUNCTIONS, names);
}

/// The tables of the working databases this process uses that have a
/// trigger setting a user variable (`SET @last_id = NEW.id`), upper-cased.
static SESSION_TRIGGERS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// The tables of those working databases that have any trigger, and their
/// views, upper-cased: with a table of [`SESSION_TRIGGERS`], a write that
/// names one of these may set a user variable (a trigger may write
/// another table whose trigger sets one; a write through a view fires its
/// table's triggers).
static TRIGGERED_TABLES: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Notes the tables with a trigger that sets a user variable, and the
/// tables with any trigger and the views (see [`leaves_session_state`]):
/// with any of the first, a write that names one of the second may leave
/// a variable set.
pub(crate) fn note_session_triggers(setting: Vec<String>, triggered: Vec<String>) {
    note(&TRIGGERED_TABLES, triggered);
    note(&SESSION_TRIGGERS, setting);
}

fn leaves_session_state_in(tokens: &[Token]) -> bool {
    let functions = STORED_FUNCTIONS.read().unwrap_or_else(|e| e.into_inner());
    let calls_function = |t: &Token| match t {
        Token::Word(w) | Token::Ident(w) => !functions.is_empty() && functions.contains(w),
        _ => false,
    };
    let triggers = !SESSION_TRIGGERS
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .is_empty();
    let triggered = TRIGGERED_TABLES.read().unwrap_or_else(|e| e.into_inner());
    let names_triggered = |s: &[Token]| {
        s.iter().any(|t| match t {
            Token::Word(w) | Token::Ident(w) => triggered.contains(w),
            _ => false,
        })
    };
    tokens.split(|t| *t == Token::End).any(|s| {
        let first = word(s.first());
        // `USE` changes the session's database; `SET`, `PREPARE`, ... its
        // variables and statements; a write, with a trigger that sets a
        // user variable, that variable.
        matches!(
            first,
            "CREATE" | "SET" | "PREPARE" | "HANDLER" | "CALL" | "EXECUTE" | "USE"
        ) || (triggers
            && matches!(first, "INSERT" | "REPLACE" | "UPDATE" | "DELETE" | "LOAD")
            && names_triggered(s))
            || s.iter().any(|t| match t {
                Token::Var => true,
                // A sequence's next value is the session's `PREVIOUS VALUE FOR`.
                Token::Word(w) if w == "GET_LOCK" || w == "NEXTVAL" || w == "SETVAL" => true,
                _ => calls_function(t),
            })
            || s.windows(2)
                .any(|w| word(w.first()) == "NEXT" && word(w.get(1)) == "VALUE")
    })
}

/// The error for a refused statement.
pub(crate) fn refusal(found: &str) -> String {
    if found.contains(OURS) {
        return format!(
            "db-test: `{found}` is refused in a transaction-mode test: db-test and sqlx keep \
             their savepoints in the test's transaction, and the end of the test checks them. \
             Use `db.begin()` and `tx.commit()` / `tx.rollback()`, or savepoints of your own."
        );
    }
    if found.contains("whose engine cannot roll back") {
        return format!(
            "db-test: `{found}` is refused in a transaction-mode test on MySQL/MariaDB: the \
             table's engine (MyISAM, MEMORY, ...) ignores the test's transaction, so the rows \
             would stay in the shared working database for every later test. Use \
             `#[db_test(isolation = \"database\")]` for a test that writes it."
        );
    }
    if found.contains("(a client character set)") {
        return format!(
            "db-test: `{found}` is refused in a transaction-mode test on MySQL/MariaDB: in that \
             character set a backslash can end a multi-byte character, so the server would split \
             the test's SQL where db-test does not, and could run DDL (which commits) that \
             db-test never saw. Use a character set such as utf8mb4, or \
             `#[db_test(isolation = \"database\")]`."
        );
    }
    if found.contains("compound statement") {
        return format!(
            "db-test: `{found}` is refused in a transaction-mode test on MySQL/MariaDB: its \
             body can commit the current transaction (a COMMIT, DDL) where db-test does not \
             read it, which would commit the test's writes into the shared working database. \
             Use `#[db_test(isolation = \"database\")]` for a test that runs compound \
             statements."
        );
    }
    format!(
        "db-test: `{found}` commits the current transaction implicitly on MySQL/MariaDB: in \
         this test's rolled-back transaction it would commit the test's writes into the \
         shared working database, so db-test refused it before it reached the server. Use \
         `#[db_test(isolation = \"database\")]` for a test that runs DDL or transaction \
         control (`CREATE TEMPORARY TABLE` is fine in transaction mode)."
    )
}

#[cfg(test)]
mod tests {
    use super::implicit_commit as ic;

    #[test]
    fn a_text_read_before_a_table_was_noted_is_read_again() {
        use super::{
            implicit_commit, leaves_session_state, note_non_transactional_tables,
            note_stored_functions,
        };
        let sql = "INSERT INTO memo_noted_later (id) VALUES (1)";
        assert_eq!(implicit_commit(sql), None);
        assert!(!leaves_session_state("SELECT memo_fn_noted_later(1)"));
        note_non_transactional_tables(vec!["memo_noted_later".into()]);
        note_stored_functions(vec!["memo_fn_noted_later".into()]);
        assert!(
            implicit_commit(sql).is_some(),
            "the memo kept a stale reading"
        );
        assert!(leaves_session_state("SELECT memo_fn_noted_later(1)"));
    }

    #[test]
    fn ddl_is_refused() {
        for sql in [
            "CREATE TABLE t (id int)",
            "create table if not exists t (id int)",
            "CREATE OR REPLACE VIEW v AS SELECT 1",
            "CREATE INDEX i ON t (a)",
            "CREATE UNIQUE INDEX i ON t (a)",
            "CREATE DATABASE d",
            "CREATE SCHEMA d",
            "CREATE PROCEDURE p() BEGIN SELECT 1; END",
            "CREATE DEFINER = root@localhost FUNCTION f() RETURNS INT RETURN 1",
            "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET NEW.a = 1",
            "CREATE EVENT e ON SCHEDULE EVERY 1 DAY DO SELECT 1",
            "CREATE USER u",
            "ALTER TABLE t ADD COLUMN b int",
            "DROP TABLE t",
            "DROP DATABASE d",
            "DROP INDEX i ON t",
            "RENAME TABLE a TO b",
            "TRUNCATE t",
            "TRUNCATE TABLE t",
            "LOCK TABLES t WRITE",
            "UNLOCK TABLES",
            "GRANT SELECT ON *.* TO u",
            "REVOKE SELECT ON *.* FROM u",
            "LOAD DATA INFILE 'x' INTO TABLE t",
            "LOAD INDEX INTO CACHE t",
            "ANALYZE TABLE t",
            "OPTIMIZE TABLE t",
            "REPAIR TABLE t",
            "CHECK TABLE t",
            "FLUSH PRIVILEGES",
            "XA START 'x'",
            "CACHE INDEX t IN hot",
            "INSTALL PLUGIN p SONAME 'p.so'",
            "SET PASSWORD = 'x'",
            // MariaDB: only a temporary *table* does not commit.
            "CREATE TEMPORARY SEQUENCE s",
            "CREATE OR REPLACE TEMPORARY SEQUENCE s",
            "DROP TEMPORARY SEQUENCE s",
            "BACKUP LOCK t",
            "BACKUP STAGE START",
        ] {
            assert!(ic(sql).is_some(), "not refused: {sql}");
        }
    }

    #[test]
    fn a_quoted_user_variable_name_is_read_as_the_server_reads_it() {
        // The server reads `@'a\'b'` as one name: the COMMIT is code.
        for sql in [
            "SET @'a\\'b' = 1; COMMIT; SELECT 'c'",
            "SET @\"a\\\"b\" = 1; COMMIT; SELECT \"c\"",
            "SET @'a''b' = 1; COMMIT; SELECT 'c'",
        ] {
            assert!(ic(sql).is_some(), "not refused: {sql}");
        }
        assert_eq!(ic("SET @'a''b' = 'COMMIT'"), None);
    }

    #[test]
    fn transaction_control_is_refused() {
        for sql in [
            "COMMIT",
            "commit work",
            "BEGIN",
            "begin work",
            "START TRANSACTION",
            "START TRANSACTION READ ONLY",
            "ROLLBACK",
            "ROLLBACK WORK",
            "SET autocommit = 1",
            "SET autocommit=ON",
            "SET @@autocommit = 1",
            "SET SESSION autocommit = 1",
            "set @@session.autocommit=1",
            "SET @a = 1, autocommit = 1",
            "SET `autocommit` = 0",
            "SET @@session.`autocommit` = 1",
            "SET STATEMENT max_statement_time = 100 FOR CREATE TABLE t (a INT)",
            "set statement sql_mode = '' for commit",
            "SET STATEMENT autocommit = 1 FOR INSERT INTO t VALUES (1)",
            // Compound statements (MariaDB): a COMMIT in the body.
            "BEGIN NOT ATOMIC COMMIT; END",
            "BEGIN NOT ATOMIC SELECT 1; END",
            "IF 1=1 THEN COMMIT; END IF",
            "WHILE 0 DO SELECT 1; END WHILE",
            "CASE WHEN 1 THEN COMMIT; END CASE",
            "lbl: BEGIN NOT ATOMIC COMMIT; END",
            "FOR i IN 1..2 DO COMMIT; END FOR",
            // db-test's and sqlx's own savepoints.
            "RELEASE SAVEPOINT db_test_auto",
            "ROLLBACK TO SAVEPOINT `db_test_auto`",
            "SAVEPOINT db_test_probe",
            "SAVEPOINT `DB_TEST_AUTO`",
            "rollback work to _sqlx_savepoint_2",
        ] {
            assert!(ic(sql).is_some(), "not refused: {sql}");
        }
    }

    #[test]
    fn a_string_with_a_backslash_is_read_both_ways() {
        // With NO_BACKSLASH_ESCAPES in sql_mode, 'a\' ends at its second
        // quote and the COMMIT is code: refused, whatever the session's mode.
        for sql in [
            "SELECT 'a\\'; COMMIT'",
            "INSERT INTO user (username) VALUES ('nbe\\'); COMMIT; -- ')",
        ] {
            assert!(ic(sql).is_some(), "not refused: {sql}");
        }
        // Either way, no statement to refuse.
        assert_eq!(ic("SELECT 'a\\\\', 'COMMIT'"), None);
        assert_eq!(ic("SELECT 'C:\\dir'"), None);
    }

    #[test]
    fn harmless_statements_pass() {
        for sql in [
            "SELECT 1",
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "DELETE FROM t",
            "CREATE TEMPORARY TABLE tmp (id int)",
            "create or replace temporary table tmp (id int)",
            "DROP TEMPORARY TABLE tmp",
            "DROP TEMPORARY TABLE IF EXISTS tmp",
            "SAVEPOINT s",
            "ROLLBACK TO SAVEPOINT s",
            "ROLLBACK TO s",
            "ROLLBACK WORK TO SAVEPOINT s",
            "RELEASE SAVEPOINT s",
            "SET @a = 1",
            "SET NAMES utf8mb4",
            "SET SESSION sql_mode = 'ANSI'",
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
            "SELECT 'COMMIT'",
            "SELECT \"DROP TABLE t\"",
            "SELECT `create` FROM `commit`",
            "SELECT 1; -- COMMIT",
            "SELECT 1 # ; COMMIT",
            "SELECT 1 /* ; COMMIT */",
            "SELECT 1 /*+ MAX_EXECUTION_TIME(1) */",
            "SELECT 'it''s; COMMIT'",
            "INSERT INTO t (autocommit_flag) VALUES (1)",
            "SELECT @commit",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "PREPARE s FROM 'SELECT 1'",
            "EXECUTE s",
            "",
            "   ;  ;",
            "CHECKSUM TABLE t",
            "CALL p()",
        ] {
            assert_eq!(ic(sql), None, "refused: {sql}");
        }
    }

    #[test]
    fn a_call_is_found() {
        use super::calls_procedure as calls;
        assert!(calls("CALL p()"));
        assert!(calls("SELECT 1; call p"));
        // Text that may run a CALL: checked after it too.
        assert!(calls("EXECUTE IMMEDIATE 'CALL p_commit()'"));
        assert!(calls("PREPARE s FROM 'CALL p()'"));
        assert!(calls("EXECUTE s"));
        assert!(calls("SET STATEMENT max_statement_time=100 FOR CALL p()"));
        assert!(calls("SELECT 'CALL p()'"));
        assert!(!calls("SELECT callback FROM t"));
    }

    #[test]
    fn a_versioned_comment_the_server_skips_hides_nothing() {
        // MariaDB skips `/*!99999 .. */` (a version above its own) and MySQL
        // `/*M! .. */`: then the quote or comment inside is no code, and the
        // COMMIT after it is.
        for sql in [
            "INSERT INTO t VALUES (1); /*!99999 ' */ COMMIT; /*!99999 ' */ SELECT 1",
            "INSERT INTO t VALUES (1); /*!99999 # */ COMMIT;\nSELECT 1",
            "INSERT INTO t VALUES (1); /*M!999999 -- */ COMMIT;\nSELECT 1",
            "INSERT INTO t VALUES (1); /*M! ' */ COMMIT; /*M! ' */ SELECT 1",
            "SELECT 1 /*!50700 \" */; DROP TABLE t; -- \" */",
        ] {
            assert!(ic(sql).is_some(), "not refused: {sql}");
            assert!(
                super::session_commit(sql, false).is_some(),
                "not refused in a plain session: {sql}"
            );
        }
        // And the other way round: run, the comment's code counts.
        assert!(ic("SELECT 1 /*!99999 ; COMMIT */").is_some());
        // Nothing to refuse either way.
        assert_eq!(ic("SELECT 1 /*!99999 + 1 */"), None);
        assert_eq!(ic("/*!40101 SET NAMES utf8mb4 */"), None);
        assert_eq!(ic("SELECT 1 /*M!100100 , 2 */"), None);
    }

    #[test]
    fn ansi_quotes_are_a_third_reading() {
        // With ANSI_QUOTES, "\" is an identifier holding a backslash, and
        // '\'' a string: the CREATE is code.
        assert!(ic(r#"SELECT 1 AS "\", '\''; CREATE TABLE leak (a INT); -- "#).is_some());
        assert_eq!(ic(r#"SELECT "a\"b", 'c'"#), None);
    }

    #[test]
    fn a_client_charset_that_hides_backslashes_is_refused() {
        for sql in [
            "SET NAMES gbk",
            "set names 'sjis'",
            "SET CHARACTER SET big5",
            "SET CHARSET cp932",
            "SET character_set_client = gb18030",
            "SET @@session.character_set_client = 'GBK'",
            "SET @cs = 'gbk'",
        ] {
            let found = ic(sql).unwrap_or_else(|| panic!("not refused: {sql}"));
            assert!(super::refusal(&found).contains("character set"), "{sql}");
        }
        assert_eq!(ic("SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci"), None);
        assert_eq!(ic("SET character_set_results = NULL"), None);
        // mysqldump's save and restore.
        assert_eq!(
            ic("/*!40101 SET @saved_cs_client = @@character_set_client */"),
            None
        );
        assert_eq!(
            ic("/*!40101 SET character_set_client = @saved_cs_client */"),
            None
        );
    }

    #[test]
    fn a_commit_hidden_in_a_multi_statement_string_is_found() {
        assert_eq!(
            ic("INSERT INTO t VALUES (1); COMMIT; SELECT 1").as_deref(),
            Some("COMMIT")
        );
        assert!(ic("SELECT 'x;'; DROP TABLE t").is_some());
        assert!(ic("SELECT 1;-- comment\nCOMMIT").is_some());
        assert!(ic("SELECT 1 # comment\n; TRUNCATE t").is_some());
        assert!(ic("SELECT 1; /* x */ CREATE TABLE t (a int)").is_some());
        // `--` without a space is an operator, not a comment.
        assert!(ic("SELECT 1--1; COMMIT").is_some());
    }

    #[test]
    fn executable_comments_are_code() {
        assert!(ic("/*! COMMIT */").is_some());
        assert!(ic("SELECT 1; /*!50700 DROP TABLE t */").is_some());
        assert!(ic("/*M! CREATE TABLE t (a int) */").is_some());
        assert!(ic("/*!40101 SET @saved = @@character_set_client */").is_none());
        assert!(ic("SELECT 1 /*! , 2 */; COMMIT").is_some());
    }

    #[test]
    fn prepared_text_is_checked() {
        // Adjacent literals are one string; escapes are decoded.
        assert!(ic("EXECUTE IMMEDIATE 'COM' 'MIT'").is_some());
        assert!(ic("EXECUTE IMMEDIATE 'COM'\n/* x */ 'MIT'").is_some());
        assert!(ic("PREPARE s FROM 'COM' \"MIT\"; EXECUTE s").is_some());
        assert!(ic(r"PREPARE s FROM '\nCOMMIT'; EXECUTE s").is_some());
        assert!(ic(r"EXECUTE IMMEDIATE 'SELECT 1;\tCOMMIT'").is_some());
        assert!(ic("EXECUTE IMMEDIATE CONCAT('COM', 'MIT')").is_some());
        assert!(ic("EXECUTE IMMEDIATE _latin1'COMMIT'").is_some());
        assert!(ic("EXECUTE IMMEDIATE 'COM' || 'MIT'").is_some());
        assert!(ic("EXECUTE IMMEDIATE 'SELECT ?' USING 1").is_none());
        // A quote escaped in the text: read without escapes, the string
        // ends early and a syntax error follows, which commits nothing.
        assert!(ic(r"EXECUTE IMMEDIATE 'SELECT \'commit\''").is_none());
        assert!(ic(r"PREPARE s FROM 'SELECT \'a\_b\' LIKE ?'; EXECUTE s USING 'a_b'").is_none());
        assert!(ic("EXECUTE IMMEDIATE 'SELECT ' '1'").is_none());
        assert!(ic("PREPARE s FROM 'COMMIT'").is_some());
        assert!(ic("PREPARE s FROM 'CREATE TABLE t (a int)'").is_some());
        assert!(ic("PREPARE s FROM @sql").is_some());
        assert!(ic("EXECUTE IMMEDIATE 'DROP TABLE t'").is_some());
        assert!(ic("EXECUTE IMMEDIATE 'SELECT 1'").is_none());
    }

    #[test]
    fn a_backslash_string_is_read_as_the_session_reads_it() {
        use super::{note_session_mode, session_commit};
        let dump = r"INSERT INTO post VALUES (1,'Don\'t panic; start with the basics')";
        let smuggled = r"SELECT 'a\'; COMMIT; -- '";
        // Every way, while no connection's mode is known.
        assert!(session_commit(dump, true).is_some());
        note_session_mode(Some(
            "STRICT_TRANS_TABLES,PIPES_AS_CONCAT,NO_ENGINE_SUBSTITUTION",
        ));
        // Sessions read backslash escapes: the server reads both texts as
        // one statement each, with nothing after the string.
        assert_eq!(session_commit(dump, false), None);
        assert_eq!(session_commit(smuggled, false), None);
        // A session that may have changed its mode is read every way.
        assert!(session_commit(smuggled, true).is_some());
        assert!(session_commit(dump, true).is_some());
        // A real statement after the string is refused in any mode.
        assert!(session_commit(r"SELECT 'a\\'; COMMIT", false).is_some());
    }

    #[test]
    fn session_state_is_noticed() {
        use super::leaves_session_state as st;
        for sql in [
            "CREATE TEMPORARY TABLE t (a int)",
            "SET @a = 1",
            "SELECT @a := 1",
            "SELECT 1 INTO @a",
            "SELECT GET_LOCK('x', 0)",
            "PREPARE s FROM 'SELECT 1'",
            "SET SESSION sql_mode = ''",
            "SELECT 1; SET time_zone = '+00:00'",
            "CALL p_session()",
            "EXECUTE IMMEDIATE 'SET SESSION time_zone = ''+05:00'''",
            "EXECUTE s",
            "USE other_db",
            "SELECT NEXT VALUE FOR seq",
            "INSERT INTO t (id) VALUES (NEXTVAL(seq))",
            "SELECT SETVAL(seq, 10)",
        ] {
            assert!(st(sql), "not noticed: {sql}");
        }
        for sql in [
            "SELECT 1",
            "INSERT INTO t VALUES ('@a')",
            "UPDATE t SET a = 1",
            "SELECT `@a` FROM t",
            "DELETE FROM t -- SET @a = 1",
            "SELECT PREVIOUS VALUE FOR seq",
            "SELECT next, value FROM t",
        ] {
            assert!(!st(sql), "noticed: {sql}");
        }
    }

    #[test]
    fn a_write_to_a_table_that_cannot_roll_back_is_refused() {
        super::note_non_transactional_tables(vec!["m_lexer_cache".into()]);
        for sql in [
            "INSERT INTO m_lexer_cache VALUES (1)",
            "insert ignore into `m_lexer_cache` (a) values (1)",
            "REPLACE m_lexer_cache SET a = 1",
            "UPDATE m_lexer_cache SET a = 2",
            "DELETE FROM app.m_lexer_cache WHERE a = 1",
            "SELECT 1; DELETE FROM m_lexer_cache",
        ] {
            let found = ic(sql).unwrap_or_else(|| panic!("not refused: {sql}"));
            assert!(super::refusal(&found).contains("cannot roll back"), "{sql}");
        }
        for sql in [
            "SELECT * FROM m_lexer_cache",
            "INSERT INTO t (m_lexer_cache) VALUES (1)",
            "INSERT INTO t SELECT a FROM m_lexer_cache",
            "UPDATE t SET a = (SELECT MAX(a) FROM m_lexer_cache)",
            "DELETE FROM t WHERE a IN (SELECT a FROM m_lexer_cache)",
        ] {
            assert_eq!(ic(sql), None, "refused: {sql}");
        }
    }

    #[test]
    fn a_write_is_noticed_where_a_trigger_may_set_a_variable() {
        use super::{leaves_session_state, note_session_triggers};
        note_session_triggers(
            vec!["ledger_t".into()],
            vec![
                "ledger_t".into(),
                "feeds_ledger_t".into(),
                "ledger_v".into(),
            ],
        );
        assert!(leaves_session_state("INSERT INTO ledger_t (a) VALUES (1)"));
        assert!(leaves_session_state("UPDATE `feeds_ledger_t` SET a = 2"));
        assert!(leaves_session_state("DELETE FROM app.ledger_v WHERE a = 1"));
        assert!(!leaves_session_state("INSERT INTO quiet_t (a) VALUES (1)"));
        assert!(!leaves_session_state(
            r"INSERT INTO quiet_t VALUES ('Don\'t; start')"
        ));
    }

    #[test]
    fn a_call_of_a_stored_function_is_noticed() {
        use super::leaves_session_state as st;
        super::note_stored_functions(vec!["f_lexer_test_mark".into()]);
        assert!(st("SELECT f_lexer_test_mark()"));
        assert!(st("SELECT `F_LEXER_TEST_MARK`(1) FROM t"));
        assert!(!st("SELECT 'f_lexer_test_mark'"));
    }

    #[test]
    fn the_message_says_what_to_do() {
        let msg = super::refusal(&ic("drop table t").unwrap());
        assert!(msg.contains("`DROP TABLE`"), "{msg}");
        assert!(msg.contains("isolation = \"database\""), "{msg}");
    }
}
