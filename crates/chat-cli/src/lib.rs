//! chat-cli library (work in progress).
