//! Fuzz harness library: the checks each `fuzz_targets/*.rs` binary runs.
//!
//! The targets are one-line wrappers around [`harness`], so the very same
//! checks also run on stable when `crates/proto/tests/fuzz_corpus.rs` replays
//! the committed corpora (it includes `harness.rs` by path).

pub mod harness;
