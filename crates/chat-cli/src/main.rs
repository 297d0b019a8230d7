//! `chat-cli` binary: parses arguments and calls [`chat_cli`].

fn main() {}
