//! Compile-time benchmark of `#[db_test]`: see `tests/` and `bench/README.md`.
//! The two test files are never run, only built (and timed) by bench/run.sh.
