//! libFuzzer entry point for the `upload_frames` checks in `src/harness.rs`; run with
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run upload_frames` from the repository root.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proto_fuzz::harness::upload_frames(data));
