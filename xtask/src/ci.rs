//! `cargo xtask ci`: everything CI runs, in order, failing fast with the fix.
//!
//! 1. `cargo fmt --all --check`
//! 2. `cargo clippy --workspace --all-targets -- -D warnings`
//! 3. `cargo test --workspace` (this includes xtask's `tidy` tests)
//! 4. `cargo xtask e2e` (run in-process)
//! 5. `cargo xtask bench --quick` (a smoke run: it must succeed, its figures are not judged)
//!
//! Before step 1 it makes sure redis-server is there (the chat cluster tests run a real
//! one), installing Debian's package when it may, or stops with one line.
//!
//! `.ci/run` calls this, and the README names it as the test command.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::service;

/// One cargo invocation with the hint printed when it fails.
struct Step {
    title: &'static str,
    args: &'static [&'static str],
    fix: &'static str,
}

const CARGO_STEPS: [Step; 3] = [
    Step {
        title: "format",
        args: &["fmt", "--all", "--check"],
        fix: "run `cargo fmt --all` and rerun `cargo xtask ci`",
    },
    Step {
        title: "lint",
        args: &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        fix: "fix the warnings above (`cargo clippy --workspace --all-targets` shows them), then rerun",
    },
    Step {
        title: "tests",
        args: &["test", "--workspace"],
        fix: "fix the failing tests above; rerun one with `cargo test -p <crate> <name>`",
    },
];

const TOTAL_STEPS: usize = CARGO_STEPS.len() + 2;

/// Runs every CI step; the first failure ends the run with its fix-it hint.
pub fn run() -> Result<()> {
    let started = Instant::now();
    // Outside programs the steps need, before any step runs: found, installed, or
    // one line saying what to install.
    crate::e2e::cluster::redis_server().context("ci cannot start")?;
    // The store tests need a real S3-compatible server: found or installed first,
    // or one line saying what to install before any step runs.
    crate::s3::export().map_err(|e| anyhow::anyhow!("ci cannot run the S3 store tests: {e}"))?;
    for (i, step) in CARGO_STEPS.iter().enumerate() {
        header(i + 1, step.title, &format!("cargo {}", step.args.join(" ")));
        let status = service::cargo()
            .args(step.args)
            .status()
            .with_context(|| format!("running cargo {}", step.args[0]))?;
        if !status.success() {
            bail!("ci step `{}` failed ({status}): {}", step.title, step.fix);
        }
    }

    header(CARGO_STEPS.len() + 1, "end-to-end", "cargo xtask e2e");
    crate::e2e::run(crate::e2e::E2eArgs::default()).context(
        "ci step `end-to-end` failed: see the table above; rerun it alone with `cargo xtask e2e`",
    )?;

    header(
        TOTAL_STEPS,
        "benchmark smoke run",
        "cargo xtask bench --quick",
    );
    // Parsed like a command line so the bench options keep their own defaults.
    let bench = crate::Cli::try_parse_from(["cargo xtask", "bench", "--quick"])
        .context("parsing `bench --quick`")?;
    crate::run_task(bench.task).context(
        "ci step `bench --quick` failed: rerun `cargo xtask bench --quick` to see it alone",
    )?;

    println!(
        "\nci: all {TOTAL_STEPS} steps passed in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

fn header(n: usize, title: &str, command: &str) {
    println!("\n==> [{n}/{TOTAL_STEPS}] {title}: {command}");
    // Cargo's own output goes to stderr; flush so the header lands before it.
    let _ = std::io::Write::flush(&mut std::io::stdout());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_quick_parses_as_the_bench_task() {
        let cli = crate::Cli::try_parse_from(["cargo xtask", "bench", "--quick"]).expect("parse");
        assert!(matches!(cli.task, crate::Task::Bench(_)), "{:?}", cli.task);
    }

    #[test]
    fn every_cargo_step_has_a_fix_hint() {
        for step in &CARGO_STEPS {
            assert!(step.fix.contains('`'), "{} names no command", step.title);
        }
    }
}
