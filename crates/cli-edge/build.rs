//! Build script: records the commit this build comes from as `SOCKCHAT_COMMIT`, so
//! `--version` of every tool names it; "unknown commit" outside a git checkout (for
//! example a crate unpacked by `cargo install` from a registry).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    // Rebuild when HEAD moves: HEAD itself (a branch switch) and the branch's ref.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{reference}");
        }
        if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
            println!("cargo:rerun-if-changed={common}/packed-refs");
        }
    }
    let commit = commit.map_or_else(|| "unknown commit".to_owned(), |c| format!("commit {c}"));
    println!("cargo:rustc-env=SOCKCHAT_COMMIT={commit}");
}
