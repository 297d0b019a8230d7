//! `cargo xtask e2e`: the whole product against its real release binaries.
//!
//! Builds the binaries, starts `chat-srv` on 127.0.0.1:8888 and `up-srv` on
//! 127.0.0.1:9998 (override with `--chat-port`/`--up-port`; a busy port is named in the
//! error), waits until both accept connections, then runs the checks below, stops both
//! servers with SIGTERM and prints a table. Any failed check makes the task fail.
//!
//! - chat: a scripted `chat-cli` session, `chat-cli -m`, two std clients that see each
//!   other's messages, the original client's unterminated messages in lock-step, and
//!   `chat-cli`'s line editor in a real terminal (tmux; see `chat.rs`);
//! - upload: generated JPEG and PNG images (a few KiB to tens of MiB, cached under
//!   `target/e2e/images`) plus 0/1023/1024/1025-byte files through `up-cli` (several
//!   files in one call and a `-r` directory), each stored file hashed against its
//!   source; an upload cut with `--abort-after` and resumed; the original client's
//!   legacy form (size text, `1001`, bytes);
//! - cluster: three chat-srv nodes and a real redis-server (see [`cluster`]);
//! - s3: three `up-srv --store` nodes sharing a bucket of a real S3-compatible server
//!   (uploads, reruns, one name from two nodes, the store cut mid-put; see `s3.rs`);
//! - shutdown: each server exits 0 within 2 s of SIGTERM;
//! - tls: a chat exchange and an image upload over TLS with pinned
//!   certificates, a wrong pin, `openssl s_client` (see `tls.rs`).
//!
//! Files live under `target/e2e/`: `uploads/` (fresh each run), `files/`, `images/` and
//! the server logs `chat-srv.log` / `up-srv.log`, which failures point to.

pub mod cluster;

use std::fmt::Write as _;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

mod tls;

use crate::clients::{self, ChatClient, REPLY_SUFFIX, WELCOME};
use crate::images::{self, ImageSpec};
use crate::service::{self, Bins, Service};
use crate::verify::{self, StoredLine};

mod chat;
mod s3;
mod upload;

/// Options of `cargo xtask e2e`.
#[derive(Debug, Clone, clap::Args)]
pub struct E2eArgs {
    /// Port for chat-srv on 127.0.0.1.
    #[arg(long, default_value_t = clients::CHAT_PORT)]
    pub chat_port: u16,
    /// Port for up-srv on 127.0.0.1.
    #[arg(long, default_value_t = clients::UP_PORT)]
    pub up_port: u16,
}

impl Default for E2eArgs {
    fn default() -> E2eArgs {
        E2eArgs {
            chat_port: clients::CHAT_PORT,
            up_port: clients::UP_PORT,
        }
    }
}

