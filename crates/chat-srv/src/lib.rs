//! chat-srv library (work in progress).
