//! `chat-srv` binary: parses arguments and calls [`chat_srv`].

fn main() {}
