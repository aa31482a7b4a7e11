//! The names of the databases db-test generates, which are the only ones it
//! ever creates, migrates or drops. This module formats and parses every one
//! of them; no other module builds or reads a database name by hand.
//!
//! A name looks like `dbtest_<base>_<source>_<hash>_<kind>`:
//! - `base` is the URL's database name, sanitized ([`base`]),
//! - `source` a hash of the migrations directory's whole canonical path (or
//!   of the migrator's crate and name) ([`source`]),
//! - `hash` a hash of the migrations' versions and checksums ([`hash`]),
//! - `kind` one of [`Kind`]: `b` (being built), `t` (template), `w` (working
//!   database for transaction-mode tests), `d<owner>_<n>` (a per-test
//!   database), `s<owner>_<n>` (a spare) or `k<owner>_<n>` (kept after a
//!   failure), where `owner` is the owning process's id in 8 hex digits.
//!
//! `dbtest_<base>_<source>` is called the *source* below, and
//! `dbtest_<base>_<source>_<hash>` the *prefix*. Names stay within
//! PostgreSQL's 63 bytes ([`MAX_NAME_LEN`], checked by [`fits`]).

use super::embedded::short_hash;

/// PostgreSQL's limit on identifiers (NAMEDATALEN - 1); longer names are
/// silently truncated, which would make two databases one.
pub(super) const MAX_NAME_LEN: usize = 63;

/// What every generated name starts with.
pub(super) const ROOT: &str = "dbtest_";

/// Characters of the URL's database name kept in names.
const BASE_LEN: usize = 16;
/// Hex digits of a source id.
const SOURCE_LEN: usize = 8;
/// Hex digits of a migrations hash.
const HASH_LEN: usize = 10;
/// Hex digits of an owner id.
const OWNER_LEN: usize = 8;

/// The kind of a generated database: the last part of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `b`: a template whose migrations are running.
    Building,
    /// `t`: a migrated template; nobody connects to it.
    Template,
    /// `w`: the working database transaction-mode tests share.
    Working,
    /// `d<owner>_<n>`: a per-test database (`isolation = "database"`).
    Test(Owner),
    /// `s<owner>_<n>`: a used per-test database reset to the template's
    /// state, waiting for the next test.
    Spare(Owner),
    /// `k<owner>_<n>`: a failed test's database, kept on request.
    Kept(Owner),
}

/// The process that made an owned database, and which of its databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Owner {
    /// The owner id: the second key of the process's owner lock.
    pub(super) id: u32,
    /// The process's counter when it made the name.
    pub(super) n: u64,
}

impl Kind {
    /// The letter that starts the kind in a name.
    fn letter(self) -> char {
        match self {
            Kind::Building => 'b',
            Kind::Template => 't',
            Kind::Working => 'w',
            Kind::Test(_) => 'd',
            Kind::Spare(_) => 's',
            Kind::Kept(_) => 'k',
        }
    }

    /// The owner, for the kinds a process owns.
    pub(super) fn owner(self) -> Option<Owner> {
        match self {
            Kind::Test(o) | Kind::Spare(o) | Kind::Kept(o) => Some(o),
            Kind::Building | Kind::Template | Kind::Working => None,
        }
    }

    /// Reads what follows `<prefix>_`.
    fn parse(text: &str) -> Option<Kind> {
        let mut chars = text.chars();
        let letter = chars.next()?;
        let rest = chars.as_str();
        if rest.is_empty() {
            return match letter {
                'b' => Some(Kind::Building),
                't' => Some(Kind::Template),
                'w' => Some(Kind::Working),
                _ => None,
            };
        }
        let (id, n) = rest.split_once('_')?;
        if id.len() != OWNER_LEN || !is_hex(id) || n.is_empty() {
            return None;
        }
        if !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let owner = Owner {
            id: u32::from_str_radix(id, 16).ok()?,
            n: n.parse().ok()?,
        };
        match letter {
            'd' => Some(Kind::Test(owner)),
            's' => Some(Kind::Spare(owner)),
            'k' => Some(Kind::Kept(owner)),
            _ => None,
        }
    }
}

fn is_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The `base` part: the URL's database name, lower case, with anything but
/// ASCII letters and digits replaced by `_`, within 16 characters. A name
/// that this changes (cut, another case, other characters) keeps its first
/// 11 characters and a hash of the whole name: the template lock is an
/// advisory lock, which PostgreSQL scopes to the database the admin
/// connection is in (the URL's), so two URL databases must never share
/// names (`app_integration_1` and `app_integration_2`, two CI shards on one
/// server, would otherwise build one template each under locks that do not
/// see each other).
pub(super) fn base(url_database: &str) -> String {
    let clean: String = url_database
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        return "db".into();
    }
    if clean == url_database && clean.len() <= BASE_LEN {
        return clean;
    }
    const KEPT: usize = BASE_LEN - 5;
    let head: String = clean.chars().take(KEPT).collect();
    format!("{head}_{}", &short_hash(url_database.as_bytes())[..4])
}

