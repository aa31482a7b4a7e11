//! Checks that involve more than one key, or the function itself. Every
//! problem is reported, not only the first.

use syn::ItemFn;

use crate::attr::{Config, Flavor};

/// Whether an attribute makes a function a test (`#[test]`, `#[tokio::test]`, ...).
pub(crate) fn is_test_attr(attr: &syn::Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|s| s.ident == "test")
}

pub(crate) fn validate(config: &Config, func: &ItemFn, errors: &mut Vec<syn::Error>) {
    keys(config, errors);
    function(func, errors);
    if func.sig.inputs.is_empty() {
        no_database(config, errors);
    }
}

/// A test without parameters has no database (as under `#[sqlx::test]`,
/// which refuses these keys there too): the keys that set one up are
/// errors, not silently unused.
fn no_database(config: &Config, errors: &mut Vec<syn::Error>) {
    let spans = [
        ("migrations", config.migrations.as_ref().map(|(_, s)| *s)),
        ("migrator", config.migrator.as_ref().map(|(_, s)| *s)),
        ("fixtures", config.fixtures.first().map(|(_, s)| *s)),
        ("isolation", config.isolation.as_ref().map(|(_, s)| *s)),
    ];
    for (key, span) in spans {
        if let Some(span) = span {
            errors.push(syn::Error::new(
                span,
                format!(
                    "`{key}` needs a database, and a test without parameters has none; \
                     add a parameter such as `db: TestDb` or `pool: PgPool`, or remove `{key}`"
                ),
            ));
        }
    }
}

fn keys(config: &Config, errors: &mut Vec<syn::Error>) {
    if let (Some((_, migrations)), Some((_, migrator))) = (&config.migrations, &config.migrator) {
        // Reported at whichever came second.
        let first = config.order.iter().position(|k| k == "migrations");
        let second = config.order.iter().position(|k| k == "migrator");
        let span = if first < second {
            *migrator
        } else {
            *migrations
        };
        errors.push(syn::Error::new(
            span,
            "`migrations` and `migrator` cannot both be set; pick one",
        ));
    }
    let flavor = config.flavor.map(|(f, _)| f);
    if let Some((_, span)) = config.worker_threads
        && flavor == Some(Flavor::CurrentThread)
    {
        errors.push(syn::Error::new(
            span,
            "`worker_threads` is only for `flavor = \"multi_thread\"`: a current-thread \
             runtime has no worker threads",
        ));
    }
    if let Some((true, span)) = config.start_paused
        && (flavor == Some(Flavor::MultiThread) || config.worker_threads.is_some())
    {
        errors.push(syn::Error::new(
            span,
            "`start_paused = true` needs `flavor = \"current_thread\"`: tokio can only \
             pause the clock of a current-thread runtime",
        ));
    }
}

fn function(func: &ItemFn, errors: &mut Vec<syn::Error>) {
    let test_attr = func.attrs.iter().find(|a| is_test_attr(a));
    if let Some(attr) = test_attr {
        errors.push(syn::Error::new_spanned(
            attr,
            "#[db_test] already makes this function a test, with the runtime it needs; \
             remove this attribute (stacking #[tokio::test] or #[test] with #[db_test] would \
             start a second runtime)",
        ));
    }
    // A function without `async` is accepted, as `#[sqlx::test]` accepts
    // it: its body becomes the body of the test's async block all the same.
    let generics = &func.sig.generics;
    if !generics.params.is_empty() || generics.where_clause.is_some() {
        let msg =
            "#[db_test] functions cannot be generic: parameters are chosen by their concrete type";
        errors.push(match &generics.where_clause {
            Some(w) if generics.params.is_empty() => syn::Error::new_spanned(w, msg),
            _ => syn::Error::new_spanned(generics, msg),
        });
    }
    for input in &func.sig.inputs {
        if let syn::FnArg::Receiver(r) = input {
            errors.push(syn::Error::new_spanned(
                r,
                "#[db_test] functions cannot take `self`: write a free function",
            ));
        }
    }
}