/// How long one chat read may take; the pause rule answers within about 200 ms.
const CHAT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one `up-cli` call may take (tens of MiB on loopback, fsync included).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// The contract: a server exits within 2 s of SIGTERM.
const STOP_DEADLINE: Duration = Duration::from_secs(2);
/// Where the resume check cuts its upload.
const ABORT_AFTER: u64 = 4 << 20;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Runs the end-to-end checks; fails when any check fails.
pub fn run(args: E2eArgs) -> Result<()> {
    let bin_dir = service::build_release()?;
    let chat_addr = SocketAddr::new(LOCALHOST, args.chat_port);
    let up_addr = SocketAddr::new(LOCALHOST, args.up_port);
    service::ensure_port_free(chat_addr, "--chat-port")?;
    service::ensure_port_free(up_addr, "--up-port")?;

    let work = service::target_dir().join("e2e");
    let uploads = work.join("uploads");
    if uploads.exists() {
        fs::remove_dir_all(&uploads).with_context(|| format!("clearing {}", uploads.display()))?;
    }
    fs::create_dir_all(&uploads)?;
    println!("e2e: preparing test files under {}", work.display());
    let fixtures = Fixtures::prepare(&work)?;

    let bins = Bins::new(&bin_dir)?;
    let chat = bins.start_chat(chat_addr, &work.join("chat-srv.log"))?;
    let up = upload::start_server(&bins, up_addr, &uploads, &work.join("up-srv.log"))?;
    println!(
        "e2e: chat-srv on {chat_addr} (pid {}), up-srv on {up_addr} (pid {}), uploads in {}",
        chat.pid(),
        up.pid(),
        uploads.display()
    );

    let ctx = Ctx {
        bins,
        chat_addr,
        up_addr,
        uploads,
        fixtures,
    };
    let mut report = Report::default();
    report.check("chat: scripted chat-cli session", || ctx.chat_cli_script());
    report.check("chat: chat-cli -m one message", || ctx.chat_cli_message());
    report.check("chat: two clients see each other", || ctx.two_clients());
    report.check("chat: original client, no newline", || ctx.unterminated());
    report.check("chat: line editor in a terminal (tmux)", || {
        chat::line_editor(&ctx.bins.chat_cli, ctx.chat_addr, &work)
    });
    report.check("upload: several files, one call", || ctx.upload_many());
    report.check("upload: directory with -r", || ctx.upload_dir());
    report.check("upload: interrupted, then resumed", || ctx.upload_resume());
    report.check("upload: original client (legacy)", || ctx.upload_legacy());
    report.check("upload: rerun stores nothing twice", || ctx.upload_rerun());
    report.check("upload: ls = sha256sum, get verified", || {
        ctx.ls_get_round_trip()
    });
    report.check("upload: standard input with --as", || ctx.upload_stdin());
    cluster::checks(&ctx.bins, &work, &mut report);
    let s3_sources: Vec<&Source> = ctx.fixtures.many.iter().collect();
    s3::checks(&mut report, &ctx.bins, &work, &s3_sources);
    report.check("chat-srv: SIGTERM, exit 0 in 2 s", || stop(chat));
    report.check("up-srv: SIGTERM, exit 0 in 2 s", || stop(up));
    let image = ctx
        .fixtures
        .many
        .iter()
        .find(|s| s.file_name() == "panorama.jpg");
    if let Some(image) = image {
        tls::checks(&mut report, &ctx.bins, &work, image);
    }
    report.print();

    let failed = report.failed();
    if failed > 0 {
        bail!(
            "{failed} of {} e2e checks failed; the server logs are {} and {}",
            report.rows.len(),
            work.join("chat-srv.log").display(),
            work.join("up-srv.log").display()
        );
    }
    println!("e2e: all {} checks passed", report.rows.len());
    Ok(())
}

/// Stops `service` with SIGTERM and checks the contract: exit 0 within 2 s.
fn stop(service: Service) -> Result<String> {
    let name = service.name().to_owned();
    let started = Instant::now();
    // Give it a little more than the contract so a slow exit is measured, not killed.
    let status = service.terminate(STOP_DEADLINE + Duration::from_secs(3))?;
    let took = started.elapsed();
    ensure!(status.success(), "{name} exited with {status}, expected 0");
    ensure!(
        took <= STOP_DEADLINE,
        "{name} took {took:.2?} to exit, the limit is {STOP_DEADLINE:?}"
    );
    Ok(format!("exit 0 after {took:.2?}"))
}

/// One source file for the upload checks.
struct Source {
    path: PathBuf,
    digest: String,
    len: u64,
}

impl Source {
    fn new(path: PathBuf) -> Result<Source> {
        let digest = verify::sha256_file(&path)?;
        let len = fs::metadata(&path)?.len();
        Ok(Source { path, digest, len })
    }

    fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// The files the upload checks send, generated deterministically.
struct Fixtures {
    /// Uploaded together in one call (unique file names).
    many: Vec<Source>,
    /// The `-r` directory and its files with their paths relative to it.
    album: PathBuf,
    album_files: Vec<(String, Source)>,
    /// Cut with `--abort-after` and resumed.
    resume: Source,
    /// Sent in the legacy form.
    legacy: Source,
}

impl Fixtures {
    fn prepare(work: &Path) -> Result<Fixtures> {
        let cache = work.join("images");
        let files = work.join("files");
        if files.exists() {
            fs::remove_dir_all(&files)?;
        }
        fs::create_dir_all(&files)?;
        let started = Instant::now();
        // Images are cached by parameters; copies get readable names for the upload.
        let image = |spec: ImageSpec, name: &str, dir: &Path| -> Result<Source> {
            let cached = images::cached(&cache, spec)?;
            fs::create_dir_all(dir)?;
            let path = dir.join(name);
            fs::copy(&cached, &path)
                .with_context(|| format!("copying {} to {}", cached.display(), path.display()))?;
            Source::new(path)
        };
        let bytes = |len: usize, name: &str, dir: &Path| -> Result<Source> {
            fs::create_dir_all(dir)?;
            let path = dir.join(name);
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            fs::write(&path, data)?;
            Source::new(path)
        };
        let jpeg = |width, height, detail, seed| ImageSpec::Jpeg {
            width,
            height,
            detail,
            seed,
        };
        let png = |width, height, seed| ImageSpec::Png {
            width,
            height,
            seed,
        };

        let many_dir = files.join("many");
        let many = vec![
            bytes(0, "empty.bin", &many_dir)?,
            bytes(1023, "edge-1023.bin", &many_dir)?,
            bytes(1024, "edge-1024.bin", &many_dir)?,
            bytes(1025, "edge-1025.bin", &many_dir)?,
            image(jpeg(96, 64, 8, 1), "thumb.jpg", &many_dir)?,
            image(png(32, 32, 2), "icon.png", &many_dir)?,
            image(jpeg(1280, 960, 20, 3), "photo.jpg", &many_dir)?,
            image(png(800, 600, 4), "poster.png", &many_dir)?,
            image(jpeg(4096, 3072, 32, 5), "panorama.jpg", &many_dir)?,
        ];
        let album = files.join("album");
        let mut album_files = Vec::new();
        for (rel, source) in [
            (
                "cover.jpg",
                image(jpeg(640, 480, 16, 6), "cover.jpg", &album)?,
            ),
            (
                "pages/p1.png",
                image(png(300, 200, 7), "p1.png", &album.join("pages"))?,
            ),
            (
                "pages/empty.bin",
                bytes(0, "empty.bin", &album.join("pages"))?,
            ),
            (
                "pages/deep/edge.bin",
                bytes(1025, "edge.bin", &album.join("pages/deep"))?,
            ),
        ] {
            album_files.push((rel.to_owned(), source));
        }
        let resume = image(png(2400, 1600, 8), "resume.png", &files.join("resume"))?;
        let legacy = image(jpeg(320, 240, 20, 9), "legacy.jpg", &files.join("legacy"))?;
        let total: u64 = many.iter().map(|s| s.len).sum::<u64>() + resume.len + legacy.len;
        println!(
            "e2e: test files ready ({:.1} MiB) in {:.1?}",
            total as f64 / (1 << 20) as f64,
            started.elapsed()
        );
        Ok(Fixtures {
            many,
            album,
            album_files,
            resume,
            legacy,
        })
    }
}

/// What every check needs.
struct Ctx {
    bins: Bins,
    chat_addr: SocketAddr,
    up_addr: SocketAddr,
    uploads: PathBuf,
    fixtures: Fixtures,
}

impl Ctx {
    fn chat_cli_script(&self) -> Result<String> {
        let messages = ["hello", "你好世界", "three words here"];
        let mut script: String = messages.iter().map(|m| format!("{m}\n")).collect();
        script.push_str("q\n");
        let out = service::output_with_timeout(
            self.bins.chat_cli(self.chat_addr),
            script.as_bytes(),
            Duration::from_secs(15),
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let context = || {
            format!(
                "stdout {stdout:?}, stderr {:?}",
                String::from_utf8_lossy(&out.stderr)
            )
        };
        let lines: Vec<&str> = stdout.lines().map(str::trim_end).collect();
        ensure!(
            out.status.success(),
            "chat-cli exited with {}; {}",
            out.status,
            context()
        );
        ensure!(
            lines.iter().any(|l| l.contains(WELCOME)),
            "no welcome line; {}",
            context()
        );
        for m in messages {
            let reply = format!("{m}{REPLY_SUFFIX}");
            ensure!(
                lines.iter().any(|l| l.ends_with(&reply)),
                "no {reply:?} line; {}",
                context()
            );
        }
        Ok(format!("welcome, {} replies, q, exit 0", messages.len()))
    }

    fn chat_cli_message(&self) -> Result<String> {
        let mut cmd = self.bins.chat_cli(self.chat_addr);
        cmd.args(["-m", "ping"]);
        let out = service::output_with_timeout(cmd, b"", Duration::from_secs(15))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "chat-cli -m exited with {}; stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            stdout.lines().any(|l| l.trim_end().ends_with("ping,你好")),
            "no `ping,你好` in stdout {stdout:?}"
        );
        Ok("`ping` answered `ping,你好`, exit 0".into())
    }

