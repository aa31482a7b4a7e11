//! Parsing `#[db_test(...)]` arguments into a [`Config`].
//!
//! Each key is read on its own, so one malformed key does not hide the
//! others' errors: every error is collected. Checks that involve more than
//! one key, or the function, are in `valid.rs`.

use proc_macro2::{Span, TokenStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned as _;
use syn::{Expr, ExprLit, Lit, LitBool, LitStr, Meta, Token};

pub(crate) const VALID_KEYS: &str = "`migrations`, `migrator`, `fixtures`, `timeout`, `isolation`, \
     `check_constraints`, `flavor`, `worker_threads`, `start_paused`, `crate`";

/// A value and where it was written.
pub(crate) type Spanned<T> = Option<(T, Span)>;

#[derive(Default)]
pub(crate) struct Config {
    pub(crate) migrations: Spanned<Migrations>,
    pub(crate) migrator: Spanned<(syn::Path, String)>,
    /// The duration as written; the runtime's parser checks it at compile time.
    pub(crate) timeout: Option<LitStr>,
    pub(crate) isolation: Spanned<Isolation>,
    pub(crate) check_constraints: Spanned<bool>,
    pub(crate) fixtures: Vec<(String, Span)>,
    pub(crate) flavor: Spanned<Flavor>,
    pub(crate) worker_threads: Spanned<usize>,
    pub(crate) start_paused: Spanned<bool>,
    /// `crate = "path"`: where db-test is, for a renamed dependency.
    pub(crate) krate: Spanned<syn::Path>,
    /// The keys in the order they were written.
    pub(crate) order: Vec<String>,
}

pub(crate) enum Migrations {
    Path(String),
    None,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isolation {
    Transaction,
    Database,
}

/// `flavor = ".."`, as in `#[tokio::test]`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    CurrentThread,
    MultiThread,
}

/// Parses the attribute's arguments; errors go to `errors`.
pub(crate) fn parse(args: TokenStream, errors: &mut Vec<syn::Error>) -> Config {
    let mut config = Config::default();
    let parser = Punctuated::<Meta, Token![,]>::parse_terminated;
    let metas = match syn::parse::Parser::parse2(parser, args) {
        Ok(metas) => metas,
        Err(e) => {
            errors.push(e);
            return config;
        }
    };
    for meta in metas {
        if let Err(e) = config.key(meta) {
            errors.push(e);
        }
    }
    config
}

fn set_once<T>(slot: &mut Spanned<T>, value: T, span: Span, key: &str) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new(
            span,
            format!("`{key}` is set more than once"),
        ));
    }
    *slot = Some((value, span));
    Ok(())
}

/// A literal, seen through the invisible groups `macro_rules!` wraps
/// around the fragments it passes on (`migrations = $path`).
fn unwrap_literal(expr: &Expr) -> Option<&Lit> {
    match expr {
        Expr::Lit(ExprLit { lit, .. }) => Some(lit),
        Expr::Group(g) => unwrap_literal(&g.expr),
        Expr::Paren(p) => unwrap_literal(&p.expr),
        _ => None,
    }
}

/// The literal of `key = <literal>`.
fn literal<'a>(meta: &'a Meta, key: &str, expected: &str) -> syn::Result<&'a Lit> {
    match meta {
        Meta::NameValue(nv) => unwrap_literal(&nv.value).ok_or_else(|| {
            syn::Error::new_spanned(&nv.value, format!("expected {expected} for `{key}`"))
        }),
        _ => Err(syn::Error::new_spanned(
            meta,
            format!("expected `{key} = {expected}`"),
        )),
    }
}

fn string(meta: &Meta, key: &str, example: &str) -> syn::Result<LitStr> {
    match literal(meta, key, example)? {
        Lit::Str(s) => Ok(s.clone()),
        other => Err(syn::Error::new_spanned(
            other,
            format!("expected a string for `{key}`, such as `{key} = {example}`"),
        )),
    }
}

fn boolean(meta: &Meta, key: &str) -> syn::Result<LitBool> {
    match literal(meta, key, "true or false")? {
        Lit::Bool(b) => Ok(b.clone()),
        other => Err(syn::Error::new_spanned(
            other,
            format!("expected `true` or `false` for `{key}`"),
        )),
    }
}

