//! A real S3-compatible server for the store tests, and a proxy that cuts it.
//!
//! [`S3Server::start`] runs moto's server mode (`moto_server`, installed by
//! `cargo xtask s3`, see xtask/src/s3.rs) on 127.0.0.1:0, learns its port from
//! the line it prints, and kills it on drop. [`CutProxy`] sits between a store
//! client and the server and, once armed, drops every connection after a given
//! number of request bytes and refuses new ones until restored: the store
//! "cut mid-put".

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long the server may take to print its address.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// Where `cargo xtask s3` installs moto (a venv below the workspace target dir),
/// overridable with `UP_SRV_TEST_S3_SERVER=/path/to/moto_server`.
pub fn moto_server() -> PathBuf {
    if let Some(path) = std::env::var_os("UP_SRV_TEST_S3_SERVER") {
        return PathBuf::from(path);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let installed = manifest.join("../../target/tools/moto/bin/moto_server");
    if installed.is_file() {
        return installed;
    }
    if let Some(on_path) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    }) {
        return on_path;
    }
    panic!(
        "moto_server not found: run `cargo xtask s3` to install it (or set UP_SRV_TEST_S3_SERVER)"
    );
}

/// A running moto server; killed when dropped.
pub struct S3Server {
    pub addr: SocketAddr,
    child: Child,
}

impl S3Server {
    /// Starts the server on a free loopback port and waits until it listens.
    pub fn start() -> S3Server {
        let mut child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting moto_server");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(addr) = line
                        .split("http://")
                        .nth(1)
                        .and_then(|a| a.trim().parse::<SocketAddr>().ok())
                    {
                        let _ = tx.send(addr);
                        sent = true;
                    }
                }
                // Keep draining so the server never blocks on a full pipe.
            }
        });
        let addr = match rx.recv_timeout(START_DEADLINE) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("moto_server printed no address within {START_DEADLINE:?}");
            }
        };
        S3Server { addr, child }
    }

    /// `http://addr`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `AWS_*` settings for a server at `endpoint` (moto takes any credentials).
pub fn settings(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Creates `bucket` (moto accepts unsigned requests).
pub async fn create_bucket(addr: SocketAddr, bucket: &str) {
    let mut s = TcpStream::connect(addr).await.expect("connecting to moto");
    let req = format!(
        "PUT /{bucket} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .expect("sending bucket create");
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)
        .await
        .expect("reading bucket create reply");
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "bucket create failed: {reply}"
    );
}

/// Forwards loopback TCP to `upstream`; can cut everything mid-stream.
pub struct CutProxy {
    pub addr: SocketAddr,
    /// Request bytes still allowed through once armed (u64::MAX = unarmed).
    budget: Arc<AtomicU64>,
    cut: watch::Sender<bool>,
    refusing: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// Listens on 127.0.0.1:0 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> CutProxy {
        Self::spawn(upstream, false).await
    }

    /// A proxy that renames the `if-none-match` request header, so the server
    /// behaves like a store without conditional writes (as Garage 2.5 does).
    pub async fn start_ignoring_conditions(upstream: SocketAddr) -> CutProxy {
        Self::spawn(upstream, true).await
    }

    async fn spawn(upstream: SocketAddr, strip: bool) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let budget = Arc::new(AtomicU64::new(u64::MAX));
        let refusing = Arc::new(AtomicBool::new(false));
        let (cut, _) = watch::channel(false);
        let task = {
            let (budget, refusing, cut) = (budget.clone(), refusing.clone(), cut.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if refusing.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let (budget, refusing, cut) = (budget.clone(), refusing.clone(), cut.clone());
                    tokio::spawn(forward(client, upstream, budget, refusing, cut, strip));
                }
            })
        };
        CutProxy {
            addr,
            budget,
            cut,
            refusing,
            task,
        }
    }

    /// `http://addr`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// After `bytes` more request bytes, drop every connection and refuse new ones.
    pub fn cut_after(&self, bytes: u64) {
        self.budget.store(bytes, Ordering::SeqCst);
    }

    /// Waits until the cut has happened.
    pub async fn wait_cut(&self) {
        let mut rx = self.cut.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Accepts and forwards again.
    pub fn restore(&self) {
        self.budget.store(u64::MAX, Ordering::SeqCst);
        self.refusing.store(false, Ordering::SeqCst);
        self.cut.send_replace(false);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    budget: Arc<AtomicU64>,
    refusing: Arc<AtomicBool>,
    cut: watch::Sender<bool>,
    strip: bool,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let mut cut_rx = cut.subscribe();
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if strip {
                // Same length, so Content-Length and framing stay right.
                rename(&mut buf[..n], b"if-none-match:", b"x-ignored-nm1:");
            }
            let left = budget.load(Ordering::SeqCst);
            if left != u64::MAX {
                let allowed = left.min(n as u64) as usize;
                budget.store(left - allowed as u64, Ordering::SeqCst);
                if allowed < n || left == allowed as u64 {
                    let _ = sw.write_all(&buf[..allowed]).await;
                    refusing.store(true, Ordering::SeqCst);
                    cut.send_replace(true);
                    return;
                }
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut_rx.wait_for(|c| *c) => {}
    }
}

/// Replaces every `from` in `buf` by `to` (same length).
fn rename(buf: &mut [u8], from: &[u8], to: &[u8]) {
    let mut i = 0;
    while i + from.len() <= buf.len() {
        if buf[i..i + from.len()].eq_ignore_ascii_case(from) {
            buf[i..i + from.len()].copy_from_slice(to);
            i += from.len();
        } else {
            i += 1;
        }
    }
}
