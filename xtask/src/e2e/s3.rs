//! End-to-end checks of `up-srv --store s3://...` against a real S3-compatible
//! server (moto's server mode, found or installed by `crate::s3`) on a free
//! loopback port.
//!
//! Three up-srv nodes share one bucket: A and B talk to the server directly, C
//! through a loopback proxy that can cut the store mid-put. The checks send the
//! e2e images with the real `up-cli`, then read the objects and their records
//! back from the server itself (plain HTTP GETs, independent of up-srv) and
//! compare SHA-256 digests with the sources:
//!
//! - uploads land as objects whose bytes and records match the sources;
//! - the same command run again (against the other node) stores nothing new;
//! - two nodes storing different files under one name at once give `name` and
//!   `name (1)`, each holding its own bytes;
//! - the store cut mid-put: up-cli hears a refusal, nothing is stored, and the
//!   rerun completes from the partial the node kept.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest as _, Sha256};

use super::{Report, Source, UPLOAD_TIMEOUT};
use crate::s3::{http, Moto};
use crate::service::{self, Bins, Service};
use crate::verify::{self, StoredLine};

/// Bucket and prefix every node stores into.
const BUCKET: &str = "e2e-uploads";
const PREFIX: &str = "nodes";

/// Request bytes the proxy lets through before the cut: inside the big file's put.
const CUT_AFTER: u64 = 6 << 20;

/// Size of the file cut mid-put (several multipart parts).
const BIG: usize = 24 << 20;

/// Runs the S3 checks into `report`; `sources` are the e2e files to upload.
pub fn checks(report: &mut Report, bins: &Bins, work: &Path, sources: &[&Source]) {
    let setup = Setup::start(bins, &work.join("s3"));
    let setup = match setup {
        Ok(s) => s,
        Err(e) => {
            report.check("s3: store server and three up-srv nodes", || Err(e));
            return;
        }
    };
    report.check("s3: uploads land verified in the store", || {
        setup.uploads(sources)
    });
    report.check("s3: rerun on another node stores nothing", || {
        setup.rerun(sources)
    });
    report.check("s3: two nodes, one name: name and name (1)", || {
        setup.same_name()
    });
    report.check("s3: store cut mid-put, the rerun completes", || {
        setup.cut_and_rerun()
    });
}

/// The store server, the proxy and the nodes; all stopped on drop.
struct Setup {
    moto: Moto,
    proxy: CutProxy,
    bins: Bins,
    a: Node,
    b: Node,
    c: Node,
    dir: PathBuf,
}

/// One up-srv with `--store`.
struct Node {
    addr: SocketAddr,
    _service: Service,
}

