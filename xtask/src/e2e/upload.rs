//! Upload checks of issue 10, run by `cargo xtask e2e` after the basic
//! upload checks in `mod.rs`: a rerun stores nothing twice, `ls` lines
//! equal the SHA-256 of the stored images and `get` brings them back
//! verified, and standard input uploads with `--as`.
//!
//! up-srv is started here with `--allow-get`, which `ls` and `get` need.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};

use super::{mib, tail, Ctx, UPLOAD_TIMEOUT};
use crate::service::{self, Bins, Service};
use crate::verify;

/// Starts up-srv on `addr` storing into `dir`, serving `ls`/`get`, logging to `log`.
pub fn start_server(bins: &Bins, addr: SocketAddr, dir: &Path, log: &Path) -> Result<Service> {
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(&bins.up_srv);
    cmd.args(["-b", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .arg("-d")
        .arg(dir)
        .arg("--allow-get")
        .stdout(Stdio::null())
        .stderr(file)
        .env("NO_COLOR", "1");
    Service::start("up-srv", cmd, addr).with_context(|| {
        format!(
            "up-srv did not start on {addr}; its log is {}:\n{}",
            log.display(),
            fs::read_to_string(log).unwrap_or_default().trim_end()
        )
    })
}

/// Every regular file under the upload dir, partials excluded.
fn stored_count(dir: &Path) -> usize {
    fn walk(dir: &Path, top: bool) -> usize {
        let Ok(entries) = fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() && !(top && e.file_name() == ".partial") => {
                    walk(&e.path(), false)
                }
                Ok(t) if t.is_file() => 1,
                _ => 0,
            })
            .sum()
    }
    walk(dir, true)
}

impl Ctx {
    /// Runs up-cli with `args` and `stdin`, requiring success; stdout and stderr.
    fn up_cli_raw(&self, args: &[&std::ffi::OsStr], stdin: &[u8]) -> Result<(String, String)> {
        let mut cmd = self.bins.up_cli(self.up_addr);
        cmd.args(args);
        let out = service::output_with_timeout(cmd, stdin, UPLOAD_TIMEOUT)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(
            out.status.success(),
            "up-cli {args:?} exited with {}; stderr {:?}",
            out.status,
            tail(&stderr)
        );
        Ok((stdout, stderr))
    }

    /// The same files sent again: every one is "already stored", nothing new on disk.
    pub fn upload_rerun(&self) -> Result<String> {
        let before = stored_count(&self.uploads);
        let sources = &self.fixtures.many;
        let args: Vec<&std::ffi::OsStr> = sources.iter().map(|s| s.path.as_os_str()).collect();
        let (lines, stderr) = self.up_cli(&args)?;
        for source in sources {
            let name = source.file_name();
            self.verify_stored(&lines, source, &name, |n| n == name)?;
        }
        let want = format!("{} already stored", sources.len());
        ensure!(
            stderr.contains(&want),
            "the rerun did not report {want:?}; stderr {:?}",
            tail(&stderr)
        );
        let after = stored_count(&self.uploads);
        ensure!(
            after == before,
            "the rerun changed the upload dir from {before} to {after} files"
        );
        Ok(format!(
            "{} files rerun: all already stored, {before} files on disk before and after",
            sources.len()
        ))
    }

    /// `ls` equals sha256sum of the stored files; `get` of the images brings
    /// back bytes whose SHA-256 matches the sources.
    pub fn ls_get_round_trip(&self) -> Result<String> {
        let (stdout, _) = self.up_cli_raw(&["ls".as_ref()], b"")?;
        let listed = verify::parse_stored_lines(&stdout)?;
        ensure!(
            listed.len() == stored_count(&self.uploads),
            "ls printed {} lines for {} stored files",
            listed.len(),
            stored_count(&self.uploads)
        );
        for line in &listed {
            let digest = verify::sha256_file(&self.uploads.join(&line.name))?;
            ensure!(
                digest == line.digest,
                "ls says {} for {}, the stored file hashes to {digest}",
                line.digest,
                line.name
            );
        }
        let images: Vec<_> = self
            .fixtures
            .many
            .iter()
            .filter(|s| s.file_name().ends_with(".jpg") || s.file_name().ends_with(".png"))
            .collect();
        let out = service::target_dir().join("e2e/got");
        if out.exists() {
            fs::remove_dir_all(&out)?;
        }
        let names: Vec<String> = images.iter().map(|s| s.file_name()).collect();
        let mut args: Vec<&std::ffi::OsStr> = vec!["get".as_ref(), "-o".as_ref(), out.as_os_str()];
        args.extend(names.iter().map(std::ffi::OsStr::new));
        let (stdout, _) = self.up_cli_raw(&args, b"")?;
        let got = verify::parse_stored_lines(&stdout)?;
        ensure!(got.len() == images.len(), "get printed {got:?}");
        let mut bytes = 0;
        for source in &images {
            let path = out.join(source.file_name());
            let digest = verify::sha256_file(&path)?;
            ensure!(
                digest == source.digest,
                "{} came back hashing to {digest}, the source to {}",
                path.display(),
                source.digest
            );
            bytes += source.len;
        }
        Ok(format!(
            "ls: {} lines = sha256sum of the stored files; get: {} images ({}) back, SHA-256 match",
            listed.len(),
            images.len(),
            mib(bytes)
        ))
    }

    /// An image piped to `up-cli - --as NAME` is stored under NAME, verified.
    pub fn upload_stdin(&self) -> Result<String> {
        let source = &self.fixtures.legacy;
        let data = fs::read(&source.path)?;
        let args = ["-".as_ref(), "--as".as_ref(), "piped/stdin.jpg".as_ref()];
        let (stdout, _) = self.up_cli_raw(&args, &data)?;
        let lines = verify::parse_stored_lines(&stdout)?;
        self.verify_stored(&lines, source, "stdin", |n| n == "piped/stdin.jpg")?;
        Ok(format!(
            "{} piped, stored as piped/stdin.jpg, SHA-256 match",
            mib(source.len)
        ))
    }
}
