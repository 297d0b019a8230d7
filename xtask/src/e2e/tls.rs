//! `cargo xtask e2e`, TLS part (issue 12): a second `chat-srv` and `up-srv`,
//! TLS only (`--tls-port`, `--no-plain`), each with its self-signed
//! certificate kept under `target/e2e/tls/`. Clients pin the fingerprint the
//! servers logged, as a user would copy it:
//!
//! - a scripted `chat-cli --tls-pin` exchange;
//! - an image uploaded with `up-cli --tls-pin`, its stored copy hashed
//!   against the source;
//! - a wrong pin refused in one line that shows the real fingerprint;
//! - `openssl s_client` (a standard tool) reads the chat welcome;
//! - both servers exit 0 within 2 s of SIGTERM.
//!
//! xtask has no TLS code of its own: the real clients do the TLS.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use super::{stop, tail, Report, Source, LOCALHOST, UPLOAD_TIMEOUT};
use crate::clients::{REPLY_SUFFIX, WELCOME};
use crate::service::{self, Bins, Service};
use crate::verify;

/// Preferred TLS ports (the plain defaults plus one); a free one if busy.
const CHAT_TLS_PORT: u16 = 8889;
const UP_TLS_PORT: u16 = 9999;

/// The TLS-only servers and what clients need to reach them.
struct TlsServers {
    chat: Service,
    up: Service,
    chat_addr: SocketAddr,
    up_addr: SocketAddr,
    chat_pin: String,
    up_pin: String,
    uploads: PathBuf,
}

/// Starts the TLS servers under `work/tls` and records the TLS checks in
/// `report`; `image` is the file uploaded.
pub(super) fn checks(report: &mut Report, bins: &Bins, work: &Path, image: &Source) {
    let dir = work.join("tls");
    let servers = match start(bins, &dir) {
        Ok(servers) => servers,
        Err(err) => {
            report.check("tls: start TLS-only servers", || Err(err));
            return;
        }
    };
    report.check("tls: chat-cli --tls-pin exchange", || {
        chat_exchange(bins, &servers)
    });
    report.check("tls: image upload, --tls-pin, SHA-256", || {
        upload_image(bins, &servers, image)
    });
    report.check("tls: wrong pin refused in one line", || {
        wrong_pin(bins, &servers)
    });
    report.check("tls: openssl s_client sees welcome", || {
        openssl_welcome(servers.chat_addr)
    });
    let TlsServers { chat, up, .. } = servers;
    report.check("tls: chat-srv SIGTERM, exit 0 in 2 s", || stop(chat));
    report.check("tls: up-srv SIGTERM, exit 0 in 2 s", || stop(up));
}

fn start(bins: &Bins, dir: &Path) -> Result<TlsServers> {
    let uploads = dir.join("uploads");
    if uploads.exists() {
        fs::remove_dir_all(&uploads).with_context(|| format!("clearing {}", uploads.display()))?;
    }
    fs::create_dir_all(&uploads)?;
    let (chat_addr, _) = service::port_or_free(LOCALHOST, CHAT_TLS_PORT)?;
    let (up_addr, _) = service::port_or_free(LOCALHOST, UP_TLS_PORT)?;

    let chat_log = dir.join("chat-srv.log");
    let mut cmd = Command::new(&bins.chat_srv);
    cmd.args(["--tls-port", &chat_addr.port().to_string(), "--no-plain"])
        .arg("--state-dir")
        .arg(dir.join("chat-state"));
    let chat = service::start_logged("chat-srv (TLS)", cmd, chat_addr, &chat_log)?;

    let up_log = dir.join("up-srv.log");
    let mut cmd = Command::new(&bins.up_srv);
    cmd.args(["--tls-port", &up_addr.port().to_string(), "--no-plain"])
        .arg("-d")
        .arg(&uploads);
    let up = service::start_logged("up-srv (TLS)", cmd, up_addr, &up_log)?;

    Ok(TlsServers {
        chat,
        up,
        chat_addr,
        up_addr,
        chat_pin: logged_pin(&chat_log)?,
        up_pin: logged_pin(&up_log)?,
        uploads,
    })
}

/// The fingerprint a server logged before it accepted its first connection.
fn logged_pin(log: &Path) -> Result<String> {
    let text = fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    pin_in(&text).with_context(|| {
        format!(
            "{} has no `--tls-pin FINGERPRINT` line:\n{}",
            log.display(),
            tail(&text)
        )
    })
}