impl Setup {
    fn start(bins: &Bins, dir: &Path) -> Result<Setup> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        let server = crate::s3::server().map_err(anyhow::Error::msg)?;
        let moto = Moto::start(&server, &dir.join("moto.log"))?;
        let (status, body) = http(moto.addr, "PUT", &format!("/{BUCKET}"))?;
        ensure!(
            status == 200,
            "creating the bucket: HTTP {status} {}",
            String::from_utf8_lossy(&body)
        );
        let proxy = CutProxy::start(moto.addr)?;
        let bins = Bins::new(bins.up_srv.parent().context("binary dir")?)?;
        let node = |name: &str, store: SocketAddr| -> Result<Node> {
            let addr = free_port()?;
            let mut cmd = Command::new(&bins.up_srv);
            cmd.args([
                "-b",
                "127.0.0.1",
                "-p",
                &addr.port().to_string(),
                "--allow-get",
            ])
            .arg("-d")
            .arg(dir.join(name))
            .arg("--store")
            .arg(format!("s3://{BUCKET}/{PREFIX}"))
            .env("AWS_ENDPOINT_URL", format!("http://{store}"))
            .env("AWS_ACCESS_KEY_ID", "e2e")
            .env("AWS_SECRET_ACCESS_KEY", "e2e")
            .env("AWS_REGION", "us-east-1")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log")))?);
            let service = Service::start("up-srv", cmd, addr).with_context(|| {
                format!(
                    "up-srv node {name} did not start; see {}",
                    dir.join(format!("{name}.log")).display()
                )
            })?;
            Ok(Node {
                addr,
                _service: service,
            })
        };
        let a = node("node-a", moto.addr)?;
        let b = node("node-b", moto.addr)?;
        let c = node("node-c", proxy.addr)?;
        Ok(Setup {
            moto,
            proxy,
            bins,
            a,
            b,
            c,
            dir: dir.to_path_buf(),
        })
    }

    /// Runs up-cli against `node`; `Ok(Err(stderr))` when it failed.
    fn up_cli(
        &self,
        node: &Node,
        args: &[&std::ffi::OsStr],
    ) -> Result<Result<Vec<StoredLine>, String>> {
        let mut cmd = self.bins.up_cli(node.addr);
        cmd.arg("-q").args(args);
        let out = service::output_with_timeout(cmd, b"", UPLOAD_TIMEOUT)?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Ok(Err(stderr));
        }
        Ok(Ok(verify::parse_stored_lines(&String::from_utf8_lossy(
            &out.stdout,
        ))?))
    }

    /// The object under `name` and its record, read straight from the server.
    fn object(&self, name: &str) -> Result<(String, String)> {
        let (status, bytes) = http(
            self.moto.addr,
            "GET",
            &format!("/{BUCKET}/{PREFIX}/{}", encode(name)),
        )?;
        ensure!(status == 200, "GET of object {name}: HTTP {status}");
        let (status, record) = http(
            self.moto.addr,
            "GET",
            &format!("/{BUCKET}/{PREFIX}/.up-srv/records/{}", encode(name)),
        )?;
        ensure!(status == 200, "GET of the record of {name}: HTTP {status}");
        let record = String::from_utf8_lossy(&record).into_owned();
        let recorded = record
            .lines()
            .find_map(|l| l.strip_prefix("sha256 "))
            .with_context(|| format!("record of {name} has no sha256 line: {record:?}"))?
            .to_string();
        ensure!(
            record.contains("state stored"),
            "record of {name} is not stored: {record:?}"
        );
        Ok((hex(&Sha256::digest(&bytes)), recorded))
    }

    /// Fails unless `name` is in the store with the bytes of `digest`.
    fn holds(&self, name: &str, digest: &str) -> Result<()> {
        let (actual, recorded) = self.object(name)?;
        ensure!(
            actual == digest,
            "{name}: the object hashes to {actual}, the source to {digest}"
        );
        ensure!(
            recorded == digest,
            "{name}: recorded {recorded}, the source is {digest}"
        );
        Ok(())
    }

    /// Number of data objects (records and probes excluded) under the prefix.
    fn object_count(&self) -> Result<usize> {
        let (status, body) = http(
            self.moto.addr,
            "GET",
            &format!("/{BUCKET}?list-type=2&prefix={PREFIX}/"),
        )?;
        ensure!(status == 200, "listing the bucket: HTTP {status}");
        let body = String::from_utf8_lossy(&body);
        Ok(body
            .split("<Key>")
            .skip(1)
            .filter(|k| !k.starts_with(&format!("{PREFIX}/.up-srv/")))
            .count())
    }

    fn uploads(&self, sources: &[&Source]) -> Result<String> {
        let args: Vec<&std::ffi::OsStr> = sources.iter().map(|s| s.path.as_os_str()).collect();
        let lines = self
            .up_cli(&self.a, &args)?
            .map_err(|e| anyhow::anyhow!("up-cli failed: {}", super::tail(&e)))?;
        for source in sources {
            let name = source.file_name();
            let line = lines
                .iter()
                .find(|l| l.name == name)
                .with_context(|| format!("up-cli printed no line for {name}: {lines:?}"))?;
            ensure!(
                line.digest == source.digest,
                "{name}: up-cli printed {}, the source is {}",
                line.digest,
                source.digest
            );
            self.holds(&name, &source.digest)?;
        }
        let total: u64 = sources.iter().map(|s| s.len).sum();
        Ok(format!(
            "{} files ({}) through node A; objects and records match the sources",
            sources.len(),
            super::mib(total)
        ))
    }

    fn rerun(&self, sources: &[&Source]) -> Result<String> {
        let before = self.object_count()?;
        let args: Vec<&std::ffi::OsStr> = sources.iter().map(|s| s.path.as_os_str()).collect();
        let lines = self
            .up_cli(&self.b, &args)?
            .map_err(|e| anyhow::anyhow!("up-cli failed: {}", super::tail(&e)))?;
        for source in sources {
            let name = source.file_name();
            ensure!(
                lines
                    .iter()
                    .any(|l| l.name == name && l.digest == source.digest),
                "the rerun did not report {name} under its own name: {lines:?}"
            );
        }
        let after = self.object_count()?;
        ensure!(
            after == before,
            "the rerun added objects: {before} before, {after} after"
        );
        Ok(format!("same names through node B, still {after} objects"))
    }

    fn same_name(&self) -> Result<String> {
        let mut sources = Vec::new();
        for (i, seed) in [(0, 41u8), (1, 42u8)] {
            let dir = self.dir.join(format!("same-{i}"));
            std::fs::create_dir_all(&dir)?;
            let path = dir.join("same.bin");
            std::fs::write(&path, pattern(3 << 20, seed))?;
            sources.push(Source::new(path)?);
        }
        let spawn = |node: &Node, source: &Source| -> Result<Child> {
            let mut cmd = self.bins.up_cli(node.addr);
            cmd.arg("-q")
                .arg(&source.path)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            cmd.spawn().context("starting up-cli")
        };
        let first = spawn(&self.a, &sources[0])?;
        let second = spawn(&self.b, &sources[1])?;
        let mut names = Vec::new();
        for (child, source) in [(first, &sources[0]), (second, &sources[1])] {
            let out = child.wait_with_output()?;
            ensure!(
                out.status.success(),
                "up-cli exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let lines = verify::parse_stored_lines(&String::from_utf8_lossy(&out.stdout))?;
            let line = lines.first().context("up-cli printed no stored line")?;
            ensure!(
                line.digest == source.digest,
                "{}: wrong digest printed",
                line.name
            );
            self.holds(&line.name, &source.digest)?;
            names.push(line.name.clone());
        }
        names.sort();
        ensure!(names == ["same (1).bin", "same.bin"], "stored as {names:?}");
        Ok("same.bin and same (1).bin, each with its own bytes".into())
    }

    fn cut_and_rerun(&self) -> Result<String> {
        let dir = self.dir.join("cut");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("cut.bin");
        std::fs::write(&path, pattern(BIG, 43))?;
        let source = Source::new(path)?;
        let before = self.object_count()?;
        self.proxy.cut_after(CUT_AFTER);
        let first = self.up_cli(&self.c, &[source.path.as_os_str()])?;
        let Err(stderr) = first else {
            bail!("up-cli succeeded although the store was cut");
        };
        ensure!(self.proxy.was_cut(), "the proxy never cut the store");
        self.proxy.restore();
        ensure!(
            stderr.contains("store"),
            "up-cli's error does not mention the store: {}",
            super::tail(&stderr)
        );
        ensure!(
            self.object_count()? == before,
            "a cut put left an object behind"
        );
        let lines = self
            .up_cli(&self.c, &[source.path.as_os_str()])?
            .map_err(|e| anyhow::anyhow!("the rerun failed: {}", super::tail(&e)))?;
        let line = lines.first().context("the rerun printed no stored line")?;
        ensure!(line.name == "cut.bin", "the rerun stored {}", line.name);
        self.holds("cut.bin", &source.digest)?;
        Ok(format!(
            "refused after {} reached the store, rerun stored {} verified",
            super::mib(CUT_AFTER),
            super::mib(BIG as u64)
        ))
    }
}

