//! unreferenced-patches
