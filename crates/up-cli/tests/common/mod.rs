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
            tx.send(listener.local_addr().expect("addr"))
                .expect("report addr");
            up_srv::run(listener, config, async move { token.cancelled().await })
                .await
                .expect("server run");
        });
    });
    let addr = rx.recv_timeout(DEADLINE).expect("server started");
    // The listener is bound, so the client can connect; the upload dir is
    // created by run() before it accepts, and the client waits in the backlog.
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
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_up-cli"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("UP_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn up-cli");
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