/// Loopback TCP forwarder that, once armed, cuts every connection after a
/// number of request bytes and refuses new ones until restored.
struct CutProxy {
    addr: SocketAddr,
    budget: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl CutProxy {
    fn start(upstream: SocketAddr) -> Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let proxy = CutProxy {
            addr,
            budget: Arc::new(AtomicU64::new(u64::MAX)),
            cut: Arc::new(AtomicBool::new(false)),
            open: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (budget, cut, open, stop) = (
            proxy.budget.clone(),
            proxy.cut.clone(),
            proxy.open.clone(),
            proxy.stop.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if cut.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                    let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
                    open.push(c);
                    open.push(s);
                }
                let (budget, cut, open) = (budget.clone(), cut.clone(), open.clone());
                let (Ok(client_r), Ok(server_w)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                std::thread::spawn(move || pump_up(client_r, server_w, &budget, &cut, &open));
                std::thread::spawn(move || {
                    let (mut from, mut to) = (server, client);
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Both);
                });
            }
        });
        Ok(proxy)
    }

    fn cut_after(&self, bytes: u64) {
        self.budget.store(bytes, Ordering::SeqCst);
    }

    fn was_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    fn restore(&self) {
        self.budget.store(u64::MAX, Ordering::SeqCst);
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        cut_all(&self.open);
    }
}

/// Copies client → server, spending the budget; when it runs out, cuts all.
fn pump_up(
    mut from: TcpStream,
    mut to: TcpStream,
    budget: &AtomicU64,
    cut: &AtomicBool,
    open: &Mutex<Vec<TcpStream>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let left = budget.load(Ordering::SeqCst);
        if left != u64::MAX && n as u64 >= left {
            let _ = to.write_all(&buf[..left as usize]);
            budget.store(0, Ordering::SeqCst);
            cut.store(true, Ordering::SeqCst);
            cut_all(open);
            return;
        }
        if left != u64::MAX {
            budget.store(left - n as u64, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn cut_all(open: &Mutex<Vec<TcpStream>>) {
    let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
    for s in open.drain(..) {
        let _ = s.shutdown(Shutdown::Both);
    }
}

/// Percent-encodes what an S3 key in a URL path may not hold raw.
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A free loopback port (bound and released; the node binds it right after).
fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// `len` deterministic bytes, distinct per seed.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) as u8) ^ seed.wrapping_mul((i >> 12) as u8 | 1))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
