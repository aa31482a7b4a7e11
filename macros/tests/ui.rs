//! Compile-time checks of `#[db_test]` misuse: each case in `ui/fail` must
//! fail to compile with the error in its `.stderr` file. The forms it
//! accepts are compiled and run as tests in `tests/tests/accepted_forms.rs`.
//!
//! Only `compile_fail` cases here: with a `pass` case trybuild builds (not
//! checks) every dependency once more, which took five of CI's minutes.

#[test]
fn ui() {
    trybuild::TestCases::new().compile_fail("tests/ui/fail/*.rs");
}
