//! See benches/compare.rs.
