//! Finding the outside programs that xtask drives (redis-server, S3 and IRC servers,
//! the benchmark's peers), installing a missing one from Debian's packages when xtask
//! runs as root with apt-get at hand.
//!
//! Every task that needs such a program goes through [`tool`], so one rule decides how
//! a program is found, installed, or named as missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Finds `bin` on `PATH`, installing the Debian package `package` when it is missing
/// and this process may (root, apt-get present). The error is one line saying what to
/// install, for `purpose` (for example "the redis baseline").
pub fn tool(bin: &str, package: &str, purpose: &str) -> Result<PathBuf, String> {
    if let Some(path) = on_path(bin) {
        return Ok(path);
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root || on_path("apt-get").is_none() {
        return Err(format!(
            "{bin} not found, needed for {purpose} (install Debian's `{package}` package)"
        ));
    }
    eprintln!("xtask: installing {package} for {purpose} (apt-get)");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get")
            .args(["update", "-q"])
            .stdout(Stdio::null())
            .status();
        if !install() {
            return Err(format!(
                "{bin} not found and `apt-get install {package}` failed, needed for {purpose}"
            ));
        }
    }
    on_path(bin).ok_or_else(|| format!("{bin} still not on PATH after installing {package}"))
}

/// The first executable file named `name` in a `PATH` directory.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}
