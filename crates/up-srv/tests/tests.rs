//! up-srv's integration tests as one binary (one link instead of five, as
//! ripgrep does): each module drives an in-process server on 127.0.0.1:0
//! through `common`, or the real binary where a process must die.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod crash;
mod drip;
mod hostile;
mod legacy;
mod put;
mod retrieval;
mod tls;
mod upload;
