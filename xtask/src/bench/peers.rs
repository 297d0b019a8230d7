//! The tools people would pick instead of `up-cli`, run as upload peers in the same
//! bench run: rsync to an rsync daemon, scp to a local sshd, and `curl -T` to dufs.
//!
//! Each peer gets its own server on a free loopback port with a configuration
//! written into `target/bench/peers/<name>/` (no system file is read or changed,
//! apart from sshd's privilege-separation directory `/run/sshd`, which sshd
//! requires to exist when it runs as root). A peer whose program is missing and
//! cannot be installed is returned as [`Missing`] with the reason, and the bench
//! names it as skipped instead of failing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::procfs;
use crate::install;
use crate::service::{wait_with_timeout, Service};

/// Longest a single peer upload may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(300);

/// The scp cipher: AES-GCM is the cheapest of OpenSSH's ciphers on a CPU with AES-NI.
const SCP_CIPHER: &str = "aes128-gcm@openssh.com";

/// One peer ready to take uploads.
pub struct Peer {
    /// Short label for the tables, with what it verifies and whether it fsyncs.
    pub label: &'static str,
    /// The store directory its server writes into.
    store: PathBuf,
    client: Client,
    /// Keeps the server running; killed when its last peer is dropped.
    _server: Rc<Service>,
}

/// A peer that could not be set up, and why.
pub struct Missing {
    /// The peer's label.
    pub label: &'static str,
    /// One line saying why it was skipped.
    pub reason: String,
}

enum Client {
    Rsync {
        rsync: PathBuf,
        url: String,
        fsync: bool,
    },
    Scp {
        scp: PathBuf,
        args: Vec<String>,
        target: String,
    },
    Curl {
        curl: PathBuf,
        base: String,
        config: PathBuf,
    },
}

/// Label of the rsync peer without `--fsync`.
pub const RSYNC: &str = "rsync daemon, --whole-file (no fsync)";
/// Label of the rsync peer with `--fsync`.
pub const RSYNC_FSYNC: &str = "rsync daemon, --whole-file --fsync";
/// Label of the scp peer.
pub const SCP: &str = "scp -c aes128-gcm to a local sshd (no fsync)";
/// Label of the dufs peer.
pub const CURL: &str = "curl -T to dufs, one PUT per file (no fsync)";

/// Sets up every peer under `dir`; each is either ready or missing with a reason.
pub fn start_all(dir: &Path) -> Vec<Result<Peer, Missing>> {
    let missing = |label, reason: anyhow::Error| Missing {
        label,
        reason: format!("{reason:#}"),
    };
    let mut peers = Vec::new();
    match rsync_daemon(&dir.join("rsync")) {
        Ok((rsync, url, store, server)) => {
            let server = Rc::new(server);
            for (label, fsync) in [(RSYNC, false), (RSYNC_FSYNC, true)] {
                peers.push(Ok(Peer {
                    label,
                    store: store.clone(),
                    client: Client::Rsync {
                        rsync: rsync.clone(),
                        url: url.clone(),
                        fsync,
                    },
                    _server: Rc::clone(&server),
                }));
            }
        }
        Err(reason) => {
            peers.push(Err(missing(RSYNC, anyhow::anyhow!("{reason:#}"))));
            peers.push(Err(missing(RSYNC_FSYNC, reason)));
        }
    }
    peers.push(scp_sshd(&dir.join("scp")).map_err(|r| missing(SCP, r)));
    peers.push(curl_dufs(&dir.join("dufs")).map_err(|r| missing(CURL, r)));
    peers
}