fn pin_in(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.contains("--tls-pin "))?;
    let start = line.find("--tls-pin ")? + "--tls-pin ".len();
    let pin: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || *c == ':')
        .collect();
    (pin.len() == 95).then_some(pin)
}

fn chat_exchange(bins: &Bins, servers: &TlsServers) -> Result<String> {
    let mut cmd = bins.chat_cli(servers.chat_addr);
    cmd.args(["--tls-pin", &servers.chat_pin]);
    let out = service::output_with_timeout(cmd, b"hello over tls\nq\n", Duration::from_secs(15))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "chat-cli --tls-pin exited with {}; stderr {stderr:?}",
        out.status
    );
    ensure!(stdout.contains(WELCOME), "no welcome in {stdout:?}");
    let reply = format!("hello over tls{REPLY_SUFFIX}");
    ensure!(stdout.contains(&reply), "no {reply:?} in {stdout:?}");
    Ok(format!("welcome and {reply:?} over TLS, pinned"))
}

fn upload_image(bins: &Bins, servers: &TlsServers, image: &Source) -> Result<String> {
    let mut cmd = bins.up_cli(servers.up_addr);
    cmd.args(["--tls-pin", &servers.up_pin]).arg(&image.path);
    let started = std::time::Instant::now();
    let out = service::output_with_timeout(cmd, b"", UPLOAD_TIMEOUT)?;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "up-cli --tls-pin exited with {}; stderr {:?}",
        out.status,
        tail(&String::from_utf8_lossy(&out.stderr))
    );
    let lines = verify::parse_stored_lines(&stdout)?;
    let line = lines
        .first()
        .with_context(|| format!("up-cli printed no stored line: {stdout:?}"))?;
    ensure!(
        line.digest == image.digest,
        "up-cli printed {} but the source's SHA-256 is {}",
        line.digest,
        image.digest
    );
    let stored = verify::sha256_file(&servers.uploads.join(&line.name))?;
    ensure!(
        stored == image.digest,
        "the stored {} hashes to {stored}, the source to {}",
        line.name,
        image.digest
    );
    Ok(format!(
        "{} ({}) stored over TLS in {took:.2?}, SHA-256 match",
        line.name,
        super::mib(image.len)
    ))
}

fn wrong_pin(bins: &Bins, servers: &TlsServers) -> Result<String> {
    // The up-srv certificate is a real one, just not this server's.
    let mut cmd = bins.chat_cli(servers.chat_addr);
    cmd.args(["--tls-pin", &servers.up_pin, "-m", "must not arrive"]);
    let out = service::output_with_timeout(cmd, b"", Duration::from_secs(15))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "chat-cli with a wrong pin exited with {}",
        out.status
    );
    ensure!(
        stderr.trim_end().lines().count() == 1,
        "expected one line, got {stderr:?}"
    );
    ensure!(
        stderr.contains(&format!("--tls-pin {}", servers.chat_pin)),
        "the refusal does not show the real fingerprint: {stderr:?}"
    );
    ensure!(out.stdout.is_empty(), "chat-cli printed {:?}", out.stdout);
    Ok("exit 1, one line with the server's fingerprint".into())
}

fn openssl_welcome(addr: SocketAddr) -> Result<String> {
    let openssl = crate::install::tool("openssl", "openssl", "the TLS check with openssl")
        .map_err(anyhow::Error::msg)?;
    let mut cmd = Command::new(openssl);
    cmd.args(["s_client", "-quiet", "-connect", &addr.to_string()]);
    // Stdin closes after "q", so s_client sends it and the server closes.
    let out = service::output_with_timeout(cmd, b"q\n", Duration::from_secs(15))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        stdout.contains(WELCOME),
        "openssl s_client printed {stdout:?}; stderr {:?}",
        tail(&String::from_utf8_lossy(&out.stderr))
    );
    Ok("welcome line read through `openssl s_client`".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_is_read_from_the_servers_start_line() {
        let fp = ["AB"; 32].join(":");
        let log = format!(
            "INFO chat_srv: listening\nINFO transport::flags: TLS on 127.0.0.1:8889 (self-signed, kept in x); certificate SHA-256 fingerprint {fp} (clients: --tls-pin {fp})\n"
        );
        assert_eq!(pin_in(&log), Some(fp));
        assert_eq!(pin_in("no pin here"), None);
    }
}
