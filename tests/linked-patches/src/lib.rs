//! linked-patches