/// The source, `dbtest_<base>_<source>`: `source_key` is the migrations'
/// whole canonical path (or the migrator's crate directory and name), so two
/// checkouts never share (or sweep) each other's templates.
pub(super) fn source(base: &str, source_key: &str) -> String {
    format!(
        "{ROOT}{base}_{}",
        &short_hash(source_key.as_bytes())[..SOURCE_LEN]
    )
}

/// The `hash` part for what identifies a set of migrations.
pub(super) fn hash(migrations: &[u8]) -> String {
    short_hash(migrations)[..HASH_LEN].to_string()
}

/// The prefix, `<source>_<hash>`: every database of one template hash
/// starts with it.
pub(super) fn prefix(source: &str, hash: &str) -> String {
    format!("{source}_{hash}")
}

/// The name of a database of this kind under a prefix.
pub(super) fn name(prefix: &str, kind: Kind) -> String {
    let letter = kind.letter();
    match kind.owner() {
        Some(Owner { id, n }) => format!("{prefix}_{letter}{id:08x}_{n}"),
        None => format!("{prefix}_{letter}"),
    }
}

/// The name, if PostgreSQL would keep it whole; an error saying why not
/// otherwise.
pub(super) fn fits(name: String) -> Result<String, String> {
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "db-test: database name {name} is longer than PostgreSQL's {MAX_NAME_LEN} bytes"
        ));
    }
    Ok(name)
}

/// What every name under a source or a prefix starts with (`<it>_`), for
/// `starts_with` in SQL.
pub(super) fn under(source_or_prefix: &str) -> String {
    format!("{source_or_prefix}_")
}

/// What the names of a prefix's per-test databases start with, for
/// `starts_with` in SQL.
pub(super) fn tests_under(prefix: &str) -> String {
    format!("{prefix}_d")
}

/// What the names of a prefix's spares start with, for `starts_with` in SQL.
pub(super) fn spares_under(prefix: &str) -> String {
    format!("{prefix}_s")
}

/// An owner id as it stands in names: a needle for narrowing a search in
/// SQL before [`parse`] decides.
pub(super) fn owner_text(id: u32) -> String {
    format!("{id:08x}")
}

/// The name a failed test's database is kept under: its `d` turned into a
/// `k`, so the leftover sweep skips it.
pub(super) fn kept(name: &str) -> String {
    match parse(name) {
        Some(Parsed {
            prefix,
            kind: Some(Kind::Test(owner)),
            ..
        }) => self::name(prefix, Kind::Kept(owner)),
        _ => format!("{name}_k"),
    }
}

/// A generated name, read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Parsed<'a> {
    /// The whole name.
    pub(super) name: &'a str,
    /// `dbtest_<base>_<source>`.
    pub(super) source: &'a str,
    /// `<source>_<hash>`.
    pub(super) prefix: &'a str,
    pub(super) hash: &'a str,
    /// None for a kind this version does not make, such as the per-test
    /// databases of older versions (`d<pid>x<n>`): they belong to their
    /// hash (and go with it when it is outdated) but have no owner.
    pub(super) kind: Option<Kind>,
}

