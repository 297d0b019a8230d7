//! Upload codec (work in progress).
