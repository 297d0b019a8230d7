//! Chat line codec (work in progress).
