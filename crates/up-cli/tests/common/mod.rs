//! Shared support for the up-cli subprocess tests: an in-process `up-srv` on
//! 127.0.0.1:0 running on its own runtime thread, and a runner for the real
//! `up-cli` binary with a deadline.

#![allow(dead_code)] // not every test uses every helper

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Deadline for one up-cli run and for server start/stop.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    _tmp: tempfile::TempDir,
}

impl TestServer {
    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(name)).unwrap_or_else(|e| panic!("reading stored {name}: {e}"))
    }

    pub fn exists(&self, name: &str) -> bool {
        self.dir.join(name).exists()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts up-srv in a temp dir after letting `tweak` adjust its config.
pub fn start_server_with(tweak: impl FnOnce(&mut up_srv::Config)) -> TestServer {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("uploads");
    let mut config = up_srv::Config::new(&dir);
    config.fsync = false;
    tweak(&mut config);
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let server = up_srv::spawn(listener, config).await.expect("server start");
            tx.send(server.addr).expect("report addr");
            token.cancelled().await;
            server.stop().await.expect("server run");
        });
    });
    let addr = rx.recv_timeout(DEADLINE).expect("server started");
    // The listener is bound and spawn() has opened the upload dir, so the
    // client can connect at once (it waits in the backlog if need be).
    TestServer {
        addr,
        dir,
        shutdown,
        thread: Some(thread),
        _tmp: tmp,
    }
}

pub fn start_server() -> TestServer {
    start_server_with(|_| {})
}

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

/// Runs up-cli with `args` in `cwd`, killing it after [`DEADLINE`].
pub fn up_cli(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    up_cli_with_input(cwd, args, env, None)
}

/// Like [`up_cli`], with `input` on standard input.
pub fn up_cli_with_input(
    cwd: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    input: Option<&[u8]>,
) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_up-cli"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("UP_TOKEN")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn up-cli");
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write as _;
        stdin.write_all(input).expect("write stdin");
    }
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("up-cli {args:?} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        code: status.code(),
        stdout: out_t.join().expect("stdout reader"),
        stderr: err_t.join().expect("stderr reader"),
        took: started.elapsed(),
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    proto::upload::hex(&sha2::Sha256::digest(data))
}

pub fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[1] ^ seed)
        .collect()
}

/// A loopback port held by a bound socket that never listens: connecting to
/// it is refused, and no other socket (a parallel test's server binding
/// port 0) can be given it while this is alive. A port merely freed could be.
pub struct RefusedPort {
    _socket: std::os::fd::OwnedFd,
    pub port: u16,
}

pub fn refused_port() -> RefusedPort {
    use nix::sys::socket::{
        bind, getsockname, socket, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    use std::os::fd::AsRawFd as _;
    let socket = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    bind(socket.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).expect("bind");
    let addr: SockaddrIn = getsockname(socket.as_raw_fd()).expect("getsockname");
    RefusedPort {
        _socket: socket,
        port: addr.port(),
    }
}

/// Final files under an upload dir (relative, sorted), partial dir excluded.
pub fn stored_files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("list upload dir").flatten() {
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .expect("below root")
                .to_string_lossy()
                .into_owned();
            if rel == up_srv::storage::PARTIAL_DIR {
                continue;
            }
            if e.file_type().expect("file type").is_dir() {
                walk(root, &path, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
