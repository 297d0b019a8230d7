//! Upload cases: `up-cli` → `up-srv` against a raw TCP copy measured in the same run.
//!
//! The raw copy is the floor any upload protocol pays: one connection, a 1 MiB
//! buffer, the same disk directory, the same fsync at the end, no hashing and no
//! framing beyond a length. Both sides run in this process on std threads and copy
//! through user space (no `sendfile`), as `up-cli` and `up-srv` must to hash.
//! Runs of the baseline and of the product alternate so drift hits both alike.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::peers::{self, Peer};
use super::procfs;
use super::report::{Figure, Row, Target};
use crate::service::{wait_with_timeout, Service};

/// Buffer of both ends of the raw copy.
const RAW_BUF: usize = 1 << 20;

/// A socket read or write that stalls this long fails the run instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest a single `up-cli` call may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// Sizes and counts for one bench run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Size of the big file.
    pub big_bytes: u64,
    /// Number of small files.
    pub small_count: usize,
    /// Size of each small file.
    pub small_bytes: usize,
    /// Repetitions of every case.
    pub runs: usize,
    /// Whether to run the peers (rsync, scp, curl to dufs) beside `up-cli`.
    pub peers: bool,
}

impl Plan {
    fn big_label(&self) -> String {
        let mib = self.big_bytes >> 20;
        if mib >= 1024 && mib % 1024 == 0 {
            format!("{} GiB", mib / 1024)
        } else {
            format!("{mib} MiB")
        }
    }
}

/// The two tables of the upload cases.
pub struct Tables {
    /// Throughput, memory and hashing ceilings, against the raw copy.
    pub upload: Vec<Row>,
    /// `up-cli` wall time beside each peer's.
    pub peers: Vec<Row>,
}

/// Wall times of one case (1 GiB or many small files) over the interleaved rounds.
#[derive(Default)]
struct Walls {
    raw: Vec<f64>,
    up: Vec<f64>,
    /// One list per peer, in the order of [`peers::start_all`].
    peers: Vec<Vec<f64>>,
}