impl Config {
    fn key(&mut self, meta: Meta) -> syn::Result<()> {
        let path = meta.path();
        let span = path.span();
        let Some(key) = path.get_ident().map(|i| i.to_string()) else {
            return Err(syn::Error::new_spanned(
                path,
                format!("unknown attribute key; valid keys are {VALID_KEYS}"),
            ));
        };
        self.order.push(key.clone());
        match key.as_str() {
            "migrations" => {
                let value = match literal(&meta, "migrations", "\"migrations\"") {
                    Ok(Lit::Str(lit)) => Migrations::Path(lit.value()),
                    Ok(Lit::Bool(b)) if !b.value => Migrations::None,
                    Ok(Lit::Bool(b)) => {
                        return Err(syn::Error::new(
                            b.span,
                            "`migrations = true` is the default; write a path, `false`, or leave it out",
                        ));
                    }
                    Ok(other) => return Err(migrations_expected(other)),
                    Err(_) => {
                        let value: &dyn quote::ToTokens = match &meta {
                            Meta::NameValue(nv) => &nv.value,
                            _ => &meta,
                        };
                        return Err(migrations_expected(value));
                    }
                };
                set_once(&mut self.migrations, value, span, "migrations")
            }
            "migrator" => {
                let lit = string(&meta, "migrator", "\"crate::MIGRATOR\"")?;
                let path: syn::Path = lit.parse().map_err(|_| {
                    syn::Error::new(
                        lit.span(),
                        "expected a path to a static `Migrator`, such as \"crate::MIGRATOR\"",
                    )
                })?;
                set_once(&mut self.migrator, (path, lit.value()), span, "migrator")
            }
            "timeout" => {
                let lit = string(&meta, "timeout", "\"30s\"")?;
                if self.timeout.is_some() {
                    return Err(syn::Error::new(span, "`timeout` is set more than once"));
                }
                self.timeout = Some(lit);
                Ok(())
            }
            "isolation" => {
                let lit = string(&meta, "isolation", "\"database\"")?;
                let iso = match lit.value().as_str() {
                    "transaction" => Isolation::Transaction,
                    "database" => Isolation::Database,
                    other => {
                        return Err(syn::Error::new(
                            lit.span(),
                            format!(
                                "unknown isolation {other:?}; expected \"transaction\" or \"database\""
                            ),
                        ));
                    }
                };
                set_once(&mut self.isolation, iso, span, "isolation")
            }
            "check_constraints" => {
                let b = boolean(&meta, "check_constraints")?;
                set_once(
                    &mut self.check_constraints,
                    b.value,
                    span,
                    "check_constraints",
                )
            }
            "fixtures" => self.fixtures(&meta, span),
            "flavor" => {
                let lit = string(&meta, "flavor", "\"current_thread\"")?;
                let flavor = match lit.value().as_str() {
                    "current_thread" => Flavor::CurrentThread,
                    "multi_thread" => Flavor::MultiThread,
                    other => {
                        return Err(syn::Error::new(
                            lit.span(),
                            format!(
                                "unknown flavor {other:?}; expected \"current_thread\" or \"multi_thread\""
                            ),
                        ));
                    }
                };
                set_once(&mut self.flavor, flavor, span, "flavor")
            }
            "worker_threads" => {
                let n = match literal(&meta, "worker_threads", "a number")? {
                    Lit::Int(lit) => {
                        let n: usize = lit.base10_parse()?;
                        if n == 0 {
                            return Err(syn::Error::new(
                                lit.span(),
                                "`worker_threads` may not be 0; leave it out for the shared runtime",
                            ));
                        }
                        n
                    }
                    other => {
                        return Err(syn::Error::new_spanned(
                            other,
                            "expected a number of threads, such as `worker_threads = 4`",
                        ));
                    }
                };
                set_once(&mut self.worker_threads, n, span, "worker_threads")
            }
            "start_paused" => {
                let b = boolean(&meta, "start_paused")?;
                set_once(&mut self.start_paused, b.value, span, "start_paused")
            }
            "crate" => {
                let lit = string(&meta, "crate", "\"my_db_test\"")?;
                let path: syn::Path = lit.parse().map_err(|_| {
                    syn::Error::new(
                        lit.span(),
                        "expected the path of the db-test crate, such as \"my_db_test\"",
                    )
                })?;
                set_once(&mut self.krate, path, span, "crate")
            }
            _ => Err(syn::Error::new(
                span,
                format!("unknown attribute key `{key}`; valid keys are {VALID_KEYS}"),
            )),
        }
    }

    /// `fixtures("a", "b.sql")` or `fixtures(path = "dir", scripts("a", "b"))`.
    fn fixtures(&mut self, meta: &Meta, span: Span) -> syn::Result<()> {
        let Meta::List(list) = meta else {
            return Err(syn::Error::new(
                span,
                "expected `fixtures(\"name\", ...)` or `fixtures(path = \"dir\", scripts(\"name\"))`",
            ));
        };
        if list.tokens.is_empty() {
            return Err(syn::Error::new(
                span,
                "`fixtures()` is empty; name at least one script, e.g. `fixtures(\"users\")`",
            ));
        }
        // The plain form: a list of strings.
        if let Ok(lits) = list.parse_args_with(Punctuated::<LitStr, Token![,]>::parse_terminated) {
            for lit in lits {
                let v = lit.value();
                let path = if v.ends_with(".sql") {
                    v
                } else {
                    format!("fixtures/{v}.sql")
                };
                self.fixtures.push((path, lit.span()));
            }
            return Ok(());
        }
        let mut dir: Option<String> = None;
        let mut scripts: Vec<LitStr> = Vec::new();
        list.parse_nested_meta(|m| {
            if m.path.is_ident("path") {
                let lit: LitStr = m.value()?.parse()?;
                dir = Some(lit.value());
                Ok(())
            } else if m.path.is_ident("scripts") {
                let inner;
                syn::parenthesized!(inner in m.input);
                scripts.extend(inner.parse_terminated(|p| p.parse::<LitStr>(), Token![,])?);
                Ok(())
            } else {
                Err(m.error("expected `path = \"..\"` or `scripts(\"..\")` inside `fixtures(...)`"))
            }
        })?;
        if scripts.is_empty() {
            return Err(syn::Error::new(
                span,
                "`fixtures(...)` names no scripts; add `scripts(\"name\")`",
            ));
        }
        let dir = dir.unwrap_or_else(|| "fixtures".into());
        for lit in scripts {
            let v = lit.value();
            let file = if v.ends_with(".sql") {
                v
            } else {
                format!("{v}.sql")
            };
            self.fixtures
                .push((format!("{}/{file}", dir.trim_end_matches('/')), lit.span()));
        }
        Ok(())
    }
}

fn migrations_expected(value: &dyn quote::ToTokens) -> syn::Error {
    syn::Error::new_spanned(
        value,
        "expected a path string such as `migrations = \"migrations\"`, or `migrations = false`",
    )
}