/// Reads a name back into its parts; None for a name db-test does not
/// generate (a user's database, `postgres`).
pub(super) fn parse(name: &str) -> Option<Parsed<'_>> {
    let rest = name.strip_prefix(ROOT)?;
    // `<base>_<source>_<hash>_<kind>`; `base` may hold `_` but is too short
    // to hold `_<source>_<hash>_`, so the first place that reads as one is
    // where the base ends.
    let bytes = rest.as_bytes();
    let at = |i: usize| bytes.get(i).copied();
    let hash_end = SOURCE_LEN + 1 + HASH_LEN + 1;
    let start = (1..rest.len()).find(|&i| {
        let source_at = i + 1;
        let hash_at = source_at + SOURCE_LEN + 1;
        at(i) == Some(b'_')
            && at(hash_at - 1) == Some(b'_')
            && at(i + hash_end) == Some(b'_')
            && rest.len() > i + hash_end + 1
            && is_hex(&rest[source_at..source_at + SOURCE_LEN])
            && is_hex(&rest[hash_at..hash_at + HASH_LEN])
    })?;
    let source_end = ROOT.len() + start + 1 + SOURCE_LEN;
    let prefix_end = ROOT.len() + start + hash_end;
    Some(Parsed {
        name,
        source: &name[..source_end],
        prefix: &name[..prefix_end],
        hash: &name[source_end + 1..prefix_end],
        kind: Kind::parse(&name[prefix_end + 1..]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "dbtest_x_0123abcd";
    const PREFIX: &str = "dbtest_x_0123abcd_0123456789";

    fn owner(id: u32, n: u64) -> Owner {
        Owner { id, n }
    }

    #[test]
    fn the_longest_generated_names_fit_in_63_bytes() {
        let base = base("a_very_long_database_name_indeed");
        assert_eq!(base.len(), BASE_LEN);
        let source = source(&base, "/some/checkout/server/migrations");
        let prefix = prefix(&source, &hash(b"migrations"));
        let biggest = owner(u32::MAX, 999_999_999);
        for kind in [
            Kind::Building,
            Kind::Template,
            Kind::Working,
            Kind::Test(biggest),
            Kind::Spare(biggest),
            Kind::Kept(biggest),
        ] {
            let name = name(&prefix, kind);
            assert_eq!(fits(name.clone()), Ok(name.clone()), "{kind:?}");
            assert_eq!(parse(&name).map(|p| p.kind), Some(Some(kind)), "{name}");
        }
        assert!(fits(name(&prefix, Kind::Test(owner(u32::MAX, u64::MAX)))).is_err());
    }

    #[test]
    fn every_kind_round_trips_through_its_name() {
        for base_name in ["x", "my_db", "a_very_long_database_name_indeed", ""] {
            let source = source(&base(base_name), "/work/a/migrations");
            let hash = hash(b"v1");
            let prefix = prefix(&source, &hash);
            for kind in [
                Kind::Building,
                Kind::Template,
                Kind::Working,
                Kind::Test(owner(0x00ab_cdef, 42)),
                Kind::Spare(owner(0, 0)),
                Kind::Kept(owner(u32::MAX, 7)),
            ] {
                let name = name(&prefix, kind);
                assert!(name.starts_with(&under(&prefix)), "{name}");
                assert!(name.starts_with(&under(&source)), "{name}");
                let parsed = parse(&name).expect(&name);
                assert_eq!(
                    parsed,
                    Parsed {
                        name: &name,
                        source: &source,
                        prefix: &prefix,
                        hash: &hash,
                        kind: Some(kind),
                    },
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn names_are_as_documented() {
        let id = owner(0x00ab_cdef, 42);
        assert_eq!(
            name(PREFIX, Kind::Test(id)),
            "dbtest_x_0123abcd_0123456789_d00abcdef_42"
        );
        assert_eq!(name(PREFIX, Kind::Template), format!("{PREFIX}_t"));
        assert_eq!(prefix(SOURCE, "0123456789"), PREFIX);
        assert!(name(PREFIX, Kind::Test(id)).starts_with(&tests_under(PREFIX)));
        assert!(name(PREFIX, Kind::Spare(id)).starts_with(&spares_under(PREFIX)));
        assert!(name(PREFIX, Kind::Kept(id)).contains(&owner_text(id.id)));
    }

    #[test]
    fn a_kept_database_is_the_test_database_with_a_k() {
        let id = owner(0x1234_5678, 9);
        for base_name in ["x", "my_db", "d_d_d"] {
            let prefix = prefix(&source(&base(base_name), "/m"), &hash(b"h"));
            assert_eq!(
                kept(&name(&prefix, Kind::Test(id))),
                name(&prefix, Kind::Kept(id))
            );
        }
    }

    #[test]
    fn foreign_names_are_nobodys() {
        // User databases, and names that only look alike.
        for name in [
            "postgres",
            "test",
            "myapp_test",
            "dbtest_",
            "dbtest_x_w",
            "dbtest_x_0123abcd_0123456789",
            "dbtest_x_0123abcd_0123456789_",
            "dbtest__0123abcd_0123456789_t",
            "dbtest_x_0123ABCD_0123456789_t",
            "dbtest_x_0123abcd_012345678_t",
            "Dbtest_x_0123abcd_0123456789_t",
            "dbtest_é_0123abcd_0123456789",
            "dbtest_x_0123abcd_é0123456789_t",
        ] {
            assert_eq!(parse(name), None, "{name}");
        }
        // Names of the older scheme (`d<pid>x<n>`) and malformed owners
        // belong to their hash but to nobody.
        for kind in [
            "d12345x0",
            "d12345678_",
            "d1234567_0",
            "d0000000g_0",
            "d00000000_1x",
            "x00000000_1",
            "tt",
            "é",
        ] {
            let name = format!("{PREFIX}_{kind}");
            let parsed = parse(&name).expect(&name);
            assert_eq!((parsed.prefix, parsed.kind), (PREFIX, None), "{name}");
        }
    }

    #[test]
    fn the_source_is_the_whole_path() {
        let a = source("x", "/work/a/server/migrations");
        let b = source("x", "/work/b/server/migrations");
        assert_ne!(a, b);
        assert_eq!(a.len(), ROOT.len() + 2 + SOURCE_LEN);
        assert_eq!(base(""), "db");
        assert_eq!(base("my_app_test"), "my_app_test");
        let changed = base("My-App.Test");
        assert!(changed.starts_with("my_app_test_"), "{changed}");
        assert_ne!(changed, base("my_app_test"));
    }

    #[test]
    fn two_url_databases_never_share_a_base() {
        let names = [
            "app_integration_1",
            "app_integration_2",
            "App_integration_1",
            "app-integration-1",
            "a_very_long_database_name_indeed",
            "a_very_long_database_name_indeed_2",
        ];
        let bases: std::collections::HashSet<String> = names.iter().map(|n| base(n)).collect();
        assert_eq!(bases.len(), names.len(), "{bases:?}");
        for b in &bases {
            assert!(b.len() <= BASE_LEN, "{b}");
        }
    }
}