    fn two_clients(&self) -> Result<String> {
        let mut a = ChatClient::connect(self.chat_addr, CHAT_TIMEOUT)?;
        ensure_welcome(a.read_line(CHAT_TIMEOUT)?)?;
        let mut b = ChatClient::connect(self.chat_addr, CHAT_TIMEOUT)?;
        ensure_welcome(b.read_line(CHAT_TIMEOUT)?)?;

        exchange(&mut a, &mut b, "hello from a")?;
        exchange(&mut b, &mut a, "和 b 打个招呼")?;
        a.send_line("q")?;
        a.expect_closed(CHAT_TIMEOUT)?;
        b.send_line("q")?;
        b.expect_closed(CHAT_TIMEOUT)?;
        let shown = b.seen.iter().find(|l| l.ends_with(": hello from a"));
        Ok(format!(
            "each got its reply and saw the other ({})",
            shown.map_or("", String::as_str)
        ))
    }

    fn unterminated(&self) -> Result<String> {
        let mut client = ChatClient::connect(self.chat_addr, CHAT_TIMEOUT)?;
        // The original client reads the welcome with one recv and then goes lock-step.
        let welcome = client.read_once(CHAT_TIMEOUT)?;
        ensure!(
            welcome.trim_end() == WELCOME,
            "the first read must be exactly the welcome line, got {welcome:?}"
        );
        let messages = ["hello", "第二条消息", "3"];
        let mut slowest = Duration::ZERO;
        for m in messages {
            let started = Instant::now();
            client.send_raw(m.as_bytes())?;
            let reply = client
                .read_once(CHAT_TIMEOUT)
                .with_context(|| format!("waiting for the answer to bare {m:?}"))?;
            slowest = slowest.max(started.elapsed());
            let expected = format!("{m}{REPLY_SUFFIX}");
            ensure!(
                reply.trim_end_matches(['\r', '\n']) == expected,
                "sent bare {m:?}, one read returned {reply:?}, expected {expected:?}"
            );
        }
        client.send_raw(b"q")?;
        client.expect_closed(CHAT_TIMEOUT)?;
        Ok(format!(
            "{} bare messages answered in step (slowest {slowest:.0?}), bare q closed",
            messages.len()
        ))
    }

    /// Runs `up-cli` with `args`, requiring success; returns its parsed stdout and stderr.
    fn up_cli(&self, args: &[&std::ffi::OsStr]) -> Result<(Vec<StoredLine>, String)> {
        let mut cmd = self.bins.up_cli(self.up_addr);
        cmd.args(args);
        let out = service::output_with_timeout(cmd, b"", UPLOAD_TIMEOUT)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(
            out.status.success(),
            "up-cli exited with {}; stdout {stdout:?}; stderr {:?}",
            out.status,
            tail(&stderr)
        );
        Ok((verify::parse_stored_lines(&stdout)?, stderr))
    }

