//! Release builds and server child processes for the tasks that drive real binaries.
//!
//! [`Bins`] finds the four release binaries and starts the servers with their logs in a
//! file. A [`Service`] is a spawned server; dropping it kills the child, so a failed run
//! never leaves a port such as 8888 or 9998 taken. Readiness is "a TCP connect
//! succeeds", polled against a deadline, never a fixed sleep.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The workspace root, found from this crate's manifest directory.
///
/// Found at run time, never frozen at compile time: `cargo run` (the `cargo xtask` alias)
/// sets `CARGO_MANIFEST_DIR` to this checkout's `xtask/`, so a copied or moved checkout
/// works in the copy. Without it (the binary run by hand), the nearest folder above the
/// current directory whose `Cargo.toml` declares `[workspace]` is the root.
pub fn project_root() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    root_from(
        std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from),
        &cwd,
    )
}

/// [`project_root`] for a given `CARGO_MANIFEST_DIR` and current directory.
fn root_from(manifest_dir: Option<PathBuf>, cwd: &Path) -> PathBuf {
    if let Some(parent) = manifest_dir.as_deref().and_then(Path::parent) {
        return parent.to_path_buf();
    }
    cwd.ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|toml| toml.lines().any(|l| l.trim() == "[workspace]"))
        })
        .unwrap_or(cwd)
        .to_path_buf()
}

/// The cargo that runs this task (`$CARGO`), or `cargo` from `PATH`.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(project_root());
    cmd
}

/// Builds the workspace's release binaries and returns the folder that holds them.
pub fn build_release() -> Result<PathBuf> {
    let status = cargo()
        .args([
            "build",
            "--release",
            "--workspace",
            "--bins",
            "--exclude",
            "xtask",
        ])
        .status()
        .context("running cargo build --release")?;
    if !status.success() {
        bail!("cargo build --release failed ({status}); fix the build errors above and retry");
    }
    Ok(target_dir().join("release"))
}

/// The path of the release binary `name` inside `bin_dir` (from [`build_release`]).
pub fn bin(bin_dir: &Path, name: &str) -> PathBuf {
    bin_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// `preferred` on `ip` when nothing listens there, otherwise a free port the OS picks.
///
/// The second value is `true` when the preferred port was busy. The free port is
/// released before returning, so another process could take it in between; on a
/// developer's loopback that window is harmless, and the caller reports a bind failure.
pub fn port_or_free(ip: IpAddr, preferred: u16) -> Result<(SocketAddr, bool)> {
    let addr = SocketAddr::new(ip, preferred);
    if TcpListener::bind(addr).is_ok() {
        return Ok((addr, false));
    }
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))
        .with_context(|| format!("finding a free port on {ip}"))?;
    Ok((listener.local_addr()?, true))
}

/// The cargo target directory (`$CARGO_TARGET_DIR` or `<root>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target"))
}

/// Fails with a message naming the port when something already listens on `addr`.
pub fn ensure_port_free(addr: SocketAddr, flag: &str) -> Result<()> {
    match TcpListener::bind(addr) {
        Ok(listener) => {
            drop(listener);
            Ok(())
        }
        Err(err) => bail!(
            "port {} on {} is busy ({err}); stop whatever uses it or pick another with {flag}",
            addr.port(),
            addr.ip()
        ),
    }
}

/// Waits until a TCP connect to `addr` succeeds, polling until `timeout` passes.
pub fn wait_until_accepting(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() >= deadline => {
                bail!("nothing accepted connections on {addr} within {timeout:?}: {err}")
            }
            // Polling a local port: a short yield keeps this loop from spinning a core.
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Runs `cmd` to completion with `stdin` as its input, capturing stdout and stderr.
///
/// A child still running after `timeout` is killed and the call fails with what it had
/// printed so far, so a client that hangs fails its check instead of the whole run.
pub fn output_with_timeout(mut cmd: Command, stdin: &[u8], timeout: Duration) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let mut input = child.stdin.take().context("child stdin")?;
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // A child that exits without reading its input closes the pipe; that is its business.
        let _ = input.write_all(&stdin);
    });
    let out = wait_with_timeout(child, timeout).with_context(|| program.clone());
    let _ = writer.join();
    out
}

/// Waits for `child`, capturing whichever of its stdout and stderr are pipes, and
/// kills it after `timeout`; the error then carries what it had printed so far.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> Result<Output> {
    // Pipes are drained on their own threads so a chatty child never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = stdout.join().unwrap_or_default();
            let err = stderr.join().unwrap_or_default();
            bail!(
                "still running after {timeout:?}, killed; stdout: {:?}; stderr: {:?}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
        // Exit is noticed within a millisecond: small next to any time measured with it.
        std::thread::sleep(Duration::from_millis(1));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Copies each line of `pipe` to stderr behind `[name] ` until the pipe closes.
fn prefix_lines(name: &str, pipe: impl Read + Send + 'static) {
    let prefix = format!("[{name}] ");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe)
            .split(b'\n')
            .map_while(Result::ok)
        {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(prefix.as_bytes());
            let _ = err.write_all(&line);
            let _ = err.write_all(b"\n");
        }
    });
}

/// A server running as a child process; killed on drop unless stopped first.
pub struct Service {
    name: String,
    child: Option<Child>,
    /// The address the server was told to listen on.
    pub addr: SocketAddr,
}

