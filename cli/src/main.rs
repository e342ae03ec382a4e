//! The patchwork command line.

fn main() {}
