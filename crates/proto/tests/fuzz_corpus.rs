//! Replays the committed fuzz corpora on stable, in every `cargo test` run.
//!
//! The fuzz crate (`fuzz/`, outside the workspace) needs `cargo fuzz` and a
//! sanitizer toolchain; its checks live in `fuzz/src/harness.rs`, which is
//! included here by path so the libFuzzer targets and this test cannot drift
//! apart. Every file under `fuzz/corpus/<target>/` (the minimised corpus, the
//! seeds and any named crash regressions) goes through the same check the
//! fuzzer ran; a panic names the file.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../fuzz/src/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::path::PathBuf;

/// Runs `check` on every file of one target's corpus and returns how many ran.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for file in &files {
        let data = std::fs::read(file).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "fuzz check {target} failed on {} (replay: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run {target} {})",
            file.display(),
            file.display()
        );
    }
    files.len()
}

#[test]
fn chat_line_corpus_replays_clean() {
    assert!(replay("chat_line", harness::chat_line) > 0, "empty corpus");
}

#[test]
fn upload_frames_corpus_replays_clean() {
    assert!(
        replay("upload_frames", harness::upload_frames) > 0,
        "empty corpus"
    );
}

#[test]
fn legacy_form_corpus_replays_clean() {
    assert!(
        replay("legacy_form", harness::legacy_form) > 0,
        "empty corpus"
    );
}