/// Runs every upload case and the hashing ceilings; `work` holds the test data.
pub fn run(bin: &Path, plan: &Plan, work: &Path) -> Result<Tables> {
    let big = work.join("big.bin");
    eprintln!(
        "bench: generating {} test file {}",
        plan.big_label(),
        big.display()
    );
    write_test_file(&big, plan.big_bytes, 0)?;
    let small_dir = work.join("small");
    std::fs::create_dir_all(&small_dir)
        .with_context(|| format!("creating {}", small_dir.display()))?;
    let mut small = Vec::with_capacity(plan.small_count);
    for i in 0..plan.small_count {
        let path = small_dir.join(format!("f{i:04}.bin"));
        write_test_file(&path, plan.small_bytes as u64, i as u64 + 1)?;
        small.push(path);
    }

    let mut rows = Vec::new();
    let big_digest = hash_ceilings(bin, plan, &big, &mut rows)?;
    let small_digests = small
        .iter()
        .map(|p| sha256_file(p))
        .collect::<Result<Vec<_>>>()?;

    let store = work.join("store");
    let raw_dir = work.join("raw");
    let peer_list = if plan.peers {
        peers::start_all(&work.join("peers"))
    } else {
        Vec::new()
    };
    let ready: Vec<&Peer> = peer_list.iter().filter_map(|p| p.as_ref().ok()).collect();
    let mut big_walls = Walls {
        peers: vec![Vec::new(); ready.len()],
        ..Walls::default()
    };
    let mut small_walls = Walls {
        peers: vec![Vec::new(); ready.len()],
        ..Walls::default()
    };
    let mib = plan.big_bytes as f64 / 1e6;
    let (mut raw_sync, mut raw_nosync, mut up_sync, mut up_nosync) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut srv_peak, mut cli_peak) = (Vec::new(), Vec::new());
    for run in 0..plan.runs {
        eprintln!(
            "bench: upload {}, run {}/{}",
            plan.big_label(),
            run + 1,
            plan.runs
        );
        for fsync in [true, false] {
            let raw = raw_copy(std::slice::from_ref(&big), &raw_dir, fsync)?;
            let up = upload(
                bin,
                &store,
                std::slice::from_ref(&big),
                std::slice::from_ref(&big_digest),
                fsync,
            )?;
            let (raw_list, up_list) = if fsync {
                (&mut raw_sync, &mut up_sync)
            } else {
                (&mut raw_nosync, &mut up_nosync)
            };
            raw_list.push(mib / raw.as_secs_f64());
            up_list.push(mib / up.elapsed.as_secs_f64());
            if fsync {
                big_walls.raw.push(raw.as_secs_f64());
                big_walls.up.push(up.elapsed.as_secs_f64());
            }
            srv_peak.push(up.server_peak_kib as f64 / 1024.0);
            if let Some(kib) = up.client_peak_kib {
                cli_peak.push(kib as f64 / 1024.0);
            }
        }
        for (peer, walls) in ready.iter().zip(&mut big_walls.peers) {
            walls.push(peer.upload(std::slice::from_ref(&big))?.as_secs_f64());
        }
    }
    let label = plan.big_label();
    rows.push(
        Row::new(
            format!("upload {label}, fsync: up-cli → up-srv"),
            Figure::new(up_sync, "MB/s"),
            Target::RatioAtLeast(0.9),
        )
        .against("raw TCP copy + fsync", Figure::new(raw_sync, "MB/s")),
    );
    rows.push(
        Row::new(
            format!("upload {label}, no fsync (`--no-fsync`)"),
            Figure::new(up_nosync, "MB/s"),
            Target::RatioAtLeast(0.7),
        )
        .against("raw TCP copy, no fsync", Figure::new(raw_nosync, "MB/s")),
    );
    rows.push(Row::new(
        format!("up-srv peak RSS (VmHWM) during {label} upload"),
        Figure::new(srv_peak, "MiB"),
        Target::Below(32.0),
    ));
    if cli_peak.is_empty() {
        rows.push(Row::skipped(
            "up-cli peak RSS",
            "/usr/bin/time not available",
        ));
    } else {
        rows.push(Row::new(
            format!("up-cli peak RSS (max RSS) during {label} upload"),
            Figure::new(cli_peak, "MiB"),
            Target::Below(32.0),
        ));
    }

    let (mut raw_files, mut up_files) = (Vec::new(), Vec::new());
    for run in 0..plan.runs {
        eprintln!(
            "bench: upload {} × {} KiB, run {}/{}",
            plan.small_count,
            plan.small_bytes >> 10,
            run + 1,
            plan.runs
        );
        let raw = raw_copy(&small, &raw_dir, true)?;
        let up = upload(bin, &store, &small, &small_digests, true)?;
        raw_files.push(plan.small_count as f64 / raw.as_secs_f64());
        up_files.push(plan.small_count as f64 / up.elapsed.as_secs_f64());
        small_walls.raw.push(raw.as_secs_f64());
        small_walls.up.push(up.elapsed.as_secs_f64());
        for (peer, walls) in ready.iter().zip(&mut small_walls.peers) {
            walls.push(peer.upload(&small)?.as_secs_f64());
        }
    }
    rows.push(
        Row::new(
            format!(
                "upload {} × {} KiB in one up-cli call, fsync",
                plan.small_count,
                plan.small_bytes >> 10
            ),
            Figure::new(up_files, "files/s"),
            Target::None,
        )
        .against(
            "raw copy, one connection, fsync each",
            Figure::new(raw_files, "files/s"),
        ),
    );
    let small_label = format!("{} × {} KiB", plan.small_count, plan.small_bytes >> 10);
    let mut peer_rows = peer_table(&label, &big_walls, &ready, &peer_list, plan.peers, true);
    peer_rows.extend(peer_table(
        &small_label,
        &small_walls,
        &ready,
        &peer_list,
        plan.peers,
        false,
    ));
    Ok(Tables {
        upload: rows,
        peers: peer_rows,
    })
}

