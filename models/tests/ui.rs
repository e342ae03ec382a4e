//! Compile-time behaviour of `#[attention_implementation]` and `#[experts_implementation]`, and
//! of configs written by hand (no key group has a `Default` of its own),
//! locked with trybuild: each `ui/*.rs` must fail to compile with exactly the committed
//! `.stderr` (what must compile is covered by the link-time implementations of
//! `tests/authoring`). Regenerate with `TRYBUILD=overwrite cargo test --workspace --test ui`
//! and review the diff.

#[test]
fn ui() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
