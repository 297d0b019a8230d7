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

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::install;
use crate::service::project_root;

/// moto release installed when none is found.
pub const MOTO_VERSION: &str = "5.2.5";

/// Variable naming the `moto_server` executable for tests and e2e.
pub const SERVER_ENV: &str = "UP_SRV_TEST_S3_SERVER";

/// How long moto may take to print its address.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A stalled request to moto fails instead of hanging.
const HTTP_TIMEOUT: Duration = Duration::from_secs(300);

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

/// moto's server on 127.0.0.1 at a port it picks; killed on drop.
pub struct Moto {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
}

impl Moto {
    /// Starts `server` on a free loopback port, its output going to `log`.
    pub fn start(server: &Path, log: &Path) -> Result<Moto> {
        let mut child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", server.display()))?;
        let stderr = child.stderr.take().context("moto's stderr")?;
        let mut log = std::fs::File::create(log)?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .split("http://")
                    .nth(1)
                    .and_then(|a| a.trim().parse::<SocketAddr>().ok())
                {
                    let _ = tx.send(addr);
                }
                let _ = writeln!(log, "{line}");
            }
        });
        match rx.recv_timeout(START_DEADLINE) {
            Ok(addr) => Ok(Moto { addr, child }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} printed no address within {START_DEADLINE:?}",
                    server.display()
                )
            }
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One plain HTTP/1.1 request to moto (which takes unsigned requests); the
/// status and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)?;
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("HTTP reply without a header end")?;
    let head = String::from_utf8_lossy(&reply[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    ensure!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "chunked replies are not handled here"
    );
    Ok((status, reply[split + 4..].to_vec()))
}
