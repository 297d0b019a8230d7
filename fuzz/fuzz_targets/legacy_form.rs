//! libFuzzer entry point for the `legacy_form` checks in `src/harness.rs`; run with
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run legacy_form` from the repository root.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proto_fuzz::harness::legacy_form(data));
