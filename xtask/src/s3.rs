//! The S3-compatible server that up-srv's store is tested against: found, or
//! installed into `target/tools/moto`, before anything else in `cargo xtask ci`.
//!
//! The server is moto's server mode (PyPI `moto[server]`, pinned to
//! [`MOTO_VERSION`]). Garage, the preferred real store, is not used: Garage 2.5
//! ignores `If-None-Match: *` on PutObject, which up-srv needs so two nodes
//! sharing a bucket cannot clobber each other (the store refuses such a server
//! at start), and Debian's radosgw needs a whole RADOS cluster behind it. moto
//! honours conditional writes; it does not check `x-amz-checksum-sha256`, so the
//! store reads every put back (it probes for that itself).
//!
//! Found in this order: `$UP_SRV_TEST_S3_SERVER`, the venv below
//! `target/tools/moto`, `moto_server` on `PATH`; else installed with
//! `python3 -m venv` and pip (python3 itself comes through [`install::tool`]).
//! The path is exported as `UP_SRV_TEST_S3_SERVER` so the tests that
//! `cargo test` runs find the same server.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::install;
use crate::service::project_root;

/// moto release installed when none is found.
pub const MOTO_VERSION: &str = "5.2.5";

/// Variable naming the `moto_server` executable for tests and e2e.
pub const SERVER_ENV: &str = "UP_SRV_TEST_S3_SERVER";

/// The venv xtask installs moto into.
pub fn install_dir() -> PathBuf {
    project_root().join("target/tools/moto")
}

/// Finds `moto_server`, installing it when missing; the error is one line that
/// says what to install.
pub fn server() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(SERVER_ENV).map(PathBuf::from) {
        return match path.is_file() {
            true => Ok(path),
            false => Err(format!("{SERVER_ENV}={} is not a file", path.display())),
        };
    }
    let venv_server = install_dir().join("bin/moto_server");
    if venv_server.is_file() {
        return Ok(venv_server);
    }
    if let Some(path) = install::on_path("moto_server") {
        return Ok(path);
    }
    let started = Instant::now();
    let python = install::tool("python3", "python3-venv", "the S3 store tests (moto)")?;
    eprintln!(
        "xtask: installing moto[server]=={MOTO_VERSION} into {} (about 2 minutes)",
        install_dir().display()
    );
    let venv = Command::new(&python)
        .args(["-m", "venv"])
        .arg(install_dir())
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !venv {
        return Err(format!(
            "`python3 -m venv {}` failed, needed for the S3 store tests (install Debian's `python3-venv` package)",
            install_dir().display()
        ));
    }
    let pip = Command::new(install_dir().join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .arg(format!("moto[server]=={MOTO_VERSION}"))
        .status()
        .is_ok_and(|s| s.success());
    if !pip || !venv_server.is_file() {
        return Err(format!(
            "`pip install moto[server]=={MOTO_VERSION}` failed, needed for the S3 store tests (is PyPI reachable?)"
        ));
    }
    eprintln!("xtask: moto installed in {:.0?}", started.elapsed());
    Ok(venv_server)
}

/// Finds or installs the server and exports its path to child processes.
pub fn export() -> Result<PathBuf, String> {
    let path = server()?;
    // Set before any thread or child starts, so every step sees it.
    std::env::set_var(SERVER_ENV, &path);
    Ok(path)
}

/// `cargo xtask s3`: find or install the server and say where it is.
pub fn run() -> anyhow::Result<()> {
    let path = server().map_err(anyhow::Error::msg)?;
    println!("{}", path.display());
    Ok(())
}