/// Rows of `up-cli` wall time (SHA-256 both ends, fsync) beside each peer's; the
/// ratio is up-cli ÷ peer, so below 1 means up-cli is faster. Targets from issue 11:
/// 1 GiB within 1.2x of scp, many small files within 1.2x of rsync `--fsync`.
fn peer_table(
    case: &str,
    walls: &Walls,
    ready: &[&Peer],
    all: &[Result<Peer, peers::Missing>],
    wanted: bool,
    big: bool,
) -> Vec<Row> {
    let up = || Figure::new(walls.up.clone(), "s");
    let what = format!("{case}: up-cli → up-srv (SHA-256 both ends, fsync), wall");
    let mut rows = vec![Row::new(what.clone(), up(), Target::None)
        .against("raw TCP copy + fsync", Figure::new(walls.raw.clone(), "s"))];
    if !wanted {
        rows.push(Row::skipped(
            format!("{case}: peers"),
            "left out with --quick (run the full bench)",
        ));
        return rows;
    }
    let mut measured = ready.iter().zip(&walls.peers);
    for peer in all {
        match peer {
            Ok(_) => {
                let Some((peer, times)) = measured.next() else {
                    continue;
                };
                let target = match (big, peer.label) {
                    (true, peers::SCP) => Target::RatioAtMost(1.2),
                    (false, peers::RSYNC_FSYNC) => Target::RatioAtMost(1.2),
                    _ => Target::None,
                };
                rows.push(
                    Row::new(format!("{case}: up-cli vs {}", peer.label), up(), target)
                        .against(peer.label, Figure::new(times.clone(), "s")),
                );
            }
            Err(missing) => rows.push(Row::skipped(
                format!("{case}: {}", missing.label),
                missing.reason.clone(),
            )),
        }
    }
    rows
}

/// The digest implementations timed in memory by `loadgen hash --impl <name>`,
/// with what each stands for.
const HASH_IMPLS: [(&str, &str); 4] = [
    (
        "sha2",
        "SHA-256, `sha2` crate (SHA extensions when the CPU has them)",
    ),
    (
        "ring",
        "SHA-256, `ring` (what `proto::digest` picks without SHA extensions)",
    ),
    (
        "portable",
        "SHA-256, portable Rust (what `sha2` runs without SHA extensions)",
    ),
    ("blake3", "BLAKE3, `blake3` crate, one thread"),
];

/// OpenSSL's capability mask that hides the SHA extensions (CPUID leaf 7 EBX bit 29),
/// so `openssl` runs the code path of a CPU without them.
const OPENSSL_NO_SHA_NI: &str = ":~0x20000000";

