//! Compile-time behaviour of `#[patchable]` and `#[patch]`, locked with trybuild: each
//! `ui/*.rs` must fail to compile with exactly the committed `.stderr` (what must compile is
//! covered by ordinary tests, which are cheaper). Regenerate the expectations with `TRYBUILD=overwrite cargo test -p patch-core --test ui`
//! and review the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
