//! `cargo xtask soak`: the hardening tests at full size (docs/SECURITY.md).
//!
//! The hostile-client, fault and crash tests run in every `cargo test`, the
//! chat load test scaled down (200 clients for 5 s). This task runs them in
//! release mode with `SOAK=1`, which selects the full load (2,000 clients in
//! 40 rooms for 60 s while 50 clients connect and disconnect), one test at a
//! time so they do not compete for the machine, and prints the figures the
//! tests report. With `--fuzz SECS` it then runs each `cargo fuzz` target for
//! that long (this needs `cargo-fuzz`; the stable toolchain is enough with
//! `RUSTC_BOOTSTRAP=1`, which this task sets).

use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::service;

/// Options of `cargo xtask soak`.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// Also run each fuzz target for this many seconds (0 = no fuzzing)
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub fuzz: u64,
}

/// One `cargo test` run of hardening test binaries.
struct Suite {
    title: &'static str,
    package: &'static str,
    tests: &'static [&'static str],
    /// Test-name filters inside those binaries (empty = all).
    filters: &'static [&'static str],
}

const SUITES: [Suite; 2] = [
    Suite {
        title: "chat-srv: slowloris, garbage flood, rooms under load with churn",
        package: "chat-srv",
        tests: &["hostile"],
        filters: &[],
    },
    Suite {
        title: "up-srv: hostile clients, cut uploads, corruption, disk full, SIGKILL",
        package: "up-srv",
        // up-srv's integration tests are one binary; its modules are the filters.
        tests: &["tests"],
        filters: &["hostile::", "crash::"],
    },
];

/// The fuzz targets of `fuzz/` (see `fuzz/Cargo.toml`).
const FUZZ_TARGETS: [&str; 3] = ["chat_line", "upload_frames", "legacy_form"];

/// Runs the full-size hardening tests, then the optional fuzzing.
pub fn run(args: SoakArgs) -> Result<()> {
    let started = Instant::now();
    for suite in &SUITES {
        println!("== soak: {}", suite.title);
        let mut cmd = service::cargo();
        cmd.args(["test", "--release", "-p", suite.package]);
        for test in suite.tests {
            cmd.args(["--test", test]);
        }
        cmd.arg("--").args(suite.filters);
        cmd.args(["--test-threads=1", "--nocapture"])
            .env("SOAK", "1");
        let status = cmd
            .status()
            .with_context(|| format!("running the {} soak tests", suite.package))?;
        if !status.success() {
            bail!(
                "the {} soak tests failed (rerun one with `SOAK=1 cargo test --release -p {} --test <file> <name> -- --nocapture`)",
                suite.package,
                suite.package
            );
        }
    }
    if args.fuzz > 0 {
        fuzz(args.fuzz)?;
    }
    println!("soak passed in {:.0?}", started.elapsed());
    Ok(())
}

/// Runs every fuzz target for `secs` seconds, one after the other.
fn fuzz(secs: u64) -> Result<()> {
    let fuzz_dir = service::project_root().join("fuzz");
    for target in FUZZ_TARGETS {
        println!("== soak: fuzzing {target} for {secs} s");
        let mut cmd = service::cargo();
        cmd.current_dir(&fuzz_dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "-O", target, "--"])
            .arg(format!("-max_total_time={secs}"))
            .args(["-max_len=4096", "-print_final_stats=1"]);
        let status = cmd.status().with_context(|| {
            format!("running cargo fuzz for {target} (install it with `cargo install cargo-fuzz`)")
        })?;
        if !status.success() {
            bail!(
                "fuzzing {target} failed: the crashing input is under fuzz/artifacts/{target}/; \
                 minimise it with `cargo fuzz tmin {target} <file>` and keep it in fuzz/corpus/{target}/ \
                 as a regression"
            );
        }
    }
    Ok(())
}