/// Times `sha256sum`, `openssl dgst -sha256` (with and without its SHA-extension
/// path) and every implementation in `proto::digest`; returns the big file's
/// digest, checked to agree between the tools.
fn hash_ceilings(bin: &Path, plan: &Plan, big: &Path, rows: &mut Vec<Row>) -> Result<String> {
    let mb = plan.big_bytes as f64 / 1e6;
    let (mut coreutils, mut openssl, mut openssl_soft) = (Vec::new(), Vec::new(), Vec::new());
    let mut impls = vec![Vec::new(); HASH_IMPLS.len()];
    let mut digest = None;
    let in_memory_mib = if plan.big_bytes >= 1 << 30 { 256 } else { 64 };
    for _ in 0..plan.runs {
        let start = Instant::now();
        let out = checked_output(Command::new("sha256sum").arg(big), "sha256sum")?;
        coreutils.push(mb / start.elapsed().as_secs_f64());
        let sum = first_word(&out).context("sha256sum printed no digest")?;

        for (speeds, mask) in [
            (&mut openssl, None),
            (&mut openssl_soft, Some(OPENSSL_NO_SHA_NI)),
        ] {
            let mut cmd = Command::new("openssl");
            cmd.args(["dgst", "-sha256", "-r"]).arg(big);
            if let Some(mask) = mask {
                cmd.env("OPENSSL_ia32cap", mask);
            }
            let start = Instant::now();
            let out = checked_output(&mut cmd, "openssl")?;
            speeds.push(mb / start.elapsed().as_secs_f64());
            let ssl = first_word(&out).context("openssl printed no digest")?;
            ensure!(
                sum == ssl,
                "sha256sum ({sum}) and openssl ({ssl}) disagree on {}",
                big.display()
            );
        }
        digest = Some(sum);

        for ((name, _), speeds) in HASH_IMPLS.iter().zip(&mut impls) {
            let line = checked_output(
                Command::new(bin.join("loadgen")).args([
                    "hash",
                    "--impl",
                    name,
                    "--mib",
                    &in_memory_mib.to_string(),
                ]),
                "loadgen hash",
            )?;
            speeds.push(super::field(&line, "mb_per_s")?);
        }
    }
    let label = plan.big_label();
    rows.push(Row::new(
        format!("hash ceiling: `sha256sum` on the {label} file (page cache)"),
        Figure::new(coreutils, "MB/s"),
        Target::None,
    ));
    rows.push(Row::new(
        format!("hash ceiling: `openssl dgst -sha256` on the {label} file"),
        Figure::new(openssl.clone(), "MB/s"),
        Target::None,
    ));
    rows.push(
        Row::new(
            format!(
                "hash ceiling: `openssl dgst -sha256`, SHA extensions masked \
                 (`OPENSSL_ia32cap={OPENSSL_NO_SHA_NI}`), as on a CPU without them"
            ),
            Figure::new(openssl_soft, "MB/s"),
            Target::None,
        )
        .against("openssl with them", Figure::new(openssl.clone(), "MB/s")),
    );
    let portable = impls
        .get(2)
        .map(|v| Figure::new(v.clone(), "MB/s"))
        .context("portable hash figures")?;
    for ((name, what), speeds) in HASH_IMPLS.iter().zip(impls) {
        let row = Row::new(
            format!("{what}, {in_memory_mib} MiB in memory"),
            Figure::new(speeds, "MB/s"),
            Target::None,
        );
        rows.push(if *name == "portable" {
            row.against("openssl", Figure::new(openssl.clone(), "MB/s"))
        } else {
            row.against("portable", portable.clone())
        });
    }
    digest.context("no hashing run")
}

/// What one `up-cli` call measured.
struct Upload {
    elapsed: Duration,
    server_peak_kib: u64,
    client_peak_kib: Option<u64>,
}

