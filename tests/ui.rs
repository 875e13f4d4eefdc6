//! Compile-time checks of `#[serializable_retry]`: misuse is one error on the offending token,
//! and the supported forms compile.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
