//! Crash safety of the real `up-srv` binary (issue 6, docs/SECURITY.md):
//! SIGKILL in the middle of concurrent uploads, then a restart on the same
//! directory.
//!
//! Checked after the kill: every file under a final name is complete and has
//! its source's SHA-256 (fsync on, as in production); the restarted server
//! reports the partials it found and removes the legacy one (it has no name
//! to resume by); every interrupted upload resumes to the right digest; and
//! `--partial-max-age` removes partials older than the age.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{data, sha256, within, Client};
use proto::upload::{ClientMessage, ServerMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The server writes a body in blocks of this size; a test waits for one
/// block on disk before it kills the server.
const BLOCK: u64 = up_srv::body::BUFFER_SIZE as u64;

/// A running `up-srv` process; killed with SIGKILL when dropped.
struct Proc {
    child: Child,
    addr: SocketAddr,
    /// Every stderr line the process printed so far arrives here.
    log: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    /// Starts `up-srv` on port 0 storing into `dir`, and waits for its
    /// "listening on" line to learn the port.
    fn start(dir: &Path, extra: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_up-srv"))
            .args(["-b", "127.0.0.1", "-p", "0", "-d"])
            .arg(dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn up-srv");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = Proc {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            seen: Vec::new(),
        };
        let line = p.wait_line(|l| l.contains("listening on"));
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split([',', ' ']).next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        p.addr = addr;
        p
    }

    /// Waits (bounded) for a stderr line matching `want`; earlier lines are kept.
    fn wait_line(&mut self, want: impl Fn(&str) -> bool) -> String {
        if let Some(l) = self.seen.iter().find(|l| want(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + crate::common::TEST_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "up-srv never logged the expected line; log:\n{:#?}",
                    self.seen
                ),
            }
        }
    }

    /// SIGKILL, as a crash or the OOM killer would.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL up-srv");
        self.child.wait().expect("reap up-srv");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Regular files below `dir` (relative), the partial dir excluded.
fn final_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).expect("list").flatten() {
        let path = e.path();
        let rel = path.strip_prefix(root).expect("below root");
        if rel == Path::new(up_srv::storage::PARTIAL_DIR) {
            continue;
        }
        if e.file_type().expect("type").is_dir() {
            final_files(root, &path, out);
        } else {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

/// Sizes of the partial data files.
fn partial_sizes(dir: &Path) -> Vec<u64> {
    std::fs::read_dir(dir.join(up_srv::storage::PARTIAL_DIR))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".data"))
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

struct Source {
    name: String,
    body: Vec<u8>,
    /// Fraction of the body sent before the kill (1.0 = body sent, no finish).
    sent: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_upload_loses_nothing_and_every_upload_resumes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = tmp.path().join("uploads");
    let server = Proc::start(&dir, &[]);

    // Three uploads complete before the crash: they must survive it intact.
    let done: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("done/{i}.bin"), data(300_000 + i * 7, i as u8)))
        .collect();
    for (name, body) in &done {
        let mut c = Client::connect(server.addr).await;
        match c.upload(name, body).await {
            ServerMessage::Stored { sha256: d, .. } => assert_eq!(d, sha256(body)),
            other => panic!("{name}: {other:?}"),
        }
    }

    // Six uploads are in flight at the kill, cut at different depths.
    let cut: Vec<Source> = [0.2, 0.35, 0.5, 0.7, 0.99, 1.0]
        .into_iter()
        .enumerate()
        .map(|(i, sent)| Source {
            name: format!("cut/{i}.bin"),
            body: data(3_000_000 + i * 1001, 100 + i as u8),
            sent,
        })
        .collect();
    let mut clients = Vec::new();
    for src in &cut {
        let mut c = Client::connect(server.addr).await;
        assert!(matches!(
            c.offer(&src.name, src.body.len() as u64).await,
            ServerMessage::Accept { offset: 0, .. }
        ));
        c.send(ClientMessage::Start { offset: 0 }).await;
        let n = (src.body.len() as f64 * src.sent) as usize;
        c.raw(&src.body[..n]).await;
        clients.push(c);
    }
    // And one legacy upload (size as text, "1001", raw bytes): it has no
    // name to resume by, so its partial must be cleaned at restart.
    let legacy_body = data(1_500_000, 77);
    let mut legacy = within(tokio::net::TcpStream::connect(server.addr))
        .await
        .expect("connect legacy");
    within(legacy.write_all(format!("{}\n", legacy_body.len()).as_bytes()))
        .await
        .expect("legacy size");
    let mut reply = [0u8; 4];
    within(legacy.read_exact(&mut reply))
        .await
        .expect("legacy reply");
    assert_eq!(&reply, proto::upload::LEGACY_REPLY);
    within(legacy.write_all(&legacy_body[..1_000_000]))
        .await
        .expect("legacy body");

    // Kill once every interrupted upload has bytes on disk (the server writes
    // the body in blocks of `BUFFER_SIZE`): the crash hits files that are
    // really half-written, not empty.
    within(async {
        while partial_sizes(&dir).iter().filter(|&&n| n >= BLOCK).count() < cut.len() + 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    server.kill();
    drop(clients);
    drop(legacy);

    let check_finals = |stage: &str| {
        let mut files = Vec::new();
        final_files(&dir, &dir, &mut files);
        files.sort();
        let want: Vec<String> = done.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(files, want, "{stage}: files under final names");
        for (name, body) in &done {
            let got = std::fs::read(dir.join(name)).expect("read stored");
            assert_eq!(sha256(&got), sha256(body), "{stage}: {name} is damaged");
        }
    };
    check_finals("after SIGKILL");

    // Restart on the same directory: the partials are reported and kept.
    let mut server = Proc::start(&dir, &[]);
    check_finals("after restart");
    for src in &cut {
        server.wait_line(|l| l.contains("resumable partial upload kept") && l.contains(&src.name));
    }
    let removed = server.wait_line(|l| l.contains("stale partial"));
    assert!(removed.contains("removed 1 "), "{removed}");

    // Each interrupted upload resumes from what the disk really holds.
    let mut resumed_bytes = 0u64;
    for src in &cut {
        let mut c = Client::connect(server.addr).await;
        let offset = match c.offer(&src.name, src.body.len() as u64).await {
            ServerMessage::Accept {
                offset,
                prefix_sha256,
            } => {
                assert!(offset as usize <= src.body.len());
                assert_eq!(
                    prefix_sha256,
                    sha256(&src.body[..offset as usize]),
                    "{}: kept prefix differs from the source",
                    src.name
                );
                offset
            }
            other => panic!("{}: {other:?}", src.name),
        };
        resumed_bytes += offset;
        match c
            .body_and_finish(&src.body, offset, sha256(&src.body))
            .await
        {
            ServerMessage::Stored { name, sha256: d } => {
                assert_eq!(name, src.name);
                assert_eq!(d, sha256(&src.body));
            }
            other => panic!("{}: {other:?}", src.name),
        }
        let got = std::fs::read(dir.join(&src.name)).expect("read resumed");
        assert_eq!(sha256(&got), sha256(&src.body), "{}", src.name);
    }
    assert!(
        resumed_bytes > 0,
        "no byte survived the crash to resume from"
    );
    assert!(
        partial_sizes(&dir).is_empty(),
        "partials left after resuming"
    );
    println!(
        "crash: {} uploads interrupted by SIGKILL ({} bytes kept and resumed, 1 legacy partial cleaned), {} files checked",
        cut.len() + 1,
        resumed_bytes,
        done.len() + cut.len()
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partials_older_than_the_max_age_are_removed_at_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = tmp.path().join("uploads");
    let server = Proc::start(&dir, &[]);
    let body = data(1_500_000, 5);
    let mut c = Client::connect(server.addr).await;
    assert!(matches!(
        c.offer("old.bin", body.len() as u64).await,
        ServerMessage::Accept { offset: 0, .. }
    ));
    c.send(ClientMessage::Start { offset: 0 }).await;
    c.raw(&body[..1_000_000]).await;
    within(async {
        while !partial_sizes(&dir).iter().any(|&n| n >= BLOCK) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    server.kill();
    drop(c);

    // A generous age keeps it...
    let mut server = Proc::start(&dir, &["--partial-max-age", "3600"]);
    server.wait_line(|l| l.contains("resumable partial upload kept") && l.contains("old.bin"));
    assert_eq!(partial_sizes(&dir).len(), 1);
    server.kill();

    // ...an age it has outlived removes it, and the start says so.
    let mut server = Proc::start(&dir, &["--partial-max-age", "0"]);
    let line = server.wait_line(|l| l.contains("stale partial"));
    assert!(line.contains("removed 1"), "{line}");
    assert!(partial_sizes(&dir).is_empty(), "stale partial still there");
    let mut leftovers = Vec::new();
    final_files(&dir, &dir, &mut leftovers);
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A new offer of the same file starts from zero.
    let mut c = Client::connect(server.addr).await;
    assert!(matches!(
        c.offer("old.bin", body.len() as u64).await,
        ServerMessage::Accept { offset: 0, .. }
    ));
    drop(server);
}