/// Starts a fresh `up-srv` on an empty `store`, uploads `files` with one `up-cli`
/// call, checks every reported digest and stored size, and cleans up.
fn upload(
    bin: &Path,
    store: &Path,
    files: &[PathBuf],
    digests: &[String],
    fsync: bool,
) -> Result<Upload> {
    reset_dir(store)?;
    let addr = procfs::free_addr()?;
    let mut server = Command::new(bin.join("up-srv"));
    server
        .args(["-b", "127.0.0.1", "-p", &addr.port().to_string(), "-d"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if !fsync {
        server.arg("--no-fsync");
    }
    let service = Service::start("up-srv", server, addr)?;

    let time_bin = Path::new("/usr/bin/time");
    let peak_file = store.with_extension("maxrss");
    let mut client = if time_bin.exists() {
        let mut cmd = Command::new(time_bin);
        cmd.args(["-f", "%M", "-o"])
            .arg(&peak_file)
            .arg(bin.join("up-cli"));
        cmd
    } else {
        Command::new(bin.join("up-cli"))
    };
    client
        .args(["--host", "127.0.0.1", "-p", &addr.port().to_string(), "-q"])
        .args(files)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let child = client.spawn().context("starting up-cli")?;
    let out = wait_with_timeout(child, UPLOAD_TIMEOUT).context("up-cli")?;
    let elapsed = start.elapsed();
    ensure!(
        out.status.success(),
        "up-cli failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let server_peak_kib = procfs::status_kib(service.pid(), "VmHWM")?;
    drop(service);

    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(
        lines.len() == files.len(),
        "up-cli printed {} lines for {} files:\n{stdout}",
        lines.len(),
        files.len()
    );
    for ((line, want), file) in lines.iter().zip(digests).zip(files) {
        let (got, name) = line
            .split_once("  ")
            .with_context(|| format!("up-cli line {line:?} is not `<sha256>  <name>`"))?;
        ensure!(
            got == want,
            "wrong digest for {}: up-cli says {got}, the file has {want}",
            file.display()
        );
        let stored = store.join(name);
        let len = std::fs::metadata(&stored)
            .with_context(|| format!("stored file {} missing", stored.display()))?
            .len();
        let expected = std::fs::metadata(file)?.len();
        ensure!(
            len == expected,
            "{} holds {len} bytes, expected {expected}",
            stored.display()
        );
    }
    let client_peak_kib = std::fs::read_to_string(&peak_file)
        .ok()
        .and_then(|t| t.lines().last()?.trim().parse().ok());
    let _ = std::fs::remove_file(&peak_file);
    reset_dir(store)?;
    Ok(Upload {
        elapsed,
        server_peak_kib,
        client_peak_kib,
    })
}

/// Copies `files` over one loopback connection into `dir`; returns the time from
/// connect to the receiver's acknowledgement (sent after its fsyncs).
fn raw_copy(files: &[PathBuf], dir: &Path, fsync: bool) -> Result<Duration> {
    reset_dir(dir)?;
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the raw receiver")?;
    let addr = listener.local_addr()?;
    let into = dir.to_owned();
    let receiver = std::thread::spawn(move || receive(&listener, &into, fsync));
    let start = Instant::now();
    let sent = send(addr, files);
    let elapsed = start.elapsed();
    let received = receiver
        .join()
        .map_err(|_| anyhow!("the raw receiver thread panicked"))?;
    sent.context("raw sender")?;
    received.context("raw receiver")?;
    reset_dir(dir)?;
    Ok(elapsed)
}

fn send(addr: SocketAddr, files: &[PathBuf]) -> Result<()> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; RAW_BUF];
    stream.write_all(&(files.len() as u64).to_be_bytes())?;
    for path in files {
        let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata()?.len();
        stream.write_all(&len.to_be_bytes())?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n])?;
        }
    }
    let mut ack = [0u8; 1];
    stream
        .read_exact(&mut ack)
        .context("waiting for the receiver's ack")?;
    Ok(())
}

fn receive(listener: &TcpListener, dir: &Path, fsync: bool) -> Result<()> {
    let (mut stream, _) = listener.accept().context("accepting the raw sender")?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; RAW_BUF];
    let mut word = [0u8; 8];
    stream.read_exact(&mut word)?;
    let count = u64::from_be_bytes(word);
    ensure!(count <= 1_000_000, "raw sender announced {count} files");
    for i in 0..count {
        stream.read_exact(&mut word)?;
        let mut left = u64::from_be_bytes(word);
        let path = dir.join(format!("raw-{i}"));
        let mut file =
            File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let n = stream.read(&mut buf[..want])?;
            if n == 0 {
                bail!("raw sender closed with {left} bytes of file {i} missing");
            }
            file.write_all(&buf[..n])?;
            left -= n as u64;
        }
        if fsync {
            file.sync_all()?;
        }
    }
    if fsync {
        File::open(dir)?.sync_all()?;
    }
    stream.write_all(b"k")?;
    Ok(())
}

/// Writes `len` bytes of seeded pseudo-random data (incompressible, different per
/// seed) and syncs it, so later fsyncs pay for their own data only. An existing
/// file of the right size is kept: its content depends only on the seed.
fn write_test_file(path: &Path, len: u64, seed: u64) -> Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == len) {
        return Ok(());
    }
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ seed.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut block = vec![0u8; RAW_BUF];
    for chunk in block.chunks_exact_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes());
    }
    let mut file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut left = len;
    let mut index = 0u64;
    while left > 0 {
        // Stamping the block index keeps every MiB distinct without regenerating it.
        block[..8].copy_from_slice(&index.to_le_bytes());
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(block.len());
        file.write_all(&block[..n])?;
        left -= n as u64;
        index += 1;
    }
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn reset_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn checked_output(cmd: &mut Command, name: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {name} (is it installed?)"))?;
    ensure!(
        out.status.success(),
        "{name} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn first_word(text: &str) -> Option<String> {
    text.split_whitespace().next().map(str::to_owned)
}
