//! Parsing and validating `#[db_test(...)]` arguments.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::{LitBool, LitStr, Token};

pub(crate) const VALID_KEYS: &str = "`migrations`, `migrator`, `fixtures`, `timeout`, `isolation`, \
     `check_constraints`, `flavor`, `worker_threads`, `start_paused`";

#[derive(Default)]
pub(crate) struct Config {
    pub(crate) migrations: Option<(Migrations, Span)>,
    pub(crate) timeout_ms: Option<(u64, Span)>,
    pub(crate) isolation: Option<(Isolation, Span)>,
    pub(crate) check_constraints: Option<(bool, Span)>,
    pub(crate) fixtures: Vec<(String, Span)>,
    pub(crate) flavor: Option<(Flavor, Span)>,
    pub(crate) worker_threads: Option<(usize, Span)>,
    pub(crate) start_paused: Option<(bool, Span)>,
}

/// `flavor = ".."`, as in `#[tokio::test]`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    CurrentThread,
    MultiThread,
}

pub(crate) enum Migrations {
    Path(String),
    None,
    Migrator(syn::Path, String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isolation {
    Transaction,
    Database,
}

fn set_once<T>(
    slot: &mut Option<(T, Span)>,
    value: T,
    meta: &ParseNestedMeta,
    key: &str,
) -> syn::Result<()> {
    let span = meta
        .path
        .get_ident()
        .map(|i| i.span())
        .unwrap_or_else(Span::call_site);
    if slot.is_some() {
        return Err(syn::Error::new(
            span,
            format!("`{key}` is set more than once"),
        ));
    }
    *slot = Some((value, span));
    Ok(())
}

/// Parses `250ms`, `30s`, `2m`, `1h`.
pub(crate) fn parse_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" | "min" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    (ms > 0).then_some(ms)
}

impl Config {
    /// Cross-checks between keys, as `#[tokio::test]` makes them.
    pub(crate) fn validate(&self, errors: &mut Vec<syn::Error>) {
        let flavor = self.flavor.map(|(f, _)| f);
        if let Some((_, span)) = self.worker_threads
            && flavor == Some(Flavor::CurrentThread)
        {
            errors.push(syn::Error::new(
                span,
                "`worker_threads` is only for `flavor = \"multi_thread\"`: a current-thread \
                 runtime has no worker threads",
            ));
        }
        if let Some((true, span)) = self.start_paused
            && (flavor == Some(Flavor::MultiThread) || self.worker_threads.is_some())
        {
            errors.push(syn::Error::new(
                span,
                "`start_paused = true` needs `flavor = \"current_thread\"`: tokio can only \
                 pause the clock of a current-thread runtime",
            ));
        }
    }

    pub(crate) fn parse_meta(&mut self, meta: ParseNestedMeta) -> syn::Result<()> {
        let Some(key) = meta.path.get_ident().map(|i| i.to_string()) else {
            return Err(meta.error(format!(
                "unknown attribute key; valid keys are {VALID_KEYS}"
            )));
        };
        match key.as_str() {
            "migrations" => {
                if self
                    .migrations
                    .as_ref()
                    .is_some_and(|(m, _)| matches!(m, Migrations::Migrator(..)))
                {
                    return Err(
                        meta.error("`migrations` and `migrator` cannot both be set; pick one")
                    );
                }
                let lookahead = meta.input.fork();
                let _: Token![=] = lookahead.parse()?;
                let value = meta.value()?;
                if value.peek(LitStr) {
                    let lit: LitStr = value.parse()?;
                    set_once(
                        &mut self.migrations,
                        Migrations::Path(lit.value()),
                        &meta,
                        "migrations",
                    )
                } else if value.peek(LitBool) {
                    let lit: LitBool = value.parse()?;
                    if lit.value {
                        return Err(syn::Error::new(
                            lit.span,
                            "`migrations = true` is the default; write a path, `false`, or leave it out",
                        ));
                    }
                    set_once(&mut self.migrations, Migrations::None, &meta, "migrations")
                } else {
                    let expr: syn::Expr = value.parse()?;
                    Err(syn::Error::new_spanned(
                        expr,
                        "expected a path string such as `migrations = \"migrations\"`, or `migrations = false`",
                    ))
                }
            }
            "migrator" => {
                if self
                    .migrations
                    .as_ref()
                    .is_some_and(|(m, _)| !matches!(m, Migrations::Migrator(..)))
                {
                    return Err(
                        meta.error("`migrations` and `migrator` cannot both be set; pick one")
                    );
                }
                let lit: LitStr = meta.value()?.parse()?;
                let path: syn::Path = lit.parse().map_err(|_| {
                    syn::Error::new(
                        lit.span(),
                        "expected a path to a static `Migrator`, such as \"crate::MIGRATOR\"",
                    )
                })?;
                set_once(
                    &mut self.migrations,
                    Migrations::Migrator(path, lit.value()),
                    &meta,
                    "migrator",
                )
            }
            "timeout" => {
                let lit: LitStr = meta.value()?.parse()?;
                let ms = parse_duration_ms(&lit.value()).ok_or_else(|| {
                    syn::Error::new(
                        lit.span(),
                        format!("invalid duration {:?}; write it like \"500ms\", \"30s\", \"2m\" or \"1h\"", lit.value()),
                    )
                })?;
                set_once(&mut self.timeout_ms, ms, &meta, "timeout")
            }
            "isolation" => {
                let lit: LitStr = meta.value()?.parse()?;
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
                set_once(&mut self.isolation, iso, &meta, "isolation")
            }
            "check_constraints" => {
                let lit: LitBool = meta.value()?.parse()?;
                set_once(
                    &mut self.check_constraints,
                    lit.value,
                    &meta,
                    "check_constraints",
                )
            }
            "fixtures" => self.parse_fixtures(meta),
            "flavor" => {
                let lit: LitStr = meta.value()?.parse()?;
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
                set_once(&mut self.flavor, flavor, &meta, "flavor")
            }
            "worker_threads" => {
                let lit: syn::LitInt = meta.value()?.parse()?;
                let n: usize = lit.base10_parse()?;
                if n == 0 {
                    return Err(syn::Error::new(
                        lit.span(),
                        "`worker_threads` may not be 0; leave it out for the shared runtime",
                    ));
                }
                set_once(&mut self.worker_threads, n, &meta, "worker_threads")
            }
            "start_paused" => {
                let lit: LitBool = meta.value()?.parse()?;
                set_once(&mut self.start_paused, lit.value, &meta, "start_paused")
            }
            _ => Err(meta.error(format!(
                "unknown attribute key `{key}`; valid keys are {VALID_KEYS}"
            ))),
        }
    }

    /// `fixtures("a", "b.sql")` or `fixtures(path = "dir", scripts("a", "b"))`.
    fn parse_fixtures(&mut self, meta: ParseNestedMeta) -> syn::Result<()> {
        let span = meta
            .path
            .get_ident()
            .map(|i| i.span())
            .unwrap_or_else(Span::call_site);
        let content;
        syn::parenthesized!(content in meta.input);
        if content.is_empty() {
            return Err(syn::Error::new(
                span,
                "`fixtures()` is empty; name at least one script, e.g. `fixtures(\"users\")`",
            ));
        }
        if content.peek(LitStr) {
            let lits = content.parse_terminated(|p| p.parse::<LitStr>(), Token![,])?;
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
        let nested = syn::meta::parser(|m| {
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
        });
        syn::parse::Parser::parse2(nested, content.parse()?)?;
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
