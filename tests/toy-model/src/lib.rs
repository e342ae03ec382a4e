//! toy-model
