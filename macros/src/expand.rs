//! Validation of the test function and the (thin) expansion.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn};

use crate::attr::{Config, Flavor, Isolation, Migrations};

fn is_test_attr(attr: &syn::Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|s| s.ident == "test")
}

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
    let mut config = Config::default();
    let parser = syn::meta::parser(|meta| config.parse_meta(meta));
    if let Err(e) = syn::parse::Parser::parse2(parser, args) {
        errors.push(e);
    }
    config.validate(&mut errors);
    let test_attr = func.attrs.iter().find(|a| is_test_attr(a));
    if let Some(attr) = test_attr {
        errors.push(syn::Error::new_spanned(
            attr,
            "#[db_test] already makes this function a test on db-test's shared runtime; \
             remove this attribute (stacking #[tokio::test] or #[test] with #[db_test] would \
             start a second runtime)",
        ));
    }
    // `#[tokio::test] #[db_test]` reaches us already rewritten to a plain
    // `fn`; the stacked attribute is the real mistake, so do not also report
    // a missing `async`.
    if func.sig.asyncness.is_none() && test_attr.is_none() {
        errors.push(syn::Error::new_spanned(
            func.sig.fn_token,
            "the `async` keyword is missing from the function declaration: #[db_test] tests are `async fn`",
        ));
    }
    let generics = &func.sig.generics;
    if !generics.params.is_empty() || generics.where_clause.is_some() {
        let msg =
            "#[db_test] functions cannot be generic: parameters are chosen by their concrete type";
        errors.push(match &generics.where_clause {
            Some(w) if generics.params.is_empty() => syn::Error::new_spanned(w, msg),
            _ => syn::Error::new_spanned(generics, msg),
        });
    }
    let mut params = Vec::new();
    for input in &func.sig.inputs {
        match input {
            FnArg::Receiver(r) => errors.push(syn::Error::new_spanned(
                r,
                "#[db_test] functions cannot take `self`: write a free function",
            )),
            FnArg::Typed(pt) => params.push(pt.clone()),
        }
    }
    if !errors.is_empty() {
        let mut combined = errors.remove(0);
        for e in errors {
            combined.combine(e);
        }
        let err = combined.to_compile_error();
        // Still emit the function (as a plain test that never runs its body)
        // so that IDEs keep resolving it, without cascading errors.
        func.attrs.retain(|a| !is_test_attr(a));
        return quote!(#err #[allow(dead_code)] #func);
    }
    expand(func, config, params)
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

    let migrations = match &config.migrations {
        None => quote!(::db_test::__private::Migrations::Default),
        Some((Migrations::Path(p), _)) => quote!(::db_test::__private::Migrations::Path(#p)),
        Some((Migrations::None, _)) => quote!(::db_test::__private::Migrations::None),
        Some((Migrations::Migrator(path, text), _)) => {
            quote!(::db_test::__private::Migrations::Migrator(|| ::db_test::__private::AsMigrator::as_migrator(&#path), #text))
        }
    };
    let isolation = match config.isolation {
        None => quote!(::core::option::Option::None),
        Some((Isolation::Transaction, _)) => {
            quote!(::core::option::Option::Some(
                ::db_test::__private::Isolation::Transaction
            ))
        }
        Some((Isolation::Database, _)) => {
            quote!(::core::option::Option::Some(
                ::db_test::__private::Isolation::Database
            ))
        }
    };
    let flavor = match config.flavor {
        None => quote!(::core::option::Option::None),
        Some((Flavor::CurrentThread, _)) => {
            quote!(::core::option::Option::Some(
                ::db_test::__private::Flavor::CurrentThread
            ))
        }
        Some((Flavor::MultiThread, _)) => {
            quote!(::core::option::Option::Some(
                ::db_test::__private::Flavor::MultiThread
            ))
        }
    };
    let worker_threads = config.worker_threads.map(|(n, _)| n).unwrap_or(0);
    let start_paused = config.start_paused.is_some_and(|(b, _)| b);
    // What the parameters need is asked of their `FromTestContext` impls, not
    // guessed from their names: aliases and wrappers behave as what they are.
    let tys: Vec<&syn::Type> = params.iter().map(|pt| &*pt.ty).collect();
    let wants_database =
        quote!(false #(|| <#tys as ::db_test::FromTestContext>::NEEDS_OWN_DATABASE)*);
    let sqlx_style = quote!(true #(&& <#tys as ::db_test::FromTestContext>::SQLX_TEST_TYPE)*);
    let transaction_checks = match config.isolation {
        Some((Isolation::Transaction, _)) => tys
            .iter()
            .map(|ty| {
                quote_spanned! {ty.span()=>
                    const _: () = ::core::assert!(
                        !<#ty as ::db_test::FromTestContext>::NEEDS_OWN_DATABASE,
                        "this parameter needs a database of its own, which `isolation = \"transaction\"` \
                         cannot give; use `isolation = \"database\"`, or `TestDb` / `Db` instead"
                    );
                }
            })
            .collect(),
        _ => Vec::new(),
    };
    let timeout_ms = config.timeout_ms.map(|(ms, _)| ms).unwrap_or(0);
    let check_constraints = config.check_constraints.map(|(b, _)| b).unwrap_or(true);
    let fixtures = config.fixtures.iter().map(|(path, span)| {
        quote_spanned!(*span=> ::db_test::__private::Fixture { path: #path, sql: ::core::include_str!(#path) })
    });
    // Each parameter becomes a `let` at the top of the body's async block.
    let lets = params.iter().map(|pt| {
        let syn::PatType { attrs, pat, ty, .. } = pt;
        let ty_name = ty.to_token_stream().to_string().replace(' ', "");
        let value = quote_spanned!(ty.span()=> ::db_test::__private::extract::<#ty>(&__db_test_ctx, #ty_name).await);
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
            fn __db_test_is_param<T: ::db_test::FromTestContext>() {}
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
    // that expression, not at the attribute.
    let body = quote! {
        ::std::boxed::Box::pin(async move {
            #(#lets)*
            let __db_test_output: #output_ty = #block;
            #[allow(unreachable_code)]
            __db_test_output
        })
    };
    let call = match output {
        syn::ReturnType::Default => quote! {
            ::db_test::__private::run_unit(&__DB_TEST_SPEC, |__db_test_ctx| #body)
        },
        syn::ReturnType::Type(_, _) => quote! {
            ::db_test::__private::run(
                &__DB_TEST_SPEC,
                |__db_test_ctx| -> ::core::pin::Pin<::std::boxed::Box<dyn ::core::future::Future<Output = #output_ty>>> {
                    #body
                },
            )
        },
    };

    quote_spanned! {span=>
        #checks
        #(#transaction_checks)*
        #(#attrs)*
        #[::core::prelude::v1::test]
        #vis fn #name() #output {
            static __DB_TEST_SPEC: ::db_test::__private::TestSpec = ::db_test::__private::TestSpec {
                name: ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#name)),
                manifest_dir: ::core::env!("CARGO_MANIFEST_DIR"),
                migrations: #migrations,
                fixtures: &[#(#fixtures),*],
                isolation: #isolation,
                wants_database: #wants_database,
                sqlx_style: #sqlx_style,
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
