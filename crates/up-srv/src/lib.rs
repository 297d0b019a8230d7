//! up-srv library (work in progress).