    /// Checks that up-cli reported `source` under a name accepted by `name_ok`, with the
    /// right digest, and that the stored file hashes to the same digest.
    fn verify_stored(
        &self,
        lines: &[StoredLine],
        source: &Source,
        what: &str,
        name_ok: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let line = lines
            .iter()
            .find(|l| name_ok(&l.name))
            .with_context(|| format!("up-cli printed no line for {what}; its lines: {lines:?}"))?;
        ensure!(
            line.digest == source.digest,
            "{what}: up-cli printed {} but the source's SHA-256 is {}",
            line.digest,
            source.digest
        );
        let stored = self.uploads.join(&line.name);
        let digest = verify::sha256_file(&stored)
            .with_context(|| format!("{what}: reading the stored file"))?;
        ensure!(
            digest == source.digest,
            "{what}: stored {} hashes to {digest}, the source to {}",
            stored.display(),
            source.digest
        );
        Ok(())
    }

    fn upload_many(&self) -> Result<String> {
        let sources = &self.fixtures.many;
        let args: Vec<&std::ffi::OsStr> = sources.iter().map(|s| s.path.as_os_str()).collect();
        let (lines, _) = self.up_cli(&args)?;
        ensure!(
            lines.len() == sources.len(),
            "{} files sent, {} lines printed: {lines:?}",
            sources.len(),
            lines.len()
        );
        for source in sources {
            let name = source.file_name();
            self.verify_stored(&lines, source, &name, |n| n == name)?;
        }
        let bytes: u64 = sources.iter().map(|s| s.len).sum();
        Ok(format!(
            "{} files ({}, 0 B to {} each), all SHA-256 match",
            sources.len(),
            mib(bytes),
            mib(sources.iter().map(|s| s.len).max().unwrap_or(0))
        ))
    }

