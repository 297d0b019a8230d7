//! `up-cli` binary: parses arguments and calls [`up_cli`].

fn main() {}
