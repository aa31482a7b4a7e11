//! The (thin) expansion: a `#[test]` fn that hands a static description
//! of the test and its body to the runtime crate.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn};

use crate::attr::{self, Config, Flavor, Isolation, Migrations};
use crate::valid::{self, is_test_attr};

/// parse → validate → expand. On any error, every error is reported and the
/// function is still emitted (never run), so IDEs keep resolving it.
pub(crate) fn db_test(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut func: ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(e) => {
            // Not a function: report it and give the item back untouched.
            let err =
                syn::Error::new(e.span(), "#[db_test] goes on an `async fn`").to_compile_error();
            return quote!(#err #item);
        }
    };
    let mut errors: Vec<syn::Error> = Vec::new();
    let config = attr::parse(args, &mut errors);
    valid::validate(&config, &func, &mut errors);
    if !errors.is_empty() {
        let mut combined = errors.remove(0);
        for e in errors {
            combined.combine(e);
        }
        let err = combined.to_compile_error();
        func.attrs.retain(|a| !is_test_attr(a));
        return quote!(#err #[allow(dead_code)] #func);
    }
    let params = func
        .sig
        .inputs
        .iter()
        .filter_map(|input| match input {
            FnArg::Typed(pt) => Some(pt.clone()),
            FnArg::Receiver(_) => None,
        })
        .collect();
    expand(func, config, sqlx_options_pair(params))
}

/// `#[sqlx::test]`'s two-parameter form, `async fn t(pool_opts:
/// PgPoolOptions, connect_opts: PgConnectOptions)`, becomes the one tuple
/// parameter db-test's `FromTestContext` gives: `(pool_opts, connect_opts):
/// (PgPoolOptions, PgConnectOptions)`. Recognised by the types' last names
/// (`...PoolOptions`, then `...ConnectOptions`), as a type alias of either
/// cannot be seen here: write the tuple for those.
fn sqlx_options_pair(params: Vec<syn::PatType>) -> Vec<syn::PatType> {
    fn last_name(ty: &syn::Type) -> String {
        match ty {
            syn::Type::Path(p) => p
                .path
                .segments
                .last()
                .map(|s| s.ident.to_string())
                .unwrap_or_default(),
            _ => String::new(),
        }
    }
    let [first, second] = &params[..] else {
        return params;
    };
    if !(last_name(&first.ty).ends_with("PoolOptions")
        && last_name(&second.ty).ends_with("ConnectOptions"))
    {
        return params;
    }
    let (p0, p1, t0, t1) = (&first.pat, &second.pat, &first.ty, &second.ty);
    let mut attrs = first.attrs.clone();
    attrs.extend(second.attrs.iter().cloned());
    let pat: syn::Pat = syn::parse_quote!((#p0, #p1));
    let ty: syn::Type = syn::parse_quote_spanned!(t0.span()=> (#t0, #t1));
    vec![syn::PatType {
        attrs,
        pat: Box::new(pat),
        colon_token: first.colon_token,
        ty: Box::new(ty),
    }]
}

fn expand(func: ItemFn, config: Config, params: Vec<syn::PatType>) -> TokenStream {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = func;
    let name = &sig.ident;
    let output = &sig.output;
    let span = Span::call_site();
    let krate: TokenStream = match &config.krate {
        Some((path, _)) => quote!(#path),
        None => quote!(::db_test),
    };

    let migrations = match (&config.migrations, &config.migrator) {
        (_, Some(((path, text), _))) => {
            quote!(#krate::__private::Migrations::Migrator(|| #krate::__private::AsMigrator::as_migrator(&#path), #text))
        }
        (None, None) => quote!(#krate::__private::Migrations::Default),
        (Some((Migrations::Path(p), _)), None) => quote!(#krate::__private::Migrations::Path(#p)),
        (Some((Migrations::None, _)), None) => quote!(#krate::__private::Migrations::None),
    };
    let isolation = match config.isolation {
        None => quote!(::core::option::Option::None),
        Some((Isolation::Transaction, _)) => {
            quote!(::core::option::Option::Some(
                #krate::__private::Isolation::Transaction
            ))
        }
        Some((Isolation::Database, _)) => {
            quote!(::core::option::Option::Some(
                #krate::__private::Isolation::Database
            ))
        }
    };
    let flavor = match config.flavor {
        None => quote!(::core::option::Option::None),
        Some((Flavor::CurrentThread, _)) => {
            quote!(::core::option::Option::Some(
                #krate::__private::Flavor::CurrentThread
            ))
        }
        Some((Flavor::MultiThread, _)) => {
            quote!(::core::option::Option::Some(
                #krate::__private::Flavor::MultiThread
            ))
        }
    };
    let worker_threads = config.worker_threads.map(|(n, _)| n).unwrap_or(0);
    let start_paused = config.start_paused.is_some_and(|(b, _)| b);
    // What the parameters need is asked of their `FromTestContext` impls, not
    // guessed from their names: aliases and wrappers behave as what they are.
    let tys: Vec<&syn::Type> = params.iter().map(|pt| &*pt.ty).collect();
    let wants_database = quote!(false #(|| <#tys as #krate::FromTestContext>::NEEDS_OWN_DATABASE)*);
    let sqlx_style = quote!(true #(&& <#tys as #krate::FromTestContext>::SQLX_TEST_TYPE)*);
    let backend = quote!(#krate::Backend::of(&[#(<#tys as #krate::FromTestContext>::BACKEND),*]));
    let backend_named =
        quote!(#krate::Backend::named(&[#(<#tys as #krate::FromTestContext>::BACKEND),*]));
    // One parameter (most tests): the same, as a constant of a generic
    // item that the compiler evaluates once per type rather than once per
    // test.
    let params_spec = match tys.as_slice() {
        [ty] => quote!(#krate::__private::Param::<#ty>::SPEC),
        _ => quote!(#krate::__private::ParamSpec {
            wants_database: #wants_database,
            sqlx_style: #sqlx_style,
            backend: #backend,
            backend_named: #backend_named,
        }),
    };
    let backend_check = (tys.len() > 1).then(|| quote!(const _: #krate::Backend = #backend;));
    // Parameters whose needs no isolation can meet together are a compile
    // error at the parameter, not a failure at run time.
    let own_database =
        |ty: &syn::Type| quote!(<#ty as #krate::FromTestContext>::NEEDS_OWN_DATABASE);
    let shared_tx =
        |ty: &syn::Type| quote!(<#ty as #krate::FromTestContext>::NEEDS_SHARED_TRANSACTION);
    let any_own_database = {
        let each = tys.iter().map(|ty| own_database(ty));
        quote!((false #(|| #each)*))
    };
    let any_shared_tx = {
        let each = tys.iter().map(|ty| shared_tx(ty));
        quote!((false #(|| #each)*))
    };
    let mode_checks: Vec<TokenStream> = tys
        .iter()
        .map(|ty| {
            let own = own_database(ty);
            let shared = shared_tx(ty);
            let explicit = match config.isolation {
                Some((Isolation::Transaction, _)) => quote_spanned! {ty.span()=>
                    const _: () = ::core::assert!(
                        !#own,
                        "this parameter needs a database of its own, which `isolation = \"transaction\"` \
                         cannot give; use `isolation = \"database\"`, or `TestDb` / `Db` instead"
                    );
                },
                Some((Isolation::Database, _)) => quote_spanned! {ty.span()=>
                    const _: () = ::core::assert!(
                        !#shared,
                        "this parameter needs the test's shared, rolled-back transaction, which \
                         `isolation = \"database\"` does not have"
                    );
                },
                None => quote!(),
            };
            // With one parameter there is nothing to mix: no check to
            // compile (500 tests pay for every item emitted here).
            let mixed = (tys.len() > 1).then(|| {
                quote_spanned! {ty.span()=>
                    const _: () = ::core::assert!(
                        !(#shared && #any_own_database) && !(#own && #any_shared_tx),
                        "the parameters of this test need incompatible isolation: this one and another \
                         one need a database of their own and the shared, rolled-back transaction"
                    );
                }
            });
            quote! {
                #explicit
                #mixed
            }
        })
        .collect();
    // The runtime's own parser reads the duration, at compile time: one
    // grammar for the attribute and the environment.
    let (timeout_ms, timeout_check) = match &config.timeout {
        Some(lit) => {
            // A bad duration is reported at the literal.
            let krate = respan(krate.clone(), lit.span());
            (
                quote_spanned!(lit.span()=> #krate::__private::duration_ms(#lit)),
                quote_spanned!(lit.span()=> const _: u64 = #krate::__private::duration_ms(#lit);),
            )
        }
        None => (quote!(0), quote!()),
    };
    let check_constraints = config.check_constraints.map(|(b, _)| b).unwrap_or(true);
    let fixtures = config.fixtures.iter().map(|(path, span)| {
        quote_spanned!(*span=> #krate::__private::Fixture { path: #path, sql: ::core::include_str!(#path) })
    });
    // Each parameter becomes a `let` at the top of the body's async block.
    let lets = params.iter().map(|pt| {
        let syn::PatType { attrs, pat, ty, .. } = pt;
        let ty_name = ty.to_token_stream().to_string().replace(' ', "");
        let value = quote_spanned!(ty.span()=> #krate::__private::extract::<#ty>(&__db_test_ctx, #ty_name).await);
        quote!(#(#attrs)* let #pat: #ty = #value;)
    });

    // The `#[test]` fn is compiled out of non-test builds (`cargo check`,
    // `cargo build`, trybuild); this keeps its parameter types and fixture
    // paths checked there too. Test builds check them in the fn itself.
    let param_checks = params.iter().map(|pt| {
        let ty = &pt.ty;
        quote_spanned!(ty.span()=> __db_test_is_param::<#ty>();)
    });
    let fixture_checks = config
        .fixtures
        .iter()
        .map(|(path, span)| quote_spanned!(*span=> let _: &str = ::core::include_str!(#path);));
    let checks = quote_spanned! {span=>
        #[cfg(not(test))]
        const _: () = {
            fn __db_test_is_param<T: #krate::FromTestContext>() {}
            #[allow(dead_code)]
            fn __db_test_check() {
                #(#param_checks)*
                #(#fixture_checks)*
            }
        };
    };

    // The body stays inline, as an `async move` block in a closure, like
    // `#[tokio::test]` does: an inner `async fn` would give every test an
    // opaque return type to check, which made 500 tests build ~1.4x slower.
    // A test returning `()` (most of them) hands the runtime a plain fn
    // pointer: nothing generic is instantiated per test. Others go through
    // the generic `run`, which hands back their return value; the boxed
    // future's declared output type drives inference for `?` in the body.
    let output_ty = match output {
        syn::ReturnType::Default => quote!(()),
        syn::ReturnType::Type(_, ty) => quote!(#ty),
    };
    // Binding the block to a typed `let` reports a wrong tail expression at
    // that expression, not at the attribute. A body that is only a
    // `panic!` (a `#[should_panic]` test) or ends in `return` is fine, as
    // `#[tokio::test]` allows them: clippy would call the one a diverging
    // sub-expression and the other a needless return, in the user's code.
    let body = quote! {
        ::std::boxed::Box::pin(async move {
            #(#lets)*
            #[allow(clippy::diverging_sub_expression, clippy::needless_return)]
            let __db_test_output: #output_ty = #block;
            #[allow(unreachable_code)]
            __db_test_output
        })
    };
    let call = match output {
        syn::ReturnType::Default => quote! {
            #krate::__private::run_unit(&__DB_TEST_SPEC, |__db_test_ctx| #body)
        },
        syn::ReturnType::Type(_, _) => quote! {
            #krate::__private::run(
                &__DB_TEST_SPEC,
                |__db_test_ctx| -> ::core::pin::Pin<::std::boxed::Box<dyn ::core::future::Future<Output = #output_ty>>> {
                    #body
                },
            )
        },
    };

    quote_spanned! {span=>
        #checks
        #timeout_check
        #backend_check
        #(#mode_checks)*
        #(#attrs)*
        #[::core::prelude::v1::test]
        #vis fn #name() #output {
            static __DB_TEST_SPEC: #krate::__private::TestSpec = #krate::__private::TestSpec {
                name: ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#name)),
                manifest_dir: ::core::env!("CARGO_MANIFEST_DIR"),
                migrations: #migrations,
                fixtures: &[#(#fixtures),*],
                isolation: #isolation,
                params: #params_spec,
                flavor: #flavor,
                worker_threads: #worker_threads,
                start_paused: #start_paused,
                timeout_ms: #timeout_ms,
                check_constraints: #check_constraints,
            };
            #call
        }
    }
}

/// The same tokens, all at `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tt| {
            if let proc_macro2::TokenTree::Group(g) = &tt {
                let mut group = proc_macro2::Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(span);
                tt = proc_macro2::TokenTree::Group(group);
            } else {
                tt.set_span(span);
            }
            tt
        })
        .collect()
}
