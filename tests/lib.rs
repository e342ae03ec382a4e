//! Cross-crate integration tests of patchwork; the tests live next to this file.
