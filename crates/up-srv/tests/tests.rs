//! up-srv's integration tests as one binary (one link instead of five, as
//! ripgrep does): each module drives an in-process server on 127.0.0.1:0
//! through `common`, or the real binary where a process must die.

mod common;

mod crash;
mod drip;
mod hostile;
mod legacy;
mod retrieval;
mod tls;
mod upload;