impl Peer {
    /// Uploads `files` into the peer's (emptied) store; returns the client's wall
    /// time, after checking every file arrived whole (by size).
    pub fn upload(&self, files: &[PathBuf]) -> Result<Duration> {
        empty_dir(&self.store)?;
        let mut cmd = match &self.client {
            Client::Rsync { rsync, url, fsync } => {
                let mut cmd = Command::new(rsync);
                cmd.args(["-q", "--whole-file"]);
                if *fsync {
                    cmd.arg("--fsync");
                }
                cmd.args(files).arg(url);
                cmd
            }
            Client::Scp { scp, args, target } => {
                let mut cmd = Command::new(scp);
                cmd.args(args).args(files).arg(target);
                cmd
            }
            Client::Curl { curl, base, config } => {
                write_curl_config(config, base, files)?;
                let mut cmd = Command::new(curl);
                cmd.args(["--fail", "-sS", "-K"]).arg(config);
                cmd
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the {} client", self.label))?;
        let out = wait_with_timeout(child, PEER_TIMEOUT).context(self.label)?;
        let elapsed = start.elapsed();
        ensure!(
            out.status.success(),
            "{} failed with {}: {}",
            self.label,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        for file in files {
            let name = file.file_name().context("test file without a name")?;
            let stored = self.store.join(name);
            let len = std::fs::metadata(&stored)
                .with_context(|| format!("{}: {} missing", self.label, stored.display()))?
                .len();
            let want = std::fs::metadata(file)?.len();
            ensure!(
                len == want,
                "{}: {} holds {len} bytes, expected {want}",
                self.label,
                stored.display()
            );
        }
        empty_dir(&self.store)?;
        Ok(elapsed)
    }
}

/// An rsync daemon serving module `store`: rsync, the module URL, the store, the server.
fn rsync_daemon(dir: &Path) -> Result<(PathBuf, String, PathBuf, Service)> {
    let rsync = install::tool("rsync", "rsync", "the rsync peer").map_err(anyhow::Error::msg)?;
    let store = fresh_store(dir)?;
    let addr = procfs::free_addr()?;
    let config = dir.join("rsyncd.conf");
    // uid/gid: a daemon started as root would otherwise write as `nobody`.
    let text = format!(
        "use chroot = no\nuid = {uid}\ngid = {gid}\nmax connections = 0\n\
         pid file = {d}/rsyncd.pid\nlock file = {d}/rsyncd.lock\nlog file = {d}/rsyncd.log\n\
         [store]\n  path = {s}\n  read only = no\n",
        uid = id("-u")?,
        gid = id("-g")?,
        d = dir.display(),
        s = store.display(),
    );
    std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    let _ = std::fs::remove_file(dir.join("rsyncd.pid"));
    let mut cmd = Command::new(&rsync);
    cmd.args(["--daemon", "--no-detach", "--address=127.0.0.1"])
        .arg(format!("--port={}", addr.port()))
        .arg(format!("--config={}", config.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = Service::start("rsync --daemon", cmd, addr)?;
    let url = format!("rsync://127.0.0.1:{}/store/", addr.port());
    Ok((rsync, url, store, server))
}

/// sshd on a free port with its own config, host key and user key; scp's arguments.
fn scp_sshd(dir: &Path) -> Result<Peer> {
    let sshd_path =
        install::tool("sshd", "openssh-server", "the scp peer").map_err(anyhow::Error::msg)?;
    let scp = install::tool("scp", "openssh-client", "the scp peer").map_err(anyhow::Error::msg)?;
    let keygen = install::tool("ssh-keygen", "openssh-client", "the scp peer")
        .map_err(anyhow::Error::msg)?;
    let store = fresh_store(dir)?;
    let (host_key, user_key) = (dir.join("host_ed25519"), dir.join("user_ed25519"));
    for key in [&host_key, &user_key] {
        let _ = std::fs::remove_file(key);
        let _ = std::fs::remove_file(key.with_extension("pub"));
        let out = Command::new(&keygen)
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "sockchat-bench",
                "-f",
            ])
            .arg(key)
            .output()
            .context("running ssh-keygen")?;
        ensure!(
            out.status.success(),
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let authorized = dir.join("authorized_keys");
    std::fs::copy(user_key.with_extension("pub"), &authorized)
        .with_context(|| format!("writing {}", authorized.display()))?;
    let user = id("-un")?;
    if id("-u")? == "0" {
        // sshd refuses to start as root without its privilege-separation directory.
        std::fs::create_dir_all("/run/sshd").context("creating /run/sshd for sshd")?;
    }
    let addr = procfs::free_addr()?;
    let config = dir.join("sshd_config");
    let text = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile {d}/sshd.pid\n\
         AuthorizedKeysFile {auth}\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
         KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin yes\n\
         AllowUsers {user}\nSubsystem sftp internal-sftp\nLogLevel ERROR\n",
        port = addr.port(),
        host = host_key.display(),
        d = dir.display(),
        auth = authorized.display(),
    );
    std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    let mut cmd = Command::new(&sshd_path);
    cmd.args(["-D", "-e", "-f"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = Service::start("sshd", cmd, addr)?;
    let args = [
        "-q",
        "-B",
        "-c",
        SCP_CIPHER,
        "-P",
        &addr.port().to_string(),
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "LogLevel=ERROR",
        "-i",
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .chain([user_key.display().to_string()])
    .collect();
    Ok(Peer {
        label: SCP,
        store: store.clone(),
        client: Client::Scp {
            scp,
            args,
            target: format!("{user}@127.0.0.1:{}/", store.display()),
        },
        _server: Rc::new(server),
    })
}

/// dufs on a free port with uploads allowed; curl with a config file of PUTs.
fn curl_dufs(dir: &Path) -> Result<Peer> {
    let curl = install::tool("curl", "curl", "the dufs peer").map_err(anyhow::Error::msg)?;
    let dufs = match install::on_path("dufs") {
        Some(path) => path,
        None => cargo_install_dufs()?,
    };
    let store = fresh_store(dir)?;
    let addr = procfs::free_addr()?;
    let mut cmd = Command::new(dufs);
    cmd.args(["--allow-upload", "-b", "127.0.0.1", "-p"])
        .arg(addr.port().to_string())
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = Service::start("dufs", cmd, addr)?;
    Ok(Peer {
        label: CURL,
        store,
        client: Client::Curl {
            curl,
            base: format!("http://{addr}/"),
            config: dir.join("curl.conf"),
        },
        _server: Rc::new(server),
    })
}

/// `cargo install --locked dufs` (a few minutes once), returning the installed binary.
fn cargo_install_dufs() -> Result<PathBuf> {
    eprintln!("bench: installing dufs for the curl peer (cargo install --locked dufs)");
    let status = crate::service::cargo()
        .args(["install", "--locked", "--quiet", "dufs"])
        .status()
        .context("running cargo install dufs")?;
    ensure!(
        status.success(),
        "`cargo install --locked dufs` failed; install dufs by hand to add the curl peer"
    );
    install::on_path("dufs").context("dufs installed but not on PATH (add ~/.cargo/bin to PATH)")
}

/// A curl config with one `upload-file`/`url` pair per file, so one curl process
/// sends every file as its own PUT over a kept-alive connection.
fn write_curl_config(path: &Path, base: &str, files: &[PathBuf]) -> Result<()> {
    let mut text = String::new();
    for file in files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .context("test file name is not UTF-8")?;
        let _ = writeln!(
            text,
            "upload-file = \"{}\"\nurl = \"{base}{name}\"\noutput = \"/dev/null\"",
            file.display()
        );
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Creates `dir/store` empty and returns it.
fn fresh_store(dir: &Path) -> Result<PathBuf> {
    let store = dir.join("store");
    std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
    empty_dir(&store)?;
    Ok(store)
}

/// Removes everything inside `dir`, keeping `dir` itself (servers hold its path).
fn empty_dir(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        }
        .with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// One line of `id <flag>` (`-u`, `-g`, `-un`).
fn id(flag: &str) -> Result<String> {
    let out = Command::new("id")
        .arg(flag)
        .output()
        .context("running id")?;
    ensure!(out.status.success(), "id {flag} failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curl_config_has_one_put_per_file() {
        let dir = std::env::temp_dir().join(format!("xtask-curl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let conf = dir.join("curl.conf");
        let files = [PathBuf::from("/d/a.bin"), PathBuf::from("/d/b.bin")];
        write_curl_config(&conf, "http://127.0.0.1:1/", &files).expect("write");
        let text = std::fs::read_to_string(&conf).expect("read");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(text.matches("upload-file = ").count(), 2);
        assert!(
            text.contains("url = \"http://127.0.0.1:1/b.bin\""),
            "{text}"
        );
    }
}