    fn upload_dir(&self) -> Result<String> {
        let album = self.fixtures.album.as_os_str();
        let (lines, _) = self.up_cli(&["-r".as_ref(), album])?;
        let files = &self.fixtures.album_files;
        ensure!(
            lines.len() == files.len(),
            "{} files in the directory, {} lines printed: {lines:?}",
            files.len(),
            lines.len()
        );
        // Relative paths are kept; whether the directory's own name leads them is the
        // client's choice, so both spellings are accepted.
        for (rel, source) in files {
            let with_dir = format!("album/{rel}");
            self.verify_stored(&lines, source, rel, |n| n == rel || n == with_dir)?;
        }
        Ok(format!(
            "{} files with relative paths ({}), all SHA-256 match",
            files.len(),
            lines
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    fn upload_resume(&self) -> Result<String> {
        let source = &self.fixtures.resume;
        let name = source.file_name();
        let mut cmd = self.bins.up_cli(self.up_addr);
        cmd.arg("--abort-after")
            .arg(ABORT_AFTER.to_string())
            .arg(&source.path);
        let cut = service::output_with_timeout(cmd, b"", UPLOAD_TIMEOUT)?;
        ensure!(
            !cut.status.success(),
            "up-cli --abort-after {ABORT_AFTER} exited 0; it should fail after dropping the connection"
        );
        ensure!(
            !self.uploads.join(&name).exists(),
            "an interrupted upload left {name} under its final name"
        );
        // The server notices the drop on its own schedule; the kept partial reaching the
        // cut size is the event that says the first half is stored.
        let partial = wait_for_partial(&self.uploads.join(".partial"), ABORT_AFTER);

        let (lines, stderr) = self.up_cli(&[source.path.as_os_str()])?;
        let notice = stderr
            .lines()
            .find(|l| l.to_ascii_lowercase().contains("resum"))
            .map(|l| l.trim().to_owned())
            .with_context(|| {
                format!(
                    "the second run did not say it resumed (partial on the server: {partial}); stderr {:?}",
                    tail(&stderr)
                )
            })?;
        self.verify_stored(&lines, source, &name, |n| n == name)?;
        Ok(format!(
            "cut at {}, partial {partial}, resumed ({notice:?}), {} verified",
            mib(ABORT_AFTER),
            mib(source.len)
        ))
    }

    fn upload_legacy(&self) -> Result<String> {
        let source = &self.fixtures.legacy;
        let data = fs::read(&source.path)?;
        let reply = clients::legacy_upload(self.up_addr, &data, CHAT_TIMEOUT)?;
        ensure!(
            reply.trim_end() == clients::LEGACY_REPLY,
            "the reply to the size was {reply:?}, expected \"1001\""
        );
        let stored = self.uploads.join("new.jpg");
        verify::wait_for_file(&stored, source.len, Duration::from_secs(15))?;
        let digest = verify::sha256_file(&stored)?;
        ensure!(
            digest == source.digest,
            "new.jpg hashes to {digest}, the source to {}",
            source.digest
        );
        Ok(format!(
            "size text, reply 1001, {} stored as new.jpg, SHA-256 match",
            mib(source.len)
        ))
    }
}

/// Waits (up to 10 s) for a file of at least `len` bytes in `dir`; describes what it saw.
fn wait_for_partial(dir: &Path, len: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let largest = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .max();
        match largest {
            Some(size) if size >= len => return format!("{} kept", mib(size)),
            _ if Instant::now() >= deadline => {
                return match largest {
                    Some(size) => format!("only {} seen in {}", mib(size), dir.display()),
                    None => format!("none seen in {}", dir.display()),
                }
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// `from` says `text`; it must get its reply and `to` must see `NICK: text`.
fn exchange(from: &mut ChatClient, to: &mut ChatClient, text: &str) -> Result<()> {
    from.send_line(text)?;
    let reply = format!("{text}{REPLY_SUFFIX}");
    from.read_line_where(&format!("{reply:?}"), CHAT_TIMEOUT, |l| l == reply)?;
    let relayed = format!(": {text}");
    to.read_line_where(&format!("`NICK{relayed}`"), CHAT_TIMEOUT, |l| {
        l.ends_with(&relayed)
    })?;
    Ok(())
}

fn ensure_welcome(line: String) -> Result<()> {
    ensure!(
        line == WELCOME,
        "the first line was {line:?}, expected {WELCOME:?}"
    );
    Ok(())
}

fn mib(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    }
}

/// The last few lines of a long stderr, enough to show why something failed.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// The result of one check.
struct Row {
    name: &'static str,
    passed: bool,
    took: Duration,
    detail: String,
}

/// The table of checks, filled in order and printed at the end.
#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    /// Runs `check`, recording pass/fail, its duration and its detail or error.
    fn check(&mut self, name: &'static str, check: impl FnOnce() -> Result<String>) {
        print!("e2e: {name} ... ");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let started = Instant::now();
        let result = check();
        let took = started.elapsed();
        let (passed, detail) = match result {
            Ok(detail) => (true, detail),
            Err(err) => (false, format!("{err:#}")),
        };
        println!("{}", if passed { "pass" } else { "FAIL" });
        self.rows.push(Row {
            name,
            passed,
            took,
            detail,
        });
    }

    fn failed(&self) -> usize {
        self.rows.iter().filter(|r| !r.passed).count()
    }

    fn print(&self) {
        println!("{}", self.render());
    }

    fn render(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|r| r.name.chars().count())
            .max()
            .unwrap_or(0)
            .max(5);
        let mut out = String::new();
        let _ = writeln!(out, "\n{:<width$}  result  {:>7}  detail", "check", "time");
        let _ = writeln!(out, "{}", "-".repeat(width + 26));
        for row in &self.rows {
            let _ = writeln!(
                out,
                "{:<width$}  {:<6}  {:>6.2}s  {}",
                row.name,
                if row.passed { "pass" } else { "FAIL" },
                row.took.as_secs_f64(),
                row.detail
            );
        }
        let _ = write!(
            out,
            "{} passed, {} failed",
            self.rows.len() - self.failed(),
            self.failed()
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_counts_failures_and_renders_every_row() {
        let mut report = Report::default();
        report.check("good", || Ok("fine".into()));
        report.check("bad", || bail!("broken because of x"));
        assert_eq!(report.failed(), 1);
        let table = report.render();
        assert!(table.contains("good   pass"), "{table}");
        assert!(table.contains("bad    FAIL"), "{table}");
        assert!(table.contains("broken because of x"), "{table}");
        assert!(table.ends_with("1 passed, 1 failed"), "{table}");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let text: String = (0..20).map(|i| format!("line {i}\n")).collect();
        assert!(tail(&text).starts_with("line 12"));
        assert_eq!(tail("one"), "one");
    }
}