impl Service {
    /// Spawns `cmd` (stdout/stderr as configured by the caller, stdin closed) and
    /// waits until `addr` accepts connections.
    pub fn start(name: &str, mut cmd: Command, addr: SocketAddr) -> Result<Service> {
        cmd.stdin(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Service::ready(name, child, addr)
    }

    /// Like [`Service::start`], with every line the child writes to stdout or stderr
    /// copied to this process's stderr behind `[name] `, so two servers sharing one
    /// terminal can be told apart.
    pub fn start_prefixed(name: &str, mut cmd: Command, addr: SocketAddr) -> Result<Service> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        if let Some(out) = child.stdout.take() {
            prefix_lines(name, out);
        }
        if let Some(err) = child.stderr.take() {
            prefix_lines(name, err);
        }
        Service::ready(name, child, addr)
    }

    /// Wraps a spawned `child` and waits until `addr` accepts connections.
    fn ready(name: &str, child: Child, addr: SocketAddr) -> Result<Service> {
        let mut service = Service {
            name: name.to_owned(),
            child: Some(child),
            addr,
        };
        if let Err(err) = wait_until_accepting(addr, Duration::from_secs(20)) {
            if let Some(status) = service.try_status()? {
                bail!("{name} exited early with {status} instead of listening on {addr}");
            }
            return Err(err.context(format!("{name} did not become ready")));
        }
        Ok(service)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The exit status if the child has already exited.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .with_context(|| format!("checking on {}", self.name)),
            None => Ok(None),
        }
    }

    /// The name the service was started with (`chat-srv`, `up-srv`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; returns its status.
    ///
    /// A child that outlives the timeout is killed and the call fails, so a server
    /// that ignores SIGTERM shows up as an error rather than a hang.
    pub fn terminate(mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().context("service already stopped")?;
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        let pid = i32::try_from(child.id()).context("process id out of range")?;
        kill(Pid::from_raw(pid), Signal::SIGTERM)
            .with_context(|| format!("sending SIGTERM to {} (pid {pid})", self.name))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The four release binaries, checked to exist.
pub struct Bins {
    pub chat_srv: PathBuf,
    pub chat_cli: PathBuf,
    pub up_srv: PathBuf,
    pub up_cli: PathBuf,
}

impl Bins {
    /// Finds the binaries in `dir`, failing with a hint when one is missing.
    pub fn new(dir: &Path) -> Result<Bins> {
        let find = |name: &str| -> Result<PathBuf> {
            let path = bin(dir, name);
            ensure!(
                path.is_file(),
                "{} is missing after the build (is `{name}` a binary of crates/{name}?)",
                path.display()
            );
            Ok(path)
        };
        Ok(Bins {
            chat_srv: find("chat-srv")?,
            chat_cli: find("chat-cli")?,
            up_srv: find("up-srv")?,
            up_cli: find("up-cli")?,
        })
    }

    /// Starts `chat-srv` on `addr`, its log (stderr) going to `log`.
    pub fn start_chat(&self, addr: SocketAddr, log: &Path) -> Result<Service> {
        let mut cmd = Command::new(&self.chat_srv);
        cmd.args(["-b", &addr.ip().to_string(), "-p", &addr.port().to_string()]);
        start_logged("chat-srv", cmd, addr, log)
    }

    /// Starts `up-srv` on `addr` storing into `dir`, its log (stderr) going to `log`.
    pub fn start_up(&self, addr: SocketAddr, dir: &Path, log: &Path) -> Result<Service> {
        let mut cmd = Command::new(&self.up_srv);
        cmd.args(["-b", &addr.ip().to_string(), "-p", &addr.port().to_string()]);
        cmd.arg("-d").arg(dir);
        start_logged("up-srv", cmd, addr, log)
    }

    /// An `up-cli` command aimed at `addr`.
    pub fn up_cli(&self, addr: SocketAddr) -> Command {
        client_command(&self.up_cli, addr)
    }

    /// A `chat-cli` command aimed at `addr`.
    pub fn chat_cli(&self, addr: SocketAddr) -> Command {
        client_command(&self.chat_cli, addr)
    }
}

/// Starts `cmd` as `name` with its stderr going to `log`, ready once `addr` accepts.
pub fn start_logged(name: &str, mut cmd: Command, addr: SocketAddr, log: &Path) -> Result<Service> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir)?;
    }
    let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    // The log is a file, so no colour escapes in it.
    cmd.stdout(Stdio::null()).stderr(file).env("NO_COLOR", "1");
    Service::start(name, cmd, addr).with_context(|| {
        format!(
            "{name} did not start on {addr}; its log is {}:\n{}",
            log.display(),
            fs::read_to_string(log).unwrap_or_default().trim_end()
        )
    })
}

/// A client binary's command with `--host` and `-p` set to `addr` (both clients
/// take the same two flags).
fn client_command(program: &Path, addr: SocketAddr) -> Command {
    let mut cmd = Command::new(program);
    cmd.args([
        "--host",
        &addr.ip().to_string(),
        "-p",
        &addr.port().to_string(),
    ]);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copied checkout resolves to the copy: the root follows the run-time
    /// `CARGO_MANIFEST_DIR`, or the workspace above the current directory.
    #[test]
    fn copied_checkout_resolves_to_the_copy() {
        let copy = std::env::temp_dir().join(format!("xtask-root-{}", std::process::id()));
        let nested = copy.join("crates/proto/src");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::create_dir_all(copy.join("xtask")).unwrap();
        std::fs::write(copy.join("Cargo.toml"), "[workspace]\nmembers = []\n").unwrap();
        std::fs::write(copy.join("crates/proto/Cargo.toml"), "[package]\n").unwrap();

        assert_eq!(root_from(Some(copy.join("xtask")), Path::new("/")), copy);
        assert_eq!(root_from(None, &nested), copy);
        // And this very test, run by cargo from this checkout, sees this checkout.
        let here = project_root();
        assert!(
            here.join("xtask/src/service.rs").is_file(),
            "{}",
            here.display()
        );
        std::fs::remove_dir_all(&copy).unwrap();
    }
}
