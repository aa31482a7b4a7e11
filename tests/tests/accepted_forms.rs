//! The forms of `#[db_test]` it accepts, compiled here as tests and run:
//! every key, the flavors, a renamed crate, a `Result` return, a function
//! without `async`. What it
//! refuses, and with which error, is in `macros/tests/ui` (trybuild).

#[path = "../ui/pass/all_keys.rs"]
mod all_keys;
#[path = "../ui/pass/flavors.rs"]
mod flavors;
#[path = "../ui/pass/not_async.rs"]
mod not_async;
#[path = "../ui/pass/plain.rs"]
mod plain;
#[path = "../ui/pass/renamed_crate.rs"]
mod renamed_crate;
#[path = "../ui/pass/result_return.rs"]
mod result_return;
