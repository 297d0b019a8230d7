//! up-cli library (work in progress).
