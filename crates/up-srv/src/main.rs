//! `up-srv` binary: parses arguments and calls [`up_srv`].

fn main() {}
