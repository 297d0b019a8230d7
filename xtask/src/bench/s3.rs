//! Uploads into S3-compatible storage (`up-srv --store`) beside the same uploads
//! into the local upload dir, in one run.
//!
//! The store is moto's server mode on a free loopback port (see `crate::s3`),
//! restarted for every round so its memory does not grow with the rounds. moto
//! does not check `x-amz-checksum-sha256`, so up-srv reads every object back
//! to verify it: the store figures include that second pass. Rounds of the
//! local dir and of the store alternate so drift hits both alike.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::procfs;
use super::report::{Figure, Row, Target};
use super::upload::Plan;
use crate::s3::{http, Moto};
use crate::service::{wait_with_timeout, Service};

/// Longest a single `up-cli` call may take (1 GiB through moto and back).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(900);

/// The bucket every round stores into.
const BUCKET: &str = "bench";

/// Runs the store cases; `work` holds the test files (removed afterwards).
pub fn run(bin: &Path, plan: &Plan, work: &Path) -> Result<Vec<Row>> {
    let dir = work.join("s3");
    let result = cases(bin, plan, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn cases(bin: &Path, plan: &Plan, dir: &Path) -> Result<Vec<Row>> {
    let server = crate::s3::server().map_err(anyhow::Error::msg)?;
    let files = dir.join("files");
    std::fs::create_dir_all(&files)?;
    let big = files.join("big.bin");
    std::fs::write(&big, pattern(plan.big_bytes as usize, 1))?;
    let small_dir = files.join("small");
    std::fs::create_dir_all(&small_dir)?;
    let mut small = Vec::with_capacity(plan.small_count);
    for i in 0..plan.small_count {
        let path = small_dir.join(format!("f{i:04}.bin"));
        std::fs::write(&path, pattern(plan.small_bytes, i as u8 ^ 0x5a))?;
        small.push(path);
    }
    let big_label = format!("{} MiB", plan.big_bytes >> 20);
    let small_label = format!("{} x {} KiB", plan.small_count, plan.small_bytes >> 10);
    let (mut big_local, mut big_store, mut small_local, mut small_store) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..plan.runs {
        eprintln!("bench: s3 store, run {}/{}", round + 1, plan.runs);
        let moto = Moto::start(&server, &dir.join("moto.log"))?;
        let (status, _) = http(moto.addr, "PUT", &format!("/{BUCKET}"))?;
        ensure!(status == 200, "creating the bench bucket: HTTP {status}");
        for (files, local, store) in [
            (std::slice::from_ref(&big), &mut big_local, &mut big_store),
            (&small[..], &mut small_local, &mut small_store),
        ] {
            let bytes: u64 = files
                .iter()
                .map(|f| f.metadata().map_or(0, |m| m.len()))
                .sum();
            let mb = bytes as f64 / 1e6;
            let t = upload(bin, &dir.join("local"), None, files)?;
            local.push(mb / t.as_secs_f64());
            let url = format!("s3://{BUCKET}/round{round}");
            let t = upload(
                bin,
                &dir.join("partials"),
                Some((&moto, url.as_str())),
                files,
            )?;
            store.push(mb / t.as_secs_f64());
        }
    }
    let row = |case: String, store: Vec<f64>, local: Vec<f64>| {
        Row::new(case, Figure::new(store, "MB/s"), Target::None)
            .against("local dir", Figure::new(local, "MB/s"))
            .note("moto: every put read back to verify")
    };
    Ok(vec![
        row(format!("{big_label} into S3 (moto)"), big_store, big_local),
        row(
            format!("{small_label} into S3 (moto)"),
            small_store,
            small_local,
        ),
    ])
}

/// One `up-cli` call against a fresh up-srv storing into `dir`, or into the
/// store at `url` with `dir` for partials; returns its wall time.
fn upload(
    bin: &Path,
    dir: &Path,
    store: Option<(&Moto, &str)>,
    files: &[PathBuf],
) -> Result<Duration> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let addr = procfs::free_addr()?;
    let mut server = Command::new(bin.join("up-srv"));
    server
        .args(["-b", "127.0.0.1", "-p", &addr.port().to_string(), "-d"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some((moto, url)) = store {
        server
            .args(["--store", url])
            .env("AWS_ENDPOINT_URL", format!("http://{}", moto.addr))
            .env("AWS_ACCESS_KEY_ID", "bench")
            .env("AWS_SECRET_ACCESS_KEY", "bench")
            .env("AWS_REGION", "us-east-1");
    }
    let _service = Service::start("up-srv", server, addr)?;
    let mut client = Command::new(bin.join("up-cli"));
    client
        .args(["--host", "127.0.0.1", "-p", &addr.port().to_string(), "-q"])
        .args(files)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let child = client.spawn().context("starting up-cli")?;
    let out = wait_with_timeout(child, UPLOAD_TIMEOUT).context("up-cli")?;
    let took = started.elapsed();
    ensure!(
        out.status.success(),
        "up-cli failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(took)
}

/// `len` deterministic bytes, distinct per seed.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(131) as u8) ^ seed.wrapping_add((i >> 10) as u8))
        .collect()
}
