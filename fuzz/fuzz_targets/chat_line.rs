//! libFuzzer entry point for the `chat_line` checks in `src/harness.rs`; run with
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run chat_line` from the repository root.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proto_fuzz::harness::chat_line(data));
